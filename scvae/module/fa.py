"""Factor analysis fitted by EM, as pure functions of tensors.

The model is ``z ~ N(0, I_L)``, ``x | z ~ N(W z + mu, Psi)`` with ``Psi = diag(psi)`` a
per-feature noise variance, so that marginally ``x ~ N(mu, C)``, ``C = W W^T + Psi``. PPCA is
the special case ``Psi = sigma^2 I``; the EM here starts from PPCA's closed-form solution.

With ``S`` the sample covariance (divisor ``N``), ``V = Psi^-1 W`` ``(G, L)`` and the ``L x L``
matrix ``M = I + W^T Psi^-1 W``, one EM iteration is

* E step: ``E[z | x] = M^-1 V^T (x - mu)``, ``Cov[z | x] = M^-1`` (the same for every cell);
  averaged over the cells, ``<(x - mu) E[z]^T> = S V M^-1`` and
  ``<E[z z^T]> = M^-1 + M^-1 V^T S V M^-1``;
* M step: ``W' = (S V M^-1) <E[z z^T]>^-1`` and
  ``psi' = max(diag(S) - rowsum(W' * (S V M^-1)), floor)``.

``S`` enters only through ``diag(S)`` and the product ``S V``, computed as
``(X^T (X V) - N mu (mu^T V)) / N`` over the cells (for sparse input through sparse products,
for dense input in row chunks); nothing ``G x G`` is ever formed, and sparse input is never
densified as a whole.

The mean log-likelihood per cell is
``-1/2 (G log 2 pi + log det C + tr(C^-1 S))`` with ``log det C = sum log psi + log det M``
(matrix determinant lemma) and ``tr(C^-1 S) = sum diag(S) / psi - tr(M^-1 V^T S V)``
(Woodbury), so each iteration reports the training log-likelihood at the cost of the
``S V`` product it needs anyway. EM never decreases it.

The floor on ``psi``: a feature that is constant over the training cells (e.g. a gene with no
count in any of them) has ``diag(S) = 0`` and its maximum-likelihood noise variance is 0; the
density is then degenerate, and a held-out cell with another value there scores about
``-x^2 / (2 floor)``. ``psi`` is floored at ``psi_floor * mean(diag(S))``, relative to the
mean feature variance (so the floor does not depend on the data's units). Clamping ``psi`` in
the M step is the constrained maximizer of the per-feature likelihood, so EM stays monotone.

Computation is in float64 on the device of the input.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from scvae.module import ppca as ppca_core
from scvae.module.ppca import (
    _CHUNK_ELEMENTS,
    MatrixLike,
    _as_matrix,
    _csr_rows,
    _dense_chunk_size,
    _dense_rows,
    _is_sparse,
    _mean_and_total_sum_of_squares,
    _row_slices,
    _scatter_matmul,
)

__all__ = ["DEFAULT_PSI_FLOOR", "FAEstimate", "fit_fa", "log_likelihood", "posterior"]

#: Default floor of ``psi``, relative to the mean feature variance ``mean(diag(S))``.
DEFAULT_PSI_FLOOR = 1e-2


@dataclass(frozen=True)
class FAEstimate:
    """Maximum-likelihood parameters of a factor-analysis model, and how EM got there.

    Attributes
    ----------
    mean
        ``(G,)`` sample mean ``mu``.
    W
        ``(G, L)`` loading matrix (identified up to a rotation of the latent space).
    psi
        ``(G,)`` per-feature noise variances, each at least :attr:`psi_min`.
    psi_min
        ``()`` the absolute floor applied to ``psi``: ``psi_floor * mean(diag(S))``.
    log_likelihood
        ``(n_iter + 1,)`` mean training log-likelihood per cell before each EM iteration and
        after the last one (non-decreasing up to round-off).
    n_samples
        Number of cells the parameters were estimated from.
    converged
        Whether the last iteration improved the mean log-likelihood by less than ``tol``.
    """

    mean: torch.Tensor
    W: torch.Tensor
    psi: torch.Tensor
    psi_min: torch.Tensor
    log_likelihood: torch.Tensor
    n_samples: int
    converged: bool

    @property
    def n_features(self) -> int:
        """Number of observed dimensions ``G``."""
        return self.W.shape[0]

    @property
    def n_components(self) -> int:
        """Number of latent dimensions ``L``."""
        return self.W.shape[1]

    @property
    def n_iter(self) -> int:
        """Number of EM iterations run."""
        return self.log_likelihood.shape[0] - 1


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _feature_variances(X: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """``diag(S)`` ``(G,)``: the per-feature variance (divisor ``N``), exactly centred."""
    n, G = X.shape
    if _is_sparse(X):
        col, val = X.col_indices(), X.values()  # (nnz,) x2
        nnz = torch.bincount(col, minlength=G).to(torch.float64)  # (G,)
        ss = torch.zeros(G, dtype=torch.float64, device=val.device)
        ss = ss.index_add_(0, col, (val - mu[col]).square())  # nonzeros' (x - mu)^2
        return (ss + (n - nnz) * mu.square()) / n  # implicit zeros contribute mu^2 each
    out = torch.zeros(G, dtype=torch.float64, device=X.device)
    for start, stop in _row_slices(n, _dense_chunk_size(G)):
        out += (_dense_rows(X, start, stop) - mu).square().sum(dim=0)
    return out / n


def _inner(W: torch.Tensor, psi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``V = Psi^-1 W`` ``(G, L)`` and the Cholesky factor of ``M = I + W^T V`` ``(L, L)``."""
    V = W / psi[:, None]  # (G, L)
    M = torch.eye(W.shape[1], dtype=W.dtype, device=W.device) + W.mT @ V  # (L, L)
    return V, torch.linalg.cholesky(0.5 * (M + M.mT))


def _mean_log_likelihood(
    var: torch.Tensor,
    psi: torch.Tensor,
    V: torch.Tensor,
    chol_M: torch.Tensor,
    SV: torch.Tensor,
) -> torch.Tensor:
    """Mean log-likelihood per cell from ``diag(S)``, ``psi``, ``V``, ``chol(M)`` and ``S V``."""
    G = var.shape[0]
    log_det_C = torch.log(psi).sum() + 2.0 * torch.log(torch.diagonal(chol_M)).sum()  # ()
    quad = torch.cholesky_solve(V.mT @ SV, chol_M)  # (L, L) = M^-1 V^T S V
    trace = (var / psi).sum() - torch.trace(quad)  # () = tr(C^-1 S)
    return -0.5 * (G * math.log(2.0 * math.pi) + log_det_C + trace)


def _check_input(X: torch.Tensor, n_components: object) -> int:
    n, G = X.shape
    if isinstance(n_components, bool) or not isinstance(n_components, int | np.integer):
        raise TypeError(f"n_components must be an int, got {type(n_components).__name__}.")
    n_components = int(n_components)
    if not 1 <= n_components < G:
        raise ValueError(
            f"n_components must satisfy 1 <= n_components < n_features = {G}, got {n_components}."
        )
    if n < 2:
        raise ValueError(f"Factor analysis needs at least 2 samples, got {n}.")
    values = X.values() if _is_sparse(X) else X
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        raise ValueError("X contains NaN or infinite values; remove or impute them first.")
    return n_components


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def fit_fa(
    X: MatrixLike,
    n_components: int,
    *,
    psi_floor: float = DEFAULT_PSI_FLOOR,
    max_iter: int = 1000,
    tol: float = 1e-6,
    seed: int = 0,
    warn: bool = True,
) -> FAEstimate:
    """Fit factor analysis by EM, starting from probabilistic PCA's closed-form solution.

    Parameters
    ----------
    X
        ``(N, G)`` data, cells x features: a dense tensor / array, a torch sparse tensor or a
        ``scipy.sparse`` matrix. Sparse input is never densified as a whole.
    n_components
        Latent dimension ``L``, ``1 <= L < G``.
    psi_floor
        Floor of the noise variances, relative to the mean feature variance: every ``psi_g``
        is at least ``psi_floor * mean(diag(S))``. Must be positive (see the module
        docstring for why a floor is needed).
    max_iter
        Maximum number of EM iterations.
    tol
        Stop when an iteration improves the mean log-likelihood per cell by less than this
        (nats).
    seed
        Seed of PPCA's randomized eigensolver (used for the initialization when ``G > 4096``).
    warn
        Warn (``RuntimeWarning``) when ``max_iter`` is reached before ``tol``.

    Returns
    -------
    FAEstimate
        Float64 parameters on the device of ``X``.

    Raises
    ------
    ValueError
        If ``n_components`` is not in ``[1, G)``, ``N < 2``, ``X`` is not finite, every
        feature is constant, or an option is out of range.
    """
    X = _as_matrix(X)
    L = _check_input(X, n_components)
    if not (isinstance(psi_floor, int | float) and 0.0 < float(psi_floor) < math.inf):
        raise ValueError(f"psi_floor must be a positive number, got {psi_floor!r}.")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative int, got {max_iter!r}.")
    if not (isinstance(tol, int | float) and 0.0 <= float(tol) < math.inf):
        raise ValueError(f"tol must be a non-negative number, got {tol!r}.")
    n, G = X.shape
    mu, _ = _mean_and_total_sum_of_squares(X)  # (G,)
    var = _feature_variances(X, mu)  # (G,) diag(S)
    mean_var = var.mean()
    if not bool(mean_var > 0):
        raise ValueError("Every feature is constant: factor analysis has nothing to model.")
    psi_min = float(psi_floor) * mean_var  # ()
    scatter = _scatter_matmul(X, mu)

    init = ppca_core.fit_ppca(X, L, seed=seed)
    W = init.W.clone()  # (G, L)
    psi = torch.full_like(var, float(init.sigma2)).clamp_min(psi_min)  # (G,)
    # a PPCA direction with eigenvalue <= sigma^2 has a zero column, a fixed point of EM:
    # give it a small seeded random start so that EM can move it
    dead = torch.linalg.vector_norm(W, dim=0) == 0  # (L,)
    if bool(dead.any()):
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(G, int(dead.sum()), generator=generator, dtype=torch.float64)
        W[:, dead] = 1e-3 * mean_var.sqrt() * noise.to(W.device)

    history: list[torch.Tensor] = []
    converged = False
    for _ in range(max_iter + 1):
        V, chol_M = _inner(W, psi)
        SV = scatter(V) / n  # (G, L) = S V
        history.append(_mean_log_likelihood(var, psi, V, chol_M, SV))
        if len(history) >= 2 and float(history[-1] - history[-2]) < tol:
            converged = True
            break
        if len(history) == max_iter + 1:
            break
        SB = torch.cholesky_solve(SV.mT, chol_M).mT  # (G, L) = S V M^-1
        M_inv = torch.cholesky_inverse(chol_M)  # (L, L)
        Ezz = M_inv + torch.cholesky_solve(V.mT @ SB, chol_M)  # (L, L)
        Ezz = 0.5 * (Ezz + Ezz.mT)
        W = torch.linalg.solve(Ezz, SB.mT).mT  # (G, L) = S B^T <E zz^T>^-1
        psi = (var - (W * SB).sum(dim=1)).clamp_min(psi_min)  # (G,)
    if not converged and warn and max_iter > 0:
        warnings.warn(
            f"Factor analysis EM did not reach tol={tol} in {max_iter} iterations; "
            "increase max_iter.",
            RuntimeWarning,
            stacklevel=2,
        )
    return FAEstimate(
        mean=mu,
        W=W,
        psi=psi,
        psi_min=psi_min,
        log_likelihood=torch.stack(history),
        n_samples=n,
        converged=converged,
    )


def _projections(
    params: FAEstimate, X: torch.Tensor, V: torch.Tensor, *, with_sqnorm: bool
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor | None]]:
    """Yield ``(start, stop, (x - mu) V, sum_g (x_g - mu_g)^2 / psi_g)`` for row chunks."""
    n, G = X.shape
    if G != params.n_features:
        raise ValueError(f"X has {G} features but the model was fitted on {params.n_features}.")
    mu = params.mean.to(X.device)  # (G,)
    inv_psi = 1.0 / params.psi.to(X.device)  # (G,)
    if _is_sparse(X):
        mu_V = mu @ V  # (L,)
        base = (mu.square() * inv_psi).sum()  # () the all-zero cell's weighted norm
        chunk = max(1, _CHUNK_ELEMENTS // max(1, V.shape[1]))
        for start, stop in _row_slices(n, chunk):
            rows = _csr_rows(X, start, stop)  # (chunk, G) CSR
            projection = rows @ V - mu_V  # (chunk, L)
            sqnorm = None
            if with_sqnorm:
                counts = rows.crow_indices().diff()  # (chunk,)
                row_of = torch.repeat_interleave(
                    torch.arange(stop - start, device=X.device), counts
                )  # (nnz_chunk,)
                cols = rows.col_indices()  # (nnz_chunk,)
                val, mu_col = rows.values(), mu[cols]  # (nnz_chunk,) x2
                excess = ((val - mu_col).square() - mu_col.square()) * inv_psi[cols]
                sqnorm = torch.zeros(stop - start, dtype=torch.float64, device=X.device)
                sqnorm = sqnorm.index_add_(0, row_of, excess) + base  # (chunk,)
            yield start, stop, projection, sqnorm
        return
    for start, stop in _row_slices(n, _dense_chunk_size(G)):
        centred = _dense_rows(X, start, stop) - mu  # (chunk, G)
        sqnorm = (centred.square() * inv_psi).sum(dim=1) if with_sqnorm else None  # (chunk,)
        yield start, stop, centred @ V, sqnorm  # (chunk, L)


def posterior(params: FAEstimate, X: MatrixLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian posterior ``p(z | x)`` of the latent coordinates.

    ``E[z | x] = M^-1 W^T Psi^-1 (x - mu)`` and ``Cov[z | x] = M^-1`` with
    ``M = I + W^T Psi^-1 W``; the covariance is the same for every cell.

    Parameters
    ----------
    params
        Fitted parameters (see :func:`fit_fa`).
    X
        ``(N, G)`` data, dense or sparse.

    Returns
    -------
    mean
        ``(N, L)`` posterior means.
    cov
        ``(L, L)`` posterior covariance, shared by all cells.
    """
    X = _as_matrix(X)
    V, chol_M = _inner(params.W.to(X.device), params.psi.to(X.device))
    mean = torch.empty(X.shape[0], params.n_components, dtype=torch.float64, device=X.device)
    for start, stop, projection, _ in _projections(params, X, V, with_sqnorm=False):
        mean[start:stop] = torch.cholesky_solve(projection.mT, chol_M).mT  # (chunk, L)
    return mean, torch.cholesky_inverse(chol_M)


def log_likelihood(params: FAEstimate, X: MatrixLike) -> torch.Tensor:
    """Exact per-cell log-density ``log N(x; mu, W W^T + Psi)``.

    Uses ``C^-1 = Psi^-1 - V M^-1 V^T`` (Woodbury, ``V = Psi^-1 W``) and
    ``log det C = sum log psi + log det M`` (determinant lemma), so the cost is ``O(N G L)``
    for dense input and ``O(nnz L)`` for sparse input, in chunks of cells.

    Parameters
    ----------
    params
        Fitted parameters (see :func:`fit_fa`).
    X
        ``(N, G)`` data, dense or sparse.

    Returns
    -------
    torch.Tensor
        ``(N,)`` float64 log-likelihood of each cell.
    """
    X = _as_matrix(X)
    G = params.n_features
    psi = params.psi.to(X.device)
    V, chol_M = _inner(params.W.to(X.device), psi)
    log_det_C = torch.log(psi).sum() + 2.0 * torch.log(torch.diagonal(chol_M)).sum()
    out = torch.empty(X.shape[0], dtype=torch.float64, device=X.device)  # (N,)
    for start, stop, projection, sqnorm in _projections(params, X, V, with_sqnorm=True):
        assert sqnorm is not None
        whitened = torch.linalg.solve_triangular(chol_M, projection.mT, upper=False)  # (L, c)
        mahalanobis = sqnorm - whitened.square().sum(dim=0)  # (chunk,)
        out[start:stop] = -0.5 * (G * math.log(2.0 * math.pi) + log_det_C + mahalanobis)
    return out
