"""Probabilistic PCA (Tipping & Bishop, 1999) in closed form, as pure functions of tensors.

The model is ``z ~ N(0, I_L)``, ``x | z ~ N(W z + mu, sigma^2 I_G)``, so that marginally
``x ~ N(mu, C)`` with ``C = W W^T + sigma^2 I_G``. Its maximum-likelihood estimate is closed
form: with ``(U_L, Lambda_L)`` the top ``L`` eigenpairs of the sample covariance ``S``,

* ``mu = mean(x)``
* ``sigma^2 = (trace(S) - sum(Lambda_L)) / (G - L)`` (the mean of the discarded eigenvalues,
  written so that only the top ``L`` eigenpairs are ever needed)
* ``W = U_L (Lambda_L - sigma^2 I)^(1/2)`` (up to a rotation, fixed here to the identity).

``S`` divides by ``n - ddof``; ``ddof=0`` (the default) is the ML estimate, ``ddof=1`` is the
unbiased covariance that :class:`sklearn.decomposition.PCA` uses (which matches sklearn only
for ``n > G``: with fewer samples than features sklearn averages the discarded eigenvalues
over ``min(n, G) - L`` rather than ``G - L``). Every quantity that touches
the ``G x G`` covariance ``C`` goes through the ``L x L`` matrix ``M = W^T W + sigma^2 I``
(Woodbury identity and matrix determinant lemma), so nothing ``G x G`` is formed unless the
exact eigensolver is chosen for a small ``G``.

Inputs may be dense tensors / arrays or sparse matrices (torch sparse CSR/CSC/COO, or any
``scipy.sparse`` matrix); sparse input is never densified as a whole. Computation is in float64
on the device of the input.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse
import torch

__all__ = [
    "PPCAEstimate",
    "fit_ppca",
    "log_likelihood",
    "posterior",
]

Solver = Literal["auto", "eigh", "randomized"]
MatrixLike = torch.Tensor | np.ndarray | scipy.sparse.spmatrix | scipy.sparse.sparray

#: Largest number of features for which ``solver="auto"`` forms ``S`` and calls ``eigh``.
EIGH_MAX_FEATURES = 4096
#: Dense row chunks hold at most about this many float64 elements (32 MiB).
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class PPCAEstimate:
    """Maximum-likelihood parameters of a probabilistic PCA model.

    Attributes
    ----------
    mean
        ``(G,)`` sample mean ``mu``.
    W
        ``(G, L)`` loading matrix ``U_L (Lambda_L - sigma^2 I)^(1/2)``; its columns are
        orthogonal and ordered by decreasing eigenvalue.
    sigma2
        ``()`` isotropic noise variance, the mean of the ``G - L`` discarded eigenvalues.
    eigenvalues
        ``(L,)`` top eigenvalues ``Lambda_L`` of the sample covariance, decreasing.
    total_variance
        ``()`` ``trace(S)``, the sum of all ``G`` eigenvalues.
    n_samples
        Number of cells the parameters were estimated from.
    ddof
        Delta degrees of freedom of ``S`` (divisor ``n_samples - ddof``).
    """

    mean: torch.Tensor
    W: torch.Tensor
    sigma2: torch.Tensor
    eigenvalues: torch.Tensor
    total_variance: torch.Tensor
    n_samples: int
    ddof: int

    @property
    def n_features(self) -> int:
        """Number of observed dimensions ``G``."""
        return self.W.shape[0]

    @property
    def n_components(self) -> int:
        """Number of latent dimensions ``L``."""
        return self.W.shape[1]


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def _as_matrix(X: MatrixLike) -> torch.Tensor:
    """Return ``X`` as a 2-D dense tensor (dtype kept) or a float64 sparse CSR tensor."""
    if scipy.sparse.issparse(X):
        csr = scipy.sparse.csr_matrix(X)
        csr.sum_duplicates()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
            X = torch.sparse_csr_tensor(
                torch.from_numpy(csr.indptr.astype(np.int64)),
                torch.from_numpy(csr.indices.astype(np.int64)),
                torch.from_numpy(csr.data.astype(np.float64)),
                size=csr.shape,
                check_invariants=False,
            )
    elif isinstance(X, np.ndarray):
        X = torch.from_numpy(np.ascontiguousarray(X))
    elif not isinstance(X, torch.Tensor):
        raise TypeError(
            f"X must be a torch.Tensor, a numpy array or a scipy.sparse matrix, "
            f"got {type(X).__name__}."
        )
    if X.dim() != 2:
        raise ValueError(f"X must be 2-D (cells x features), got shape {tuple(X.shape)}.")
    if X.layout == torch.strided:
        if not (X.is_floating_point() or X.dtype in (torch.int32, torch.int64, torch.int16)):
            raise ValueError(f"X must be numeric, got dtype {X.dtype}.")
        return X
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        if X.layout == torch.sparse_coo:
            X = X.coalesce().to_sparse_csr()
        elif X.layout in (torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc):
            X = X.to_sparse_coo().coalesce().to_sparse_csr()
        elif X.layout != torch.sparse_csr:
            raise ValueError(f"Unsupported tensor layout {X.layout}.")
        if X.dtype != torch.float64:
            X = torch.sparse_csr_tensor(
                X.crow_indices(),
                X.col_indices(),
                X.values().to(torch.float64),
                size=X.shape,
                check_invariants=False,
            )
    return X


def _is_sparse(X: torch.Tensor) -> bool:
    return X.layout == torch.sparse_csr


def _csr_rows(X: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of a CSR tensor, as a CSR tensor (no densification)."""
    crow = X.crow_indices()  # (N + 1,)
    lo, hi = int(crow[start]), int(crow[stop])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        return torch.sparse_csr_tensor(
            crow[start : stop + 1] - lo,  # (stop - start + 1,)
            X.col_indices()[lo:hi],  # (nnz_chunk,)
            X.values()[lo:hi],  # (nnz_chunk,)
            size=(stop - start, X.shape[1]),
            check_invariants=False,
        )


def _csr_transpose(X: torch.Tensor) -> torch.Tensor:
    """``X^T`` of a CSR tensor, again in CSR layout (so that ``X^T @ dense`` is fast)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        csc = X.to_sparse_csc()
        return torch.sparse_csr_tensor(
            csc.ccol_indices(),  # (G + 1,)
            csc.row_indices(),  # (nnz,)
            csc.values(),  # (nnz,)
            size=(X.shape[1], X.shape[0]),
            check_invariants=False,
        )


def _row_slices(n_rows: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n_rows, chunk_size):
        yield start, min(n_rows, start + chunk_size)


def _dense_chunk_size(n_features: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, n_features))


def _dense_rows(X: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` as a dense float64 tensor (densifying only this chunk)."""
    if _is_sparse(X):
        return _csr_rows(X, start, stop).to_dense()  # (chunk, G)
    return X[start:stop].to(torch.float64)  # (chunk, G)


# --------------------------------------------------------------------------------------------
# moments and eigensolvers
# --------------------------------------------------------------------------------------------


def _mean_and_total_sum_of_squares(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``mu`` ``(G,)`` and ``sum_i ||x_i - mu||^2`` ``()``, both exactly centred."""
    n, G = X.shape
    if _is_sparse(X):
        col = X.col_indices()  # (nnz,)
        val = X.values()  # (nnz,)
        mu = torch.zeros(G, dtype=torch.float64, device=val.device).index_add_(0, col, val) / n
        nnz_per_col = torch.bincount(col, minlength=G).to(torch.float64)  # (G,)
        # nonzero entries contribute (x - mu)^2, the implicit zeros contribute mu^2 each
        tss = (val - mu[col]).square().sum() + ((n - nnz_per_col) * mu.square()).sum()  # ()
        return mu, tss
    chunk = _dense_chunk_size(G)
    total = torch.zeros(G, dtype=torch.float64, device=X.device)  # (G,)
    for start, stop in _row_slices(n, chunk):
        total += _dense_rows(X, start, stop).sum(dim=0)
    mu = total / n  # (G,)
    tss = torch.zeros((), dtype=torch.float64, device=X.device)
    for start, stop in _row_slices(n, chunk):
        tss += (_dense_rows(X, start, stop) - mu).square().sum()
    return mu, tss


def _scatter_matrix(X: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Centred scatter matrix ``sum_i (x_i - mu)(x_i - mu)^T`` ``(G, G)``."""
    n, G = X.shape
    if _is_sparse(X):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
            gram = (_csr_transpose(X) @ X).to_dense()  # (G, G) = X^T X
        return gram - n * torch.outer(mu, mu)  # (G, G)
    scatter = torch.zeros(G, G, dtype=torch.float64, device=X.device)  # (G, G)
    for start, stop in _row_slices(n, _dense_chunk_size(G)):
        centred = _dense_rows(X, start, stop) - mu  # (chunk, G)
        scatter += centred.mT @ centred
    return scatter


def _scatter_matmul(X: torch.Tensor, mu: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return ``V -> sum_i (x_i - mu)(x_i - mu)^T V`` without forming anything ``G x G``."""
    n, G = X.shape
    if _is_sparse(X):
        XT = _csr_transpose(X)  # (G, N) CSR

        def matmul_sparse(V: torch.Tensor) -> torch.Tensor:
            Y = X @ V - mu @ V  # (N, b) = (X - 1 mu^T) V
            # (X - 1 mu^T)^T Y; the column sums of Y are ~0 but are kept for exactness
            return XT @ Y - torch.outer(mu, Y.sum(dim=0))  # (G, b)

        return matmul_sparse

    chunk = _dense_chunk_size(G)

    def matmul_dense(V: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(V)  # (G, b)
        for start, stop in _row_slices(n, chunk):
            centred = _dense_rows(X, start, stop) - mu  # (chunk, G)
            out += centred.mT @ (centred @ V)
        return out

    return matmul_dense


def _orthonormal_complement(block: torch.Tensor, basis: list[torch.Tensor]) -> torch.Tensor:
    """Orthonormalise ``block`` ``(G, b)`` against the columns of ``basis`` and itself."""
    for _ in range(2):  # "twice is enough" (Kahan–Parlett) for block Gram–Schmidt
        for Q in basis:
            block = block - Q @ (Q.mT @ block)  # (G, b)
        block = torch.linalg.qr(block).Q  # (G, b)
    return block


def _top_eigenpairs(
    matmul: Callable[[torch.Tensor], torch.Tensor],
    n_features: int,
    n_components: int,
    *,
    block_size: int,
    krylov_depth: int,
    max_iter: int,
    tol: float,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Top eigenpairs of a symmetric PSD operator by restarted block Krylov iteration.

    Each cycle builds the block Krylov basis ``[V, A V, ..., A^(q-1) V]`` (fully
    re-orthogonalised, ``q = krylov_depth``), applies the operator to it, does a
    Rayleigh–Ritz step on the whole ``b q``-dimensional basis and restarts from the top ``b``
    Ritz vectors. It stops once every wanted Ritz pair has a residual
    ``||A u - theta u|| <= tol * theta_1`` (eigenvalue errors are then ``O(tol^2)``).
    Krylov subspaces converge with the square root of the spectral gap, which subspace
    (power) iteration needs many more operator products for on flat scRNA-seq spectra.

    Returns eigenvalues ``(L,)`` (decreasing), eigenvectors ``(G, L)`` and a converged flag.
    """
    b = min(n_features, block_size)
    depth = max(1, min(krylov_depth, n_features // b))
    start = torch.randn(n_features, b, generator=generator, dtype=torch.float64)  # (G, b)
    V = torch.linalg.qr(start.to(device)).Q  # (G, b)
    Q = torch.empty(n_features, b * depth, dtype=torch.float64, device=device)  # (G, b q)
    AQ = torch.empty_like(Q)  # (G, b q)
    theta = U = None
    converged = False
    for _ in range(max_iter):
        Q[:, :b] = V
        for j in range(depth):
            block = slice(j * b, (j + 1) * b)
            AQ[:, block] = matmul(Q[:, block])  # (G, b) = A Q_j
            if j + 1 < depth:
                previous = [Q[:, : (j + 1) * b]]  # (G, b (j + 1))
                Q[:, (j + 1) * b : (j + 2) * b] = _orthonormal_complement(AQ[:, block], previous)
        T = Q.mT @ AQ  # (b q, b q)
        ritz_values, ritz_vectors = torch.linalg.eigh(0.5 * (T + T.mT))  # increasing
        ritz_values, ritz_vectors = ritz_values.flip(0), ritz_vectors.flip(1)[:, :b]
        U = Q @ ritz_vectors  # (G, b) top Ritz vectors
        AU = AQ @ ritz_vectors  # (G, b) = A U
        theta = ritz_values[:b]  # (b,)
        residual = AU[:, :n_components] - U[:, :n_components] * theta[:n_components]  # (G, L)
        scale = theta[0].clamp_min(torch.finfo(torch.float64).tiny)
        if bool((torch.linalg.vector_norm(residual, dim=0) <= tol * scale).all()):
            converged = True
            break
        V = torch.linalg.qr(U).Q  # (G, b) restart block
    assert theta is not None and U is not None
    return theta[:n_components], U[:, :n_components], converged


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def fit_ppca(
    X: MatrixLike,
    n_components: int,
    *,
    ddof: int = 0,
    seed: int = 0,
    solver: Solver = "auto",
    n_oversamples: int | None = None,
    krylov_depth: int = 4,
    max_iter: int = 100,
    tol: float = 1e-9,
) -> PPCAEstimate:
    """Fit probabilistic PCA by its closed-form maximum-likelihood solution.

    Parameters
    ----------
    X
        ``(N, G)`` data, cells x features: a dense tensor / array, a torch sparse tensor or a
        ``scipy.sparse`` matrix. Sparse input is never densified as a whole.
    n_components
        Latent dimension ``L``, ``1 <= L < G``.
    ddof
        The sample covariance divides by ``N - ddof``. ``0`` (default) gives the
        maximum-likelihood estimate of the PPCA model; ``1`` gives the unbiased covariance
        used by :class:`sklearn.decomposition.PCA` (same scores as sklearn when ``N > G``).
    seed
        Seed of the random starting block of the randomized eigensolver.
    solver
        ``"eigh"`` forms the ``G x G`` covariance and diagonalises it exactly (for sparse
        input through the sparse Gram matrix ``X^T X - N mu mu^T``); ``"randomized"`` finds
        only the top ``L`` eigenpairs by restarted block Krylov iteration from a seeded random
        block, with implicit centred products
        ``S V = (X - 1 mu^T)^T ((X - 1 mu^T) V) / (N - ddof)``; ``"auto"`` (default) uses
        ``"eigh"`` when ``G <= 4096`` and ``"randomized"`` otherwise.
    n_oversamples
        Extra block columns of the randomized solver (block size ``L + n_oversamples``);
        ``None`` means ``max(10, L)``. Larger blocks converge in fewer cycles.
    krylov_depth
        Number of blocks ``q`` of the Krylov basis ``[V, S V, ..., S^(q-1) V]`` built per
        restart cycle of the randomized solver.
    max_iter
        Maximum number of restart cycles of the randomized solver (each costs
        ``krylov_depth`` products of ``S`` with a block).
    tol
        Randomized solver stops when every Ritz residual ``||S u - lambda u||`` is at most
        ``tol * lambda_1``.

    Returns
    -------
    PPCAEstimate
        Float64 parameters on the device of ``X``.

    Raises
    ------
    ValueError
        If ``n_components`` is not in ``[1, G)``, if ``N <= ddof`` or if ``X`` is not finite.
    """
    X = _as_matrix(X)
    n, G = X.shape
    if isinstance(n_components, bool) or not isinstance(n_components, int | np.integer):
        raise TypeError(f"n_components must be an int, got {type(n_components).__name__}.")
    n_components = int(n_components)
    if not 1 <= n_components < G:
        raise ValueError(
            f"n_components must satisfy 1 <= n_components < n_features = {G}, "
            f"got {n_components}; sigma^2 needs at least one discarded direction."
        )
    if ddof < 0 or n <= ddof:
        raise ValueError(f"Need 0 <= ddof < n_samples, got ddof={ddof} with {n} samples.")
    if solver not in ("auto", "eigh", "randomized"):
        raise ValueError(f"solver must be 'auto', 'eigh' or 'randomized', got {solver!r}.")
    values = X.values() if _is_sparse(X) else X
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        raise ValueError("X contains NaN or infinite values; remove or impute them first.")

    L = n_components
    mu, tss = _mean_and_total_sum_of_squares(X)  # (G,), ()
    denominator = n - ddof
    if solver == "eigh" or (solver == "auto" and G <= EIGH_MAX_FEATURES):
        S = _scatter_matrix(X, mu) / denominator  # (G, G)
        evals, evecs = torch.linalg.eigh(0.5 * (S + S.mT))  # (G,), (G, G) increasing
        eigenvalues = evals.flip(0)[:L]  # (L,)
        U = evecs.flip(1)[:, :L]  # (G, L)
        total_variance = torch.diagonal(S).sum()  # ()
    else:
        scatter_matmul = _scatter_matmul(X, mu)
        generator = torch.Generator().manual_seed(seed)
        block = L + (max(10, L) if n_oversamples is None else n_oversamples)
        eigenvalues, U, converged = _top_eigenpairs(
            lambda V: scatter_matmul(V) / denominator,
            G,
            L,
            block_size=block,
            krylov_depth=krylov_depth,
            max_iter=max_iter,
            tol=tol,
            generator=generator,
            device=mu.device,
        )
        if not converged:
            warnings.warn(
                f"Randomized eigensolver did not reach tol={tol} in {max_iter} iterations; "
                "increase max_iter or n_oversamples, or use solver='eigh'.",
                RuntimeWarning,
                stacklevel=2,
            )
        total_variance = tss / denominator  # ()
    # fix the sign of each eigenvector (largest |entry| positive) for reproducibility
    signs = torch.sign(U.gather(0, U.abs().argmax(dim=0, keepdim=True)))  # (1, L)
    U = U * torch.where(signs == 0, torch.ones_like(signs), signs)  # (G, L)
    sigma2 = ((total_variance - eigenvalues.sum()) / (G - L)).clamp_min(0.0)  # ()
    W = U * (eigenvalues - sigma2).clamp_min(0.0).sqrt()  # (G, L)
    return PPCAEstimate(
        mean=mu,
        W=W,
        sigma2=sigma2,
        eigenvalues=eigenvalues,
        total_variance=total_variance,
        n_samples=n,
        ddof=ddof,
    )


def _inner_cholesky(params: PPCAEstimate) -> torch.Tensor:
    """Cholesky factor of ``M = W^T W + sigma^2 I`` ``(L, L)``."""
    W = params.W  # (G, L)
    M = W.mT @ W + params.sigma2 * torch.eye(W.shape[1], dtype=W.dtype, device=W.device)
    return torch.linalg.cholesky(M)  # (L, L)


def _centred_projections(
    params: PPCAEstimate, X: torch.Tensor, *, with_sqnorm: bool
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor | None]]:
    """Yield ``(start, stop, (x - mu) W, ||x - mu||^2)`` for row chunks of ``X``."""
    n, G = X.shape
    if G != params.n_features:
        raise ValueError(f"X has {G} features but the model was fitted on {params.n_features}.")
    mu, W = params.mean.to(X.device), params.W.to(X.device)  # (G,), (G, L)
    if _is_sparse(X):
        mu_W = mu @ W  # (L,)
        mu_sqnorm = mu.square().sum()  # ()
        chunk = max(1, _CHUNK_ELEMENTS // max(1, W.shape[1]))
        for start, stop in _row_slices(n, chunk):
            rows = _csr_rows(X, start, stop)  # (chunk, G) CSR
            projection = rows @ W - mu_W  # (chunk, L)
            sqnorm = None
            if with_sqnorm:
                # ||x - mu||^2 = ||mu||^2 + sum over nonzeros of ((x - mu)^2 - mu^2)
                counts = rows.crow_indices().diff()  # (chunk,)
                row_of = torch.repeat_interleave(
                    torch.arange(stop - start, device=X.device), counts
                )  # (nnz_chunk,)
                val, mu_col = rows.values(), mu[rows.col_indices()]  # (nnz_chunk,) x2
                excess = (val - mu_col).square() - mu_col.square()  # (nnz_chunk,)
                sqnorm = torch.zeros(stop - start, dtype=torch.float64, device=X.device)
                sqnorm = sqnorm.index_add_(0, row_of, excess) + mu_sqnorm  # (chunk,)
            yield start, stop, projection, sqnorm
        return
    for start, stop in _row_slices(n, _dense_chunk_size(G)):
        centred = _dense_rows(X, start, stop) - mu  # (chunk, G)
        sqnorm = centred.square().sum(dim=1) if with_sqnorm else None  # (chunk,)
        yield start, stop, centred @ W, sqnorm  # (chunk, L)


def posterior(params: PPCAEstimate, X: MatrixLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian posterior ``p(z | x)`` of the latent coordinates.

    ``E[z | x] = M^{-1} W^T (x - mu)`` and ``Cov[z | x] = sigma^2 M^{-1}`` with
    ``M = W^T W + sigma^2 I``; the covariance is the same for every cell.

    Parameters
    ----------
    params
        Fitted parameters (see :func:`fit_ppca`).
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
    chol_M = _inner_cholesky(params).to(X.device)  # (L, L)
    mean = torch.empty(X.shape[0], params.n_components, dtype=torch.float64, device=X.device)
    for start, stop, projection, _ in _centred_projections(params, X, with_sqnorm=False):
        mean[start:stop] = torch.cholesky_solve(projection.mT, chol_M).mT  # (chunk, L)
    cov = params.sigma2.to(X.device) * torch.cholesky_inverse(chol_M)  # (L, L)
    return mean, cov


def log_likelihood(params: PPCAEstimate, X: MatrixLike) -> torch.Tensor:
    """Exact per-cell log-density ``log N(x; mu, W W^T + sigma^2 I)``.

    Uses ``C^{-1} = (I - W M^{-1} W^T) / sigma^2`` (Woodbury) and
    ``log det C = (G - L) log sigma^2 + log det M`` (determinant lemma), so the cost is
    ``O(N G L)`` for dense input and ``O(nnz L)`` for sparse input, in chunks of cells.

    Parameters
    ----------
    params
        Fitted parameters (see :func:`fit_ppca`).
    X
        ``(N, G)`` data, dense or sparse.

    Returns
    -------
    torch.Tensor
        ``(N,)`` float64 log-likelihood of each cell.
    """
    X = _as_matrix(X)
    G, L = params.n_features, params.n_components
    chol_M = _inner_cholesky(params).to(X.device)  # (L, L)
    sigma2 = params.sigma2.to(X.device)  # ()
    log_det_C = (G - L) * torch.log(sigma2) + 2.0 * torch.log(torch.diagonal(chol_M)).sum()
    out = torch.empty(X.shape[0], dtype=torch.float64, device=X.device)  # (N,)
    for start, stop, projection, sqnorm in _centred_projections(params, X, with_sqnorm=True):
        assert sqnorm is not None
        # r^T W M^{-1} W^T r = ||chol_M^{-1} W^T r||^2
        whitened = torch.linalg.solve_triangular(chol_M, projection.mT, upper=False)  # (L, c)
        mahalanobis = (sqnorm - whitened.square().sum(dim=0)) / sigma2  # (chunk,)
        out[start:stop] = -0.5 * (G * math.log(2.0 * math.pi) + log_det_C + mahalanobis)
    return out
