"""Count log-likelihoods as pure functions of tensors.

All three observation models of the scVI family are written here once, in forms that stay
finite at the extremes (tiny means, huge or tiny inverse dispersions):

* Poisson:  ``log p(x) = x log mu - mu - log x!``
* negative binomial with mean ``mu`` and inverse dispersion ``theta`` (the Gamma-Poisson
  mixture ``w ~ Gamma(theta, theta / mu)``, ``x ~ Poisson(w)``)::

      log NB(x) = lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)
                  + theta log(theta / (theta + mu)) + x log(mu / (theta + mu))

* zero-inflated NB with gate ``pi = sigmoid(zi_logits)``::

      log ZINB(0) = log(pi + (1 - pi) NB(0))
      log ZINB(x) = log(1 - pi) + log NB(x)            for x > 0

Every function broadcasts its arguments and returns the element-wise log-probability; the
caller sums over genes. ``lgamma(x + 1)`` depends on the data only and can be passed in
precomputed (``log_x_factorial``) so that training does not recompute it every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "log_nb",
    "log_poisson",
    "log_zinb",
    "sample_nb",
    "sample_poisson",
    "sample_zinb",
]


def _log_ratio_terms(mu: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``log(theta / (theta + mu))`` and ``log(mu / (theta + mu))`` without cancellation.

    ``log1p(mu / theta)`` keeps the first term exact when ``theta >> mu`` (the Poisson limit),
    where ``log(theta) - log(theta + mu)`` would lose every significant digit.
    """
    log_theta_ratio = -torch.log1p(mu / theta)  # log(theta / (theta + mu))
    log_mu_ratio = torch.log(mu) - torch.log(theta) + log_theta_ratio  # log(mu / (theta + mu))
    return log_theta_ratio, log_mu_ratio


def log_poisson(
    x: torch.Tensor,
    mu: torch.Tensor,
    *,
    log_x_factorial: torch.Tensor | None = None,
) -> torch.Tensor:
    """Element-wise Poisson log-pmf.

    Parameters
    ----------
    x
        Counts (non-negative integers stored as floats).
    mu
        Positive means, broadcastable to ``x``.
    log_x_factorial
        Optional precomputed ``lgamma(x + 1)``.

    Returns
    -------
    torch.Tensor
        ``log Poisson(x; mu)`` with the broadcast shape of the inputs.
    """
    if log_x_factorial is None:
        log_x_factorial = torch.lgamma(x + 1)
    return torch.xlogy(x, mu) - mu - log_x_factorial


def log_nb(
    x: torch.Tensor,
    mu: torch.Tensor,
    theta: torch.Tensor,
    *,
    log_x_factorial: torch.Tensor | None = None,
) -> torch.Tensor:
    """Element-wise negative-binomial log-pmf, mean/inverse-dispersion parameterisation.

    Parameters
    ----------
    x
        Counts (non-negative integers stored as floats).
    mu
        Positive means, broadcastable to ``x``.
    theta
        Positive inverse dispersions (Gamma shape), broadcastable to ``x``.
        ``Var[x] = mu + mu**2 / theta``; ``theta -> inf`` gives the Poisson.
    log_x_factorial
        Optional precomputed ``lgamma(x + 1)``.

    Returns
    -------
    torch.Tensor
        ``log NB(x; mu, theta)`` with the broadcast shape of the inputs.
    """
    if log_x_factorial is None:
        log_x_factorial = torch.lgamma(x + 1)
    log_theta_ratio, log_mu_ratio = _log_ratio_terms(mu, theta)
    return (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - log_x_factorial
        + theta * log_theta_ratio
        + x * log_mu_ratio
    )


def log_zinb(
    x: torch.Tensor,
    mu: torch.Tensor,
    theta: torch.Tensor,
    zi_logits: torch.Tensor,
    *,
    log_x_factorial: torch.Tensor | None = None,
) -> torch.Tensor:
    """Element-wise zero-inflated negative-binomial log-pmf.

    Parameters
    ----------
    x
        Counts (non-negative integers stored as floats).
    mu
        Positive NB means, broadcastable to ``x``.
    theta
        Positive NB inverse dispersions, broadcastable to ``x``.
    zi_logits
        Logits of the zero-inflation gate ``pi`` (probability of an extra zero).
        ``zi_logits -> -inf`` recovers :func:`log_nb`.
    log_x_factorial
        Optional precomputed ``lgamma(x + 1)``.

    Returns
    -------
    torch.Tensor
        ``log ZINB(x; mu, theta, pi)`` with the broadcast shape of the inputs.
    """
    log_nb_x = log_nb(x, mu, theta, log_x_factorial=log_x_factorial)
    log_nb_zero = theta * -torch.log1p(mu / theta)  # log NB(0) = theta log(theta/(theta+mu))
    log_gate = -F.softplus(-zi_logits)  # log pi
    log_one_minus_gate = -F.softplus(zi_logits)  # log(1 - pi)
    case_zero = torch.logaddexp(log_gate, log_one_minus_gate + log_nb_zero)
    case_nonzero = log_one_minus_gate + log_nb_x
    return torch.where(x > 0, case_nonzero, case_zero)


def sample_poisson(mu: torch.Tensor) -> torch.Tensor:
    """Draw Poisson counts with means ``mu`` (torch's global RNG; seed it for reproducibility)."""
    return torch.poisson(mu)


def sample_nb(mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Draw NB counts: ``w ~ Gamma(theta, rate theta/mu)``, then ``Poisson(w)``."""
    theta = theta.expand_as(mu)
    w = torch._standard_gamma(theta) * (mu / theta)  # (.., G) Gamma(shape theta, rate theta/mu)
    return torch.poisson(w)


def sample_zinb(mu: torch.Tensor, theta: torch.Tensor, zi_logits: torch.Tensor) -> torch.Tensor:
    """Draw ZINB counts: an NB draw, replaced by zero where the Bernoulli gate fires."""
    y = sample_nb(mu, theta)  # (.., G)
    gate = torch.rand_like(y) < torch.sigmoid(zi_logits)  # (.., G) h ~ Bernoulli(pi)
    return torch.where(gate, torch.zeros_like(y), y)
