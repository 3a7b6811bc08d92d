"""k-nearest-neighbour graphs of an embedding and their UMAP fuzzy connectivities."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors

__all__ = ["Neighbors", "fuzzy_connectivities", "nearest_neighbors"]

# umap-learn's constants (umap/umap_.py), so that the connectivities match scanpy's and
# scib-metrics' to float32 round-off.
_SMOOTH_K_TOLERANCE = 1e-5
_MIN_K_DIST_SCALE = 1e-3
_N_ITER = 64


@dataclass(frozen=True)
class Neighbors:
    """The k nearest neighbours of every cell, the cell itself included (column 0).

    Attributes
    ----------
    indices
        (n_cells, k) int64; row ``i`` lists the neighbours of cell ``i`` by increasing distance,
        starting with ``i`` itself.
    distances
        (n_cells, k) float64 Euclidean distances, same layout (column 0 is 0).
    """

    indices: np.ndarray
    distances: np.ndarray
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.indices.shape != self.distances.shape or self.indices.ndim != 2:
            raise ValueError(
                f"indices {self.indices.shape} and distances {self.distances.shape} must be "
                "2-D arrays of the same shape (n_cells, n_neighbors)."
            )

    @property
    def n_cells(self) -> int:
        """Number of cells (rows)."""
        return int(self.indices.shape[0])

    @property
    def n_neighbors(self) -> int:
        """Neighbours per cell, the cell itself included."""
        return int(self.indices.shape[1])

    def subset(self, n_neighbors: int) -> Neighbors:
        """The first ``n_neighbors`` columns (the ``n_neighbors``-NN graph, self included)."""
        if not 1 <= n_neighbors <= self.n_neighbors:
            raise ValueError(f"n_neighbors must be in [1, {self.n_neighbors}], got {n_neighbors}.")
        return Neighbors(self.indices[:, :n_neighbors], self.distances[:, :n_neighbors])

    def distance_graph(self) -> sp.csr_matrix:
        """Directed kNN graph: entry ``(i, j)`` is the distance when ``j`` is a neighbour of ``i``.

        Every listed neighbour is a stored entry, also at distance 0 (self, duplicates).
        """
        n, k = self.indices.shape
        indptr = np.arange(0, n * k + 1, k)
        return sp.csr_matrix((self.distances.ravel(), self.indices.ravel(), indptr), shape=(n, n))

    def connectivities(self) -> sp.csr_matrix:
        """UMAP fuzzy connectivities (:func:`fuzzy_connectivities`), computed once."""
        if "connectivities" not in self._cache:
            self._cache["connectivities"] = fuzzy_connectivities(self)
        return self._cache["connectivities"]


def nearest_neighbors(X: np.ndarray, n_neighbors: int) -> Neighbors:
    """Exact Euclidean k-nearest neighbours of every row of ``X``, itself included.

    Exact search (scikit-learn) is deterministic and fast for the low-dimensional embeddings
    that are evaluated here (tens of dimensions).

    Parameters
    ----------
    X
        (n_cells, n_dims) embedding.
    n_neighbors
        Neighbours per cell including the cell itself (scanpy's and scib-metrics' convention);
        capped at ``n_cells``.

    Returns
    -------
    Neighbors
        Indices and distances with each cell in its own column 0.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D (n_cells, n_dims) array, got shape {X.shape}.")
    n_cells = X.shape[0]
    if n_neighbors < 2:
        raise ValueError(f"n_neighbors must be at least 2 (self + 1), got {n_neighbors}.")
    k = min(int(n_neighbors), n_cells)
    distances, indices = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(X)  # (N, k) each
    return _self_first(indices.astype(np.int64), distances)


def _self_first(indices: np.ndarray, distances: np.ndarray) -> Neighbors:
    """Put each cell into its own column 0 (exact duplicates can otherwise come first)."""
    rows = np.arange(indices.shape[0])
    misplaced = np.flatnonzero(indices[:, 0] != rows)
    for i in misplaced:
        where = np.flatnonzero(indices[i] == i)
        j = where[0] if where.size else indices.shape[1] - 1  # replace the farthest if absent
        indices[i, 1 : j + 1] = indices[i, 0:j].copy()
        distances[i, 1 : j + 1] = distances[i, 0:j].copy()
        indices[i, 0], distances[i, 0] = i, 0.0
    return Neighbors(indices, distances)


def _smooth_knn_dist(distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """umap-learn's ``smooth_knn_dist`` (local_connectivity 1, bandwidth 1), all rows at once.

    Finds ``sigma_i`` with ``sum_{j>=1} exp(-max(d_ij - rho_i, 0) / sigma_i) = log2(k)`` by
    bisection, ``rho_i`` being the distance to the nearest neighbour at a positive distance.
    """
    n, k = distances.shape
    target = np.log2(k)
    positive = distances > 0.0  # (N, k)
    has_positive = positive.any(axis=1)
    first = np.argmax(positive, axis=1)
    rho = np.where(has_positive, distances[np.arange(n), first], 0.0).astype(np.float32)  # (N,)
    d = (distances[:, 1:] - rho[:, None]).astype(np.float64)  # (N, k-1)
    lo = np.zeros(n)
    hi = np.full(n, np.inf)
    mid = np.ones(n)
    active = np.ones(n, dtype=bool)
    for _ in range(_N_ITER):
        with np.errstate(over="ignore"):
            psum = np.where(d > 0, np.exp(-d / mid[:, None]), 1.0).sum(axis=1)  # (N,)
        active &= np.abs(psum - target) >= _SMOOTH_K_TOLERANCE
        if not active.any():
            break
        high = active & (psum > target)
        low = active & ~(psum > target)
        hi = np.where(high, mid, hi)
        lo = np.where(low, mid, lo)
        mid = np.where(high, (lo + hi) / 2.0, mid)
        mid = np.where(low, np.where(np.isinf(hi), mid * 2.0, (lo + hi) / 2.0), mid)
    sigma = mid.astype(np.float32)
    floor = _MIN_K_DIST_SCALE * np.where(rho > 0.0, distances.mean(axis=1), distances.mean())
    sigma = np.maximum(sigma, floor.astype(np.float32))
    return sigma, rho


def fuzzy_connectivities(neighbors: Neighbors) -> sp.csr_matrix:
    """UMAP's fuzzy simplicial set of a kNN graph: scanpy's ``obsp["connectivities"]``.

    ``w_ij = exp(-(d_ij - rho_i) / sigma_i)`` on the directed kNN edges (1 within ``rho_i``,
    0 on the self edge), then the fuzzy union ``W + W^T - W * W^T``. A vectorized rewrite of
    umap-learn's ``fuzzy_simplicial_set`` (what scanpy and scib-metrics call), in float32 like
    it, without numba compilation.

    Parameters
    ----------
    neighbors
        kNN graph with each cell in its own column 0.

    Returns
    -------
    scipy.sparse.csr_matrix
        (n_cells, n_cells) symmetric float32 weights in [0, 1].
    """
    distances = neighbors.distances.astype(np.float32)  # (N, k)
    indices = neighbors.indices
    n, k = indices.shape
    sigma, rho = _smooth_knn_dist(distances)
    gap = distances.astype(np.float64) - rho[:, None]  # (N, k)
    with np.errstate(divide="ignore", over="ignore"):
        w = np.where(
            (gap <= 0.0) | (sigma[:, None] == 0.0), 1.0, np.exp(-gap / sigma[:, None])
        ).astype(np.float32)
    w[indices == np.arange(n)[:, None]] = 0.0
    rows = np.repeat(np.arange(n), k)
    W = sp.coo_matrix((w.ravel(), (rows, indices.ravel())), shape=(n, n)).tocsr()
    W.eliminate_zeros()
    Wt = W.T.tocsr()
    union = (W + Wt - W.multiply(Wt)).tocsr()
    union.eliminate_zeros()
    return union
