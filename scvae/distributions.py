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

Every ``log_*`` function broadcasts its arguments and returns the element-wise log-probability.

The ``*_sum`` functions return the same log-likelihoods already summed over genes, using that
single-cell counts are mostly zero: each splits ``sum_g log p(x_g)`` into ``sum_g log p(0)``
(dense, cheap: no ``lgamma``) plus a correction ``log p(x_g) - log p(0)`` evaluated at the
non-zeros only, where ``lgamma(x + theta) - lgamma(theta)`` is the only place ``lgamma`` appears
(it is exactly 0 at ``x = 0``). ``sum lgamma(x + 1)`` depends on the data only and is computed
once per cell (:class:`NonZeros`). Tests check each against the dense formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "NonZeros",
    "log_gaussian_sum",
    "log_nb",
    "log_nb_sum",
    "log_poisson",
    "log_poisson_sum",
    "log_zinb",
    "log_zinb_sum",
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


@dataclass  # not frozen: Lightning's batch transfer rebuilds dataclasses field by field
class NonZeros:
    """The non-zero entries of a (B, G) minibatch in coordinate form.

    Attributes
    ----------
    row, col
        (nnz,) int64 cell and gene of each non-zero.
    x
        (nnz,) the values.
    log_x_factorial
        (B,) ``sum_g lgamma(x_g + 1)`` of each cell (0 for non-count data).
    n_cells
        ``B``.
    """

    row: torch.Tensor
    col: torch.Tensor
    x: torch.Tensor
    log_x_factorial: torch.Tensor
    n_cells: int

    @classmethod
    def from_dense(cls, x: torch.Tensor) -> NonZeros:
        """Coordinates of the non-zeros of a dense (B, G) tensor."""
        row, col = torch.nonzero(x, as_tuple=True)  # (nnz,), (nnz,)
        values = x[row, col]  # (nnz,)
        log_x_factorial = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device).index_add_(
            0, row, torch.lgamma(values + 1)
        )  # (B,)
        return cls(row, col, values, log_x_factorial, x.shape[0])

    def at(self, t: torch.Tensor) -> torch.Tensor:
        """Values of ``t`` at the non-zeros: (G,) -> (nnz,); (..., B, G) -> (..., nnz)."""
        if t.dim() == 1:
            return t[self.col]
        return t[..., self.row, self.col]

    def row_sum(self, v: torch.Tensor) -> torch.Tensor:
        """Sum per cell of values at the non-zeros: (..., nnz) -> (..., B)."""
        out = torch.zeros(*v.shape[:-1], self.n_cells, dtype=v.dtype, device=v.device)
        return out.index_add(-1, self.row, v)


def log_poisson_sum(nz: NonZeros, log_mu: torch.Tensor) -> torch.Tensor:
    """``sum_g log Poisson(x_g; mu_g)`` per cell from the non-zeros: (..., B).

    ``log_mu`` is (..., B, G): the log-mean is passed so that ``log(exp(.))`` never happens.
    """
    return -torch.exp(log_mu).sum(-1) + nz.row_sum(nz.x * nz.at(log_mu)) - nz.log_x_factorial


def _log1p_mu_over_theta(log_mu: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    """``log(1 + mu / theta) = softplus(log mu - log theta)``, without forming ``mu``."""
    return F.softplus(log_mu - log_theta, threshold=30.0)


def _nb_correction(
    nz: NonZeros, log_mu: torch.Tensor, log_theta: torch.Tensor, log1p_ratio: torch.Tensor
) -> torch.Tensor:
    """``log NB(x) + lgamma(x + 1) - log NB(0)`` at the non-zeros: (..., nnz).

    ``= lgamma(x + theta) - lgamma(theta) + x (log mu - log theta - log(1 + mu/theta))``.
    ``lgamma(theta_g)`` is computed once per gene and gathered when ``theta`` is gene-wise.
    """
    if log_theta.dim() == 1:
        theta = torch.exp(log_theta)  # (G,)
        theta_nz, lgamma_theta_nz = nz.at(theta), nz.at(torch.lgamma(theta))
    else:
        theta_nz = torch.exp(nz.at(log_theta))  # (..., nnz)
        lgamma_theta_nz = torch.lgamma(theta_nz)
    return (
        torch.lgamma(nz.x + theta_nz)
        - lgamma_theta_nz
        + nz.x * (nz.at(log_mu) - nz.at(log_theta) - nz.at(log1p_ratio))
    )


def log_nb_sum(nz: NonZeros, log_mu: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    """``sum_g log NB(x_g; mu_g, theta_g)`` per cell from the non-zeros: (..., B).

    ``log_mu`` is (..., B, G); ``log_theta`` is (G,), (B, G) or (..., B, G).
    Dense work: one softplus and one product per entry (``log NB(0) = -theta log(1 + mu/theta)``).
    """
    log1p_ratio = _log1p_mu_over_theta(log_mu, log_theta)  # (..., B, G)
    log_p_zero = -(torch.exp(log_theta) * log1p_ratio).sum(-1)  # (..., B) all genes at x = 0
    correction = _nb_correction(nz, log_mu, log_theta, log1p_ratio)  # (..., nnz)
    return log_p_zero + nz.row_sum(correction) - nz.log_x_factorial


def log_zinb_sum(
    nz: NonZeros, log_mu: torch.Tensor, log_theta: torch.Tensor, zi_logits: torch.Tensor
) -> torch.Tensor:
    """``sum_g log ZINB(x_g; mu_g, theta_g, pi_g)`` per cell from the non-zeros: (..., B).

    With ``pi = sigmoid(h)``: ``log ZINB(0) = logaddexp(h, log NB(0)) - softplus(h)`` and
    ``log ZINB(x) = log NB(x) - softplus(h)`` for ``x > 0``, so the ``softplus(h)`` cancels in
    the correction at the non-zeros.
    """
    log1p_ratio = _log1p_mu_over_theta(log_mu, log_theta)  # (..., B, G)
    log_nb_zero = -torch.exp(log_theta) * log1p_ratio  # (..., B, G) log NB(0)
    zero_unnormalised = torch.logaddexp(zi_logits, log_nb_zero)  # (..., B, G)
    dense = zero_unnormalised.sum(-1) - F.softplus(zi_logits).sum(-1)  # (..., B) all x = 0
    correction = (
        nz.at(log_nb_zero)
        + _nb_correction(nz, log_mu, log_theta, log1p_ratio)
        - nz.at(zero_unnormalised)
    )  # (..., nnz) log ZINB(x) - log ZINB(0) + lgamma(x + 1)
    return dense + nz.row_sum(correction) - nz.log_x_factorial


def log_gaussian_sum(nz: NonZeros, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """``sum_g log Normal(x_g; mean_g, exp(log_var_g))`` per cell from the non-zeros: (..., B).

    ``(x - m)^2 = m^2 + (x^2 - 2 x m)``: the first term is dense, the second lives on the
    non-zeros. ``log_var`` is (G,).
    """
    inv_var = torch.exp(-log_var)  # (G,)
    dense = -0.5 * (mean.square() * inv_var).sum(-1)  # (..., B)
    constant = -0.5 * (log_var.sum() + log_var.shape[0] * math.log(2 * math.pi))
    m_nz = nz.at(mean)  # (..., nnz)
    correction = -0.5 * nz.at(inv_var) * (nz.x.square() - 2 * nz.x * m_nz)  # (..., nnz)
    return dense + constant + nz.row_sum(correction)


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
