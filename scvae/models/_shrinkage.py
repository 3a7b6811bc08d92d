"""Empirical-Bayes shrinkage of log fold changes: a prior learned from all the genes.

Most genes do not change between two groups, and a test of thousands of genes finds some
whose estimate is three standard errors from zero by chance. A posterior computed gene by
gene under a flat prior does not know that; one under a prior fitted to all the genes does
(adaptive shrinkage, Stephens, Biostatistics 2017). For estimates ``b_g`` with standard
errors ``s_g`` of the true ``beta_g``::

    beta_g ~ g = pi_0 delta_0 + sum_{k>=1} pi_k N(0, sigma_k^2)     (unimodal at 0)
    b_g | beta_g ~ N(beta_g, s_g^2)

The weights ``pi`` are fitted by EM on the marginal likelihood ``b_g ~ sum_k pi_k N(0,
sigma_k^2 + s_g^2)`` over a fixed grid of ``sigma_k``, with a Dirichlet(10, 1, ..., 1) prior
that leans towards the null (as ashr's ``nullweight``). The posterior of each ``beta_g`` is then
a mixture of the point mass and normals, in closed form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

__all__ = ["ShrunkPosterior", "shrink"]

#: Dirichlet weight of the null component (ashr's default ``nullweight``)
NULL_WEIGHT = 10.0


@dataclass
class ShrunkPosterior:
    """The posterior of every ``beta_g``: weights ``r`` (G, K) over components, and within
    component ``k`` a normal ``N(mu, v)`` (G, K); component 0 is the point mass at 0."""

    r: np.ndarray
    mu: np.ndarray
    v: np.ndarray
    pi: np.ndarray
    sigma: np.ndarray

    def proba_beyond(self, delta: float) -> np.ndarray:
        """``P(|beta| > delta)`` per gene."""
        sd = np.sqrt(self.v[:, 1:])
        mu = self.mu[:, 1:]
        tails = ndtr((-delta - mu) / sd) + ndtr((mu - delta) / sd)  # (G, K-1)
        return (self.r[:, 1:] * tails).sum(1)

    def proba_positive(self) -> np.ndarray:
        """``P(beta > 0)`` per gene (the point mass counts as neither sign)."""
        return (self.r[:, 1:] * ndtr(self.mu[:, 1:] / np.sqrt(self.v[:, 1:]))).sum(1)

    def proba_negative(self) -> np.ndarray:
        """``P(beta < 0)`` per gene."""
        return (self.r[:, 1:] * ndtr(-self.mu[:, 1:] / np.sqrt(self.v[:, 1:]))).sum(1)

    def mean(self) -> np.ndarray:
        """Posterior mean per gene."""
        return (self.r * self.mu).sum(1)

    def std(self) -> np.ndarray:
        """Posterior standard deviation per gene."""
        second = (self.r * (self.v + self.mu**2)).sum(1)
        return np.sqrt(np.maximum(second - self.mean() ** 2, 0.0))

    def median(self, n_iter: int = 40) -> np.ndarray:
        """Posterior median per gene (bisection on the mixture's distribution function)."""
        sd = np.sqrt(np.maximum(self.v, 1e-300))
        lo = (self.mu - 8 * sd).min(1) - 1e-9
        hi = (self.mu + 8 * sd).max(1) + 1e-9
        for _ in range(n_iter):
            mid = 0.5 * (lo + hi)
            cdf = self.r[:, 0] * (mid >= 0) + (
                self.r[:, 1:] * ndtr((mid[:, None] - self.mu[:, 1:]) / sd[:, 1:])
            ).sum(1)
            below = cdf < 0.5
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
        return 0.5 * (lo + hi)


def shrink(
    b: np.ndarray, s: np.ndarray, *, max_iter: int = 500, tol: float = 1e-4
) -> ShrunkPosterior:
    """Fit the unimodal prior to estimates ``b`` with standard errors ``s`` and return the
    posterior of every ``beta_g``.

    Parameters
    ----------
    b, s
        (G,) estimates and their standard errors (``s > 0``).
    max_iter, tol
        Accelerated EM iterations, and the tolerance on the largest change of a weight (at
        1e-4 the probabilities of PBMC 3k's genes are within 1e-4 of those at 1e-6, in a
        twentieth of the time).
    """
    b = np.asarray(b, dtype=np.float64)
    s = np.maximum(np.asarray(s, dtype=np.float64), 1e-8)
    sigma_min = max(s.min() / 10.0, 1e-6)
    sigma_max = max(2.0 * np.sqrt(max((b**2 - s**2).max(), 0.0)), 8.0 * sigma_min)
    n_grid = int(np.ceil(np.log(sigma_max / sigma_min) / np.log(np.sqrt(2.0)))) + 1
    sigma = np.concatenate([[0.0], sigma_min * np.sqrt(2.0) ** np.arange(n_grid)])  # (K,)
    var = sigma[None, :] ** 2 + s[:, None] ** 2  # (G, K) marginal variances
    log_lik = -0.5 * (np.log(2 * np.pi * var) + b[:, None] ** 2 / var)  # (G, K)
    lik = np.exp(log_lik - log_lik.max(1, keepdims=True))
    prior = np.ones(len(sigma))
    prior[0] = NULL_WEIGHT
    pi = np.full(len(sigma), 1.0 / len(sigma))
    pi[0] = 0.5
    pi /= pi.sum()
    pi = _fit_weights(lik, prior, pi, max_iter=max_iter, tol=tol)
    r = lik * pi
    r /= r.sum(1, keepdims=True)
    prior_precision = np.divide(1.0, sigma**2, out=np.zeros_like(sigma), where=sigma > 0)
    v = 1.0 / (prior_precision[None, :] + 1.0 / s[:, None] ** 2)  # (G, K)
    v[:, 0] = 0.0  # the point mass has no spread
    mu = v * b[:, None] / s[:, None] ** 2  # (G, K)
    return ShrunkPosterior(r=r, mu=mu, v=v, pi=pi, sigma=sigma)


def _fit_weights(
    lik: np.ndarray, prior: np.ndarray, pi: np.ndarray, *, max_iter: int, tol: float
) -> np.ndarray:
    """Maximize ``sum_g log(lik_g . pi) + sum_k (prior_k - 1) log pi_k`` over the simplex.

    EM for the weights of a mixture with fixed components converges slowly (hundreds of steps
    here); SQUAREM (Varadhan and Roland 2008) extrapolates along two EM steps and falls back
    to the plain second step whenever the extrapolation does not improve the objective, so
    every iteration is at least as good as two EM steps.
    """

    def em(p: np.ndarray) -> np.ndarray:
        w = lik * p
        w /= w.sum(1, keepdims=True)
        new = np.maximum(w.sum(0) + prior - 1.0, 0.0)
        return new / new.sum()

    def objective(p: np.ndarray) -> float:
        weighted = prior > 1  # the components with a Dirichlet weight (the null)
        with np.errstate(divide="ignore"):
            penalty = ((prior[weighted] - 1.0) * np.log(p[weighted])).sum()
        return float(np.log(lik @ p).sum() + penalty)

    value = objective(pi)
    for _ in range(max_iter):
        p1 = em(pi)
        p2 = em(p1)
        r, v = p1 - pi, (p2 - p1) - (p1 - pi)
        norm_v = np.linalg.norm(v)
        new, new_value = p2, objective(p2)
        if norm_v > 0.0:
            alpha = min(-np.linalg.norm(r) / norm_v, -1.0)  # the SQUAREM step length
            jump = np.maximum(pi - 2.0 * alpha * r + alpha**2 * v, 0.0)
            jump = em(jump / jump.sum())
            jump_value = objective(jump)
            if jump_value >= new_value:
                new, new_value = jump, jump_value
        # converged: the weights barely move, or the log-likelihood gains < 1e-3 nats in all
        done = np.abs(new - pi).max() < tol or new_value - value < 1e-3
        pi, value = new, new_value
        if done:
            break
    return pi
