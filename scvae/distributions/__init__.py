"""Likelihoods of the observation models: pure functions and one class per likelihood.

:mod:`scvae.distributions.likelihoods` has the log-likelihoods as pure functions of tensors,
dense and sparse (``lgamma`` only at the non-zeros); :mod:`scvae.distributions.observation`
wraps each in a small class (:class:`ZINB`, :class:`NB`, :class:`Poisson`, :class:`Gaussian`)
that a VAE's ``generative()`` returns.
"""

from scvae.distributions.likelihoods import (
    NonZeros,
    log_gaussian_sum,
    log_nb,
    log_nb_sum,
    log_poisson,
    log_poisson_sum,
    log_zinb,
    log_zinb_sum,
    sample_nb,
    sample_poisson,
    sample_zinb,
)
from scvae.distributions.observation import (
    DISPERSIONS,
    LIKELIHOODS,
    NB,
    ZINB,
    Gaussian,
    ObservationModel,
    Poisson,
    observation_model,
)

__all__ = [
    "DISPERSIONS",
    "LIKELIHOODS",
    "NB",
    "ZINB",
    "Gaussian",
    "NonZeros",
    "ObservationModel",
    "Poisson",
    "log_gaussian_sum",
    "log_nb",
    "log_nb_sum",
    "log_poisson",
    "log_poisson_sum",
    "log_zinb",
    "log_zinb_sum",
    "observation_model",
    "sample_nb",
    "sample_poisson",
    "sample_zinb",
]
