"""Observation models ``p(x | z, l, s)``: one small class per likelihood.

Each class is a distribution over a ([K,] N, G) minibatch with the dense and the sparse
(non-zeros only) log-likelihood, ``sample``, ``mean`` and ``variance``, and it owns what is
specific to its likelihood when a VAE is built: which decoder heads it needs, its learned
non-decoded parameter (the inverse dispersion ``theta`` or the Gaussian variance) and how a
dispersion option maps onto it. A module picks its class once, by name, with
:func:`observation_model`; nothing else in the package compares likelihood names.

=================  ===========================  ====================================
class              parameters                   dispersion
=================  ===========================  ====================================
:class:`ZINB`      ``log mu``, ``log theta``,   ``theta_g``, ``theta_{g,s}`` or
                   zero-inflation logits        decoded per cell (``"gene-cell"``)
:class:`NB`        ``log mu``, ``log theta``    as ZINB
:class:`Poisson`   ``log mu``                   none (``Var = mu``)
:class:`Gaussian`  ``mean``, ``log sigma^2``    gene-wise variance
=================  ===========================  ====================================

For the count models ``log mu = log l + log rho`` with ``rho = softmax(f_w(z, s))``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.distributions import Normal

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
from scvae.nn import CountDecoder, CovariateSizes, DecoderOutput, GaussianDecoder

__all__ = [
    "DISPERSIONS",
    "LIKELIHOODS",
    "NB",
    "ZINB",
    "Dispersion",
    "Gaussian",
    "Likelihood",
    "ObservationModel",
    "Poisson",
    "observation_model",
]

Likelihood = Literal["zinb", "nb", "poisson", "gaussian"]
Dispersion = Literal["gene", "gene-batch", "gene-cell"]
LIKELIHOODS: tuple[str, ...] = ("zinb", "nb", "poisson", "gaussian")
DISPERSIONS: tuple[str, ...] = ("gene", "gene-batch", "gene-cell")


class ObservationModel(ABC):
    """``p(x | z, l, s)`` element-wise over ([K,] N, G); the base of the four likelihoods.

    Class attributes describe the likelihood to the module that builds a VAE around it:
    ``counts`` (count data: a library size, encoders on ``log1p(x)``) and ``parameter_name``
    (the attribute under which the module stores :meth:`make_parameter`'s result).
    """

    name: ClassVar[str]
    counts: ClassVar[bool] = True
    parameter_name: ClassVar[str | None] = None

    # ------------------------------------------------------------------ building a VAE
    @classmethod
    def make_decoder(
        cls,
        n_latent: int,
        n_genes: int,
        *,
        n_hidden: int,
        n_layers: int,
        n_batch: int,
        dispersion: Dispersion,
        covariates: CovariateSizes | None = None,
    ) -> nn.Module:
        """The decoder network with the heads this likelihood needs (``covariates``: those
        beyond the batch, injected into every layer as the batch is)."""
        return CountDecoder(
            n_latent,
            n_genes,
            n_hidden=n_hidden,
            n_layers=n_layers,
            n_batch=n_batch,
            gene_cell_dispersion=False,
            zero_inflation=False,
            covariates=covariates,
        )

    @classmethod
    def make_parameter(cls, n_genes: int, n_batch: int, dispersion: Dispersion) -> nn.Parameter:
        """The learned parameter that is not decoded per cell, or None."""
        return None

    @classmethod
    @abstractmethod
    def from_decoder(
        cls,
        out: DecoderOutput,
        log_library: torch.Tensor,
        batch_index: torch.Tensor,
        parameter: torch.Tensor | None,
    ) -> ObservationModel:
        """The distribution of ``x`` given the decoder's output ([K,] N, G) and ``log l``."""

    @staticmethod
    def encoder_input(x: torch.Tensor) -> torch.Tensor:
        """What the encoders read: ``log1p(x)`` for counts (variance-stabilised)."""
        return torch.log1p(x)

    @staticmethod
    def normalized(out: DecoderOutput, library_size: float) -> torch.Tensor:
        """Denoised expression from the decoder: ``library_size * rho`` for counts."""
        return torch.exp(out.location) * library_size

    # -------------------------------------------------------------------- distribution
    @abstractmethod
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Element-wise ``log p(x_ng)`` from the dense formula: ([K,] N, G)."""

    @abstractmethod
    def log_prob_sum(self, nz: NonZeros) -> torch.Tensor:
        """``sum_g log p(x_ng)`` from the non-zeros of ``x`` only: ([K,] N)."""

    def log_likelihood(self, x: torch.Tensor | None, *, nz: NonZeros | None = None) -> torch.Tensor:
        """``log p(x | z, l, s)`` summed over genes, ([K,] N): sparse with ``nz``, else dense."""
        if nz is not None:
            return self.log_prob_sum(nz)
        return self.log_prob(x).sum(-1)

    @abstractmethod
    def sample(self) -> torch.Tensor:
        """A draw of ``x`` (torch's global RNG), ([K,] N, G)."""

    @property
    @abstractmethod
    def mean(self) -> torch.Tensor:
        """``E[x]``, ([K,] N, G)."""

    @property
    @abstractmethod
    def variance(self) -> torch.Tensor:
        """``Var[x]``, ([K,] N, G)."""


@dataclass
class Poisson(ObservationModel):
    """``x ~ Poisson(mu)``: no overdispersion, ``Var[x] = mu``.

    Attributes
    ----------
    log_mu
        ([K,] N, G) log-means, ``log l + log rho``.
    """

    log_mu: torch.Tensor
    name: ClassVar[str] = "poisson"

    @classmethod
    def from_decoder(cls, out, log_library, batch_index, parameter) -> Poisson:
        """``mu = l * rho``."""
        return cls(log_mu=log_library + out.location)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Element-wise log-pmf."""
        return log_poisson(x, self.mean)

    def log_prob_sum(self, nz: NonZeros) -> torch.Tensor:
        """Per-cell log-pmf from the non-zeros."""
        return log_poisson_sum(nz, self.log_mu)

    def sample(self) -> torch.Tensor:
        """Poisson draws."""
        return sample_poisson(self.mean)

    @property
    def mean(self) -> torch.Tensor:
        """``mu``."""
        return torch.exp(self.log_mu)

    @property
    def variance(self) -> torch.Tensor:
        """``mu``."""
        return self.mean


class _Dispersed(ObservationModel):
    """NB-family dispersion handling: ``theta_g``, ``theta_{g,s}`` or decoded per cell."""

    parameter_name: ClassVar[str | None] = "log_theta"
    zero_inflated: ClassVar[bool] = False

    @classmethod
    def make_decoder(
        cls, n_latent, n_genes, *, n_hidden, n_layers, n_batch, dispersion, covariates=None
    ):
        """Proportions, plus zero-inflation logits and per-cell ``log theta`` as needed."""
        return CountDecoder(
            n_latent,
            n_genes,
            n_hidden=n_hidden,
            n_layers=n_layers,
            n_batch=n_batch,
            gene_cell_dispersion=dispersion == "gene-cell",
            zero_inflation=cls.zero_inflated,
            covariates=covariates,
        )

    @classmethod
    def make_parameter(cls, n_genes, n_batch, dispersion) -> nn.Parameter | None:
        """``log theta``: (G,) for ``"gene"``, (S, G) for ``"gene-batch"``, decoded otherwise."""
        if dispersion == "gene":
            return nn.Parameter(torch.randn(n_genes))  # (G,)
        if dispersion == "gene-batch":
            return nn.Parameter(torch.randn(n_batch, n_genes))  # (S, G)
        return None  # "gene-cell": a decoder head

    @staticmethod
    def _log_theta(out: DecoderOutput, batch_index, parameter) -> torch.Tensor:
        if parameter is None:
            return out.log_theta  # ([K,] N, G) decoded per cell
        if parameter.dim() == 2:
            return parameter[batch_index]  # (N, G) theta of each cell's batch
        return parameter  # (G,)

    @property
    def theta(self) -> torch.Tensor:
        """Inverse dispersion, broadcastable to the counts."""
        return torch.exp(self.log_theta)


@dataclass
class NB(_Dispersed):
    """Negative binomial (Gamma-Poisson), ``Var[x] = mu + mu^2 / theta``.

    Attributes
    ----------
    log_mu
        ([K,] N, G) log-means.
    log_theta
        Log inverse dispersion: (G,), (N, G) or ([K,] N, G).
    """

    log_mu: torch.Tensor
    log_theta: torch.Tensor
    name: ClassVar[str] = "nb"

    @classmethod
    def from_decoder(cls, out, log_library, batch_index, parameter) -> NB:
        """``mu = l * rho`` and the dispersion of each cell."""
        return cls(
            log_mu=log_library + out.location,
            log_theta=cls._log_theta(out, batch_index, parameter),
        )

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Element-wise log-pmf."""
        return log_nb(x, self.mean, self.theta)

    def log_prob_sum(self, nz: NonZeros) -> torch.Tensor:
        """Per-cell log-pmf from the non-zeros."""
        return log_nb_sum(nz, self.log_mu, self.log_theta)

    def sample(self) -> torch.Tensor:
        """Gamma-Poisson draws."""
        return sample_nb(self.mean, self.theta)

    @property
    def mean(self) -> torch.Tensor:
        """``mu``."""
        return torch.exp(self.log_mu)

    @property
    def variance(self) -> torch.Tensor:
        """``mu + mu^2 / theta``."""
        mu = self.mean
        return mu + mu.square() / self.theta


@dataclass
class ZINB(_Dispersed):
    """Zero-inflated NB: ``x = 0`` with probability ``pi = sigmoid(zi_logits)``, else NB.

    Attributes
    ----------
    log_mu, log_theta
        As in :class:`NB`.
    zi_logits
        ([K,] N, G) logits of the zero-inflation gate.

    ``mu = exp(log_mu)`` is the mean of the NB component; :attr:`mean` is ``(1 - pi) mu``.
    """

    log_mu: torch.Tensor
    log_theta: torch.Tensor
    zi_logits: torch.Tensor
    name: ClassVar[str] = "zinb"
    zero_inflated: ClassVar[bool] = True

    @classmethod
    def from_decoder(cls, out, log_library, batch_index, parameter) -> ZINB:
        """``mu = l * rho``, the dispersion of each cell and the decoded gate."""
        return cls(
            log_mu=log_library + out.location,
            log_theta=cls._log_theta(out, batch_index, parameter),
            zi_logits=out.zi_logits,
        )

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Element-wise log-pmf."""
        return log_zinb(x, torch.exp(self.log_mu), self.theta, self.zi_logits)

    def log_prob_sum(self, nz: NonZeros) -> torch.Tensor:
        """Per-cell log-pmf from the non-zeros."""
        return log_zinb_sum(nz, self.log_mu, self.log_theta, self.zi_logits)

    def sample(self) -> torch.Tensor:
        """NB draws replaced by zeros where the gate fires."""
        return sample_zinb(torch.exp(self.log_mu), self.theta, self.zi_logits)

    @property
    def mean(self) -> torch.Tensor:
        """``(1 - pi) mu``."""
        return torch.sigmoid(-self.zi_logits) * torch.exp(self.log_mu)

    @property
    def variance(self) -> torch.Tensor:
        """``(1 - pi) mu (1 + mu / theta + pi mu)``."""
        mu, pi = torch.exp(self.log_mu), torch.sigmoid(self.zi_logits)
        return (1 - pi) * mu * (1 + mu / self.theta + pi * mu)


@dataclass
class Gaussian(ObservationModel):
    """``x ~ Normal(mean(z, s), diag sigma^2)`` with gene-wise variances, on log-normalized data.

    Attributes
    ----------
    loc
        ([K,] N, G) decoded means.
    log_var
        (G,) gene-wise ``log sigma^2``.
    """

    loc: torch.Tensor
    log_var: torch.Tensor
    name: ClassVar[str] = "gaussian"
    counts: ClassVar[bool] = False
    parameter_name: ClassVar[str | None] = "log_var"

    @classmethod
    def make_decoder(
        cls, n_latent, n_genes, *, n_hidden, n_layers, n_batch, dispersion, covariates=None
    ):
        """An MLP and a linear head to the genes."""
        return GaussianDecoder(
            n_latent,
            n_genes,
            n_hidden=n_hidden,
            n_layers=n_layers,
            n_batch=n_batch,
            covariates=covariates,
        )

    @classmethod
    def make_parameter(cls, n_genes, n_batch, dispersion) -> nn.Parameter:
        """(G,) gene-wise ``log sigma^2``, initialised at 0 (``dispersion`` does not apply)."""
        return nn.Parameter(torch.zeros(n_genes))

    @classmethod
    def from_decoder(cls, out, log_library, batch_index, parameter) -> Gaussian:
        """The decoded mean; no library."""
        return cls(loc=out.location, log_var=parameter)

    @staticmethod
    def encoder_input(x: torch.Tensor) -> torch.Tensor:
        """The data as they are (already log-normalized)."""
        return x

    @staticmethod
    def normalized(out: DecoderOutput, library_size: float) -> torch.Tensor:
        """The decoded mean, in the input space (``library_size`` does not apply)."""
        return out.location

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Element-wise log-density."""
        return Normal(self.loc, torch.exp(0.5 * self.log_var), validate_args=False).log_prob(x)

    def log_prob_sum(self, nz: NonZeros) -> torch.Tensor:
        """Per-cell log-density from the non-zeros."""
        return log_gaussian_sum(nz, self.loc, self.log_var)

    def sample(self) -> torch.Tensor:
        """Gaussian draws."""
        return self.loc + torch.exp(0.5 * self.log_var) * torch.randn_like(self.loc)

    @property
    def mean(self) -> torch.Tensor:
        """The decoded mean."""
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        """``sigma^2`` broadcast to the cells."""
        return torch.exp(self.log_var).expand_as(self.loc)


_OBSERVATION_MODELS: dict[str, type[ObservationModel]] = {
    cls.name: cls for cls in (ZINB, NB, Poisson, Gaussian)
}


def observation_model(likelihood: Likelihood) -> type[ObservationModel]:
    """The observation-model class of a likelihood name (the only place names are compared).

    Raises
    ------
    ValueError
        Unknown name; the message lists the known ones.
    """
    try:
        return _OBSERVATION_MODELS[likelihood]
    except (KeyError, TypeError):
        raise ValueError(
            f"likelihood={likelihood!r} is not one of {', '.join(LIKELIHOODS)}."
        ) from None
