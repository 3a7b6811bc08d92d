"""Log-likelihoods as pure functions of tensors.

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
    offsets
        (B,) int64 position of each cell's first non-zero (the non-zeros are ordered by cell);
        computed from ``row`` when not given.
    """

    row: torch.Tensor
    col: torch.Tensor
    x: torch.Tensor
    log_x_factorial: torch.Tensor
    n_cells: int
    offsets: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.offsets is None:
            # (B,) non-zeros per cell; index_add_, unlike bincount, needs no device sync
            counts = torch.zeros(self.n_cells, dtype=torch.int64, device=self.row.device)
            counts.index_add_(0, self.row, torch.ones_like(self.row))
            self.offsets = torch.cumsum(counts, 0) - counts  # (B,) exclusive prefix sum

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
            return t.index_select(0, self.col)
        return _take(t, self.row * t.shape[-1] + self.col)

    def row_sum(self, v: torch.Tensor) -> torch.Tensor:
        """Sum per cell of values at the non-zeros: (..., nnz) -> (..., B)."""
        out = torch.zeros(*v.shape[:-1], self.n_cells, dtype=v.dtype, device=v.device)
        return out.index_add(-1, self.row, v)


def log_poisson_sum(nz: NonZeros, log_mu: torch.Tensor) -> torch.Tensor:
    """``sum_g log Poisson(x_g; mu_g)`` per cell from the non-zeros: (..., B).

    ``log_mu`` is (..., B, G): the log-mean is passed so that ``log(exp(.))`` never happens.
    """
    return -torch.exp(log_mu).sum(-1) + nz.row_sum(nz.x * nz.at(log_mu)) - nz.log_x_factorial


def _take(t: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """Entries of a (..., B, G) tensor at flat positions ``row * G + col``: (..., nnz).

    ``index_select`` on the flattened last two dimensions is several times faster than the
    advanced indexing ``t[..., row, col]``.
    """
    return t.reshape(*t.shape[:-2], -1).index_select(-1, flat)


def _add_at(t: torch.Tensor, flat: torch.Tensor, values: torch.Tensor) -> None:
    """``t[..., row, col] += values`` in place, for a contiguous (..., B, G) ``t``."""
    t.view(*t.shape[:-2], -1).index_add_(-1, flat, values)


class _NBFamilySum(torch.autograd.Function):
    """``sum_g log NB(x_g)`` or ``sum_g log ZINB(x_g)`` per cell, with a hand-written backward.

    Forward, with ``u = log mu - log theta``, ``r = log(1 + mu / theta) = softplus(u)`` and
    ``n0 = log NB(0) = -theta r``, the dense part over all (cell, gene) entries is ``n0`` (NB)
    or ``logaddexp(h, n0) - softplus(h)`` (ZINB, gate logits ``h``); the correction at the
    non-zeros is ``nbc = lgamma(x + theta) - lgamma(theta) + x (u - r)`` (NB), plus
    ``n0 - logaddexp(h, n0)`` (ZINB).

    Backward, with ``s = sigmoid(u)`` and ``p = sigmoid(h - n0)`` (posterior probability that a
    zero came from the gate), the dense gradients are::

        d/dh        = p - sigmoid(h)               (ZINB)
        d/dn0       = 1 - p   (ZINB)  or  1  (NB)
        d/dlog mu   = d/dn0 * (-theta s)
        d/dlog theta = d/dn0 * theta (s - r)

    and the non-zeros add the derivatives of the correction (``psi`` = digamma)::

        d/dh         = -p
        d/dlog mu    = p (-theta s) + x (1 - s)                          (p = 0 for NB)
        d/dlog theta = p theta (s - r) + theta (psi(x + theta) - psi(theta)) + x (s - 1)

    Autograd through the composed ops made about forty passes over the (cells, genes) entries
    and four zero-filled dense gradients for the gathers at the non-zeros; this makes about
    twenty and none. Tests compare values and gradients with autograd on the dense formula.
    """

    @staticmethod
    def forward(ctx, log_mu, log_theta, zi_logits, x, row, col, log_x_factorial):
        """Log-likelihood per cell, (..., B)."""
        zinb = zi_logits is not None
        flat = row * log_mu.shape[-1] + col  # (nnz,) positions in the flattened (B, G)
        u = log_mu - log_theta  # (..., B, G) log(mu / theta)
        r = F.softplus(u, threshold=30.0)  # (..., B, G) log(1 + mu / theta)
        theta = torch.exp(log_theta)  # (G,), (B, G) or (..., B, G)
        n0 = r * -theta  # (..., B, G) log NB(0)
        theta_nz = _theta_at(theta, col, flat)  # (..., nnz) or (nnz,)
        if theta.dim() == 1:
            lgamma_theta_nz = torch.lgamma(theta).index_select(0, col)  # lgamma once per gene
        else:
            lgamma_theta_nz = torch.lgamma(theta_nz)
        u_nz, r_nz = _take(u, flat), _take(r, flat)  # (..., nnz)
        correction = torch.lgamma(x + theta_nz) - lgamma_theta_nz + x * (u_nz - r_nz)
        if zinb:
            zero = torch.logaddexp(zi_logits, n0)  # (..., B, G) log(pi + (1-pi) NB(0)) + sp(h)
            dense = zero.sum(-1) - F.softplus(zi_logits).sum(-1)  # (..., B)
            correction = correction + _take(n0, flat) - _take(zero, flat)
        else:
            dense = n0.sum(-1)  # (..., B)
        n_cells = log_mu.shape[-2]
        per_cell = torch.zeros(*correction.shape[:-1], n_cells, dtype=u.dtype, device=u.device)
        per_cell.index_add_(-1, row, correction)  # (..., B)
        ctx.save_for_backward(u, r, n0, theta, zi_logits, x, row, col, flat)
        ctx.log_theta_shape = log_theta.shape
        return dense + per_cell - log_x_factorial

    @staticmethod
    def backward(ctx, grad_out):
        """Gradients with respect to ``log_mu``, ``log_theta`` and ``zi_logits``."""
        u, r, n0, theta, zi_logits, x, row, col, flat = ctx.saved_tensors
        zinb = zi_logits is not None
        g = grad_out.unsqueeze(-1)  # (..., B, 1)
        g_nz = grad_out.index_select(-1, row)  # (..., nnz)
        s = torch.sigmoid(u)  # (..., B, G) d r / d u
        s_nz, r_nz = _take(s, flat), _take(r, flat)
        theta_nz = _theta_at(theta, col, flat)
        theta_s = s.mul_(theta)  # (..., B, G) theta s (s is not needed any more)
        grad_h = None
        if zinb:
            p = torch.sigmoid(zi_logits - n0)  # (..., B, G)
            p_nz = _take(p, flat)
            if ctx.needs_input_grad[2]:
                grad_h = (p - torch.sigmoid(zi_logits)).mul_(g)  # (..., B, G)
                _add_at(grad_h, flat, -p_nz * g_nz)
            # minus d/dn0 = (p - 1) * grad: the minus sign rides along, so that the two
            # gradients below each take one pass fewer
            minus_g_n0 = p.sub_(1.0).mul_(g)  # (..., B, G)
        else:
            p_nz = None
            minus_g_n0 = g.neg().expand_as(u)
        grad_log_mu = grad_log_theta = None
        if ctx.needs_input_grad[1]:
            # minus theta (s - r) * d/dn0, negated once summed over the cells
            minus_grad = (theta_s + n0).mul_(minus_g_n0)  # (..., B, G)
            if theta.dim() == 1:
                digamma_theta_nz = torch.digamma(theta).index_select(0, col)  # once per gene
            else:
                digamma_theta_nz = torch.digamma(theta_nz)
            d_theta_nz = theta_nz * (torch.digamma(x + theta_nz) - digamma_theta_nz) + x * (
                s_nz - 1.0
            )
            if zinb:
                d_theta_nz = d_theta_nz + p_nz * theta_nz * (s_nz - r_nz)
            _add_at(minus_grad, flat, d_theta_nz * -g_nz)
            grad_log_theta = minus_grad.sum_to_size(ctx.log_theta_shape).neg_()
        if ctx.needs_input_grad[0]:
            grad_log_mu = theta_s.mul_(minus_g_n0)  # (..., B, G) -theta s d/dn0, reuses theta s
            d_mu_nz = x * (1.0 - s_nz)
            if zinb:
                d_mu_nz = d_mu_nz - p_nz * theta_nz * s_nz
            _add_at(grad_log_mu, flat, d_mu_nz * g_nz)
        return grad_log_mu, grad_log_theta, grad_h, None, None, None, None


def _theta_at(theta: torch.Tensor, col: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """``theta`` at the non-zeros, for gene-wise (G,) or per-cell (..., B, G) ``theta``."""
    if theta.dim() == 1:
        return theta.index_select(0, col)  # (nnz,)
    return _take(theta, flat)  # (..., nnz); (B, G) broadcasts over the leading dimensions


def log_nb_sum(nz: NonZeros, log_mu: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    """``sum_g log NB(x_g; mu_g, theta_g)`` per cell from the non-zeros: (..., B).

    ``log_mu`` is (..., B, G); ``log_theta`` is (G,), (B, G) or (..., B, G).
    Dense work: one softplus and one product per entry (``log NB(0) = -theta log(1 + mu/theta)``).
    """
    return _NBFamilySum.apply(log_mu, log_theta, None, nz.x, nz.row, nz.col, nz.log_x_factorial)


def log_zinb_sum(
    nz: NonZeros, log_mu: torch.Tensor, log_theta: torch.Tensor, zi_logits: torch.Tensor
) -> torch.Tensor:
    """``sum_g log ZINB(x_g; mu_g, theta_g, pi_g)`` per cell from the non-zeros: (..., B).

    With ``pi = sigmoid(h)``: ``log ZINB(0) = logaddexp(h, log NB(0)) - softplus(h)`` and
    ``log ZINB(x) = log NB(x) - softplus(h)`` for ``x > 0``, so the ``softplus(h)`` cancels in
    the correction at the non-zeros.
    """
    return _NBFamilySum.apply(
        log_mu, log_theta, zi_logits, nz.x, nz.row, nz.col, nz.log_x_factorial
    )


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
