"""scIB's label-conservation and batch-mixing scores, in numpy/scipy/scikit-learn.

Definitions follow scib-metrics (Luecken et al., Nature Methods 2022; scib-metrics 0.5), the
JAX library that ``tests/test_metrics.py`` checks these against on the same kNN graphs. Every
score is in [0, 1], higher is better.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import ArpackError, eigsh
from scipy.stats import chi2
from sklearn.metrics import silhouette_samples

from scvae.metrics._clustering import codes
from scvae.metrics._neighbors import Neighbors, nearest_neighbors

__all__ = [
    "clisi",
    "graph_connectivity",
    "ilisi",
    "kbet",
    "kbet_per_label",
    "lisi",
    "silhouette_batch",
    "silhouette_label",
]


# ------------------------------------------------------------------------------ silhouettes
def silhouette_label(X: np.ndarray, labels: Sequence | np.ndarray) -> float:
    """Cell-type average silhouette width, rescaled: ``(mean_i s_i + 1) / 2``.

    ``s_i = (b_i - a_i) / max(a_i, b_i)`` with ``a_i`` the mean Euclidean distance of cell ``i``
    to its own label, ``b_i`` to the nearest other label (0 for a label of one cell).

    Parameters
    ----------
    X
        (n_cells, n_dims) embedding.
    labels
        (n_cells,) cell types.

    Returns
    -------
    float
        In [0, 1]; 1 is perfectly separated labels. NaN (with a warning) for fewer than 2 or
        more than ``n_cells - 1`` labels.
    """
    y = codes(labels)
    n_labels = int(y.max() + 1) if y.size else 0
    if not 2 <= n_labels <= len(y) - 1:
        warnings.warn(
            f"silhouette_label needs 2 .. n_cells - 1 labels, got {n_labels}; returning NaN.",
            stacklevel=2,
        )
        return float("nan")
    return float((silhouette_samples(np.asarray(X, dtype=np.float64), y).mean() + 1) / 2)


def silhouette_batch(
    X: np.ndarray, labels: Sequence | np.ndarray, batches: Sequence | np.ndarray
) -> float:
    """scIB's batch silhouette: within each cell type, ``1 - |s_i|`` over batch labels.

    For every label with at least 2 batches (and fewer batches than cells), the silhouette
    ``s_i`` of each of its cells is computed with the batches as clusters; ``1 - |s_i|`` is
    averaged over the label's cells, then over labels.

    Parameters
    ----------
    X
        (n_cells, n_dims) embedding.
    labels
        (n_cells,) cell types.
    batches
        (n_cells,) batches.

    Returns
    -------
    float
        In [0, 1]; 1 is batches perfectly mixed within every cell type. NaN when no label
        spans two batches.
    """
    X = np.asarray(X, dtype=np.float64)
    y, b = codes(labels), codes(batches, name="batches")
    per_label = []
    for label in np.unique(y):
        mask = y == label
        b_sub = b[mask]
        n_b = np.unique(b_sub).size
        if n_b == 1 or n_b == b_sub.size:
            continue
        s = silhouette_samples(X[mask], b_sub)
        per_label.append(np.mean(1.0 - np.abs(s)))
    return float(np.mean(per_label)) if per_label else float("nan")


# ------------------------------------------------------------------------------------ LISI
def _simpson_index(
    neighbors: Neighbors, y: np.ndarray, n_labels: int, perplexity: float, tol: float = 1e-5
) -> np.ndarray:
    """Per-cell Simpson index ``sum_c (sum_{j in N(i), y_j = c} p_ij)^2``.

    ``p_ij proportional to exp(-beta_i d_ij)`` over the neighbours (self excluded), with
    ``beta_i`` found by bisection so that the entropy of ``p_i.`` is ``log(perplexity)``
    (Harmony's LISI; the same search as scib-metrics, all cells at once). A cell whose
    weights all vanish gets -1, as there.
    """
    d = neighbors.distances.astype(np.float64)  # (N, k)
    n = d.shape[0]
    not_self = neighbors.indices != np.arange(n)[:, None]  # (N, k)
    log_u = np.log(perplexity)

    def entropy(beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        P = np.where(not_self, np.exp(-d * beta[:, None]), 0.0)  # (N, k)
        total = P.sum(axis=1)  # (N,)
        safe = np.where(total == 0, 1.0, total)
        H = np.where(total == 0, 0.0, np.log(safe) + beta * (d * P).sum(axis=1) / safe)
        return H, P / safe[:, None]

    beta = np.ones(n)
    beta_min = np.full(n, -np.inf)
    beta_max = np.full(n, np.inf)
    H, P = entropy(beta)
    H_diff = H - log_u
    active = np.abs(H_diff) >= tol
    for _ in range(50):
        if not active.any():
            break
        up = H_diff > 0
        new_min = np.where(up, beta, beta_min)
        new_max = np.where(up, beta_max, beta)
        new_beta = np.where(
            up,
            np.where(np.isinf(beta_max), beta * 2, (beta + beta_max) / 2),
            np.where(np.isinf(beta_min), beta / 2, (beta + beta_min) / 2),
        )
        beta_min = np.where(active, new_min, beta_min)
        beta_max = np.where(active, new_max, beta_max)
        beta = np.where(active, new_beta, beta)
        H_new, P_new = entropy(beta)
        H = np.where(active, H_new, H)
        P = np.where(active[:, None], P_new, P)
        H_diff = H - log_u
        active &= np.abs(H_diff) >= tol
    neighbour_labels = y[neighbors.indices]  # (N, k)
    flat = (np.arange(n)[:, None] * n_labels + neighbour_labels).ravel()
    mass = np.bincount(flat, weights=P.ravel(), minlength=n * n_labels).reshape(n, n_labels)
    return np.where(H == 0, -1.0, (mass**2).sum(axis=1))


def lisi(
    neighbors: Neighbors, labels: Sequence | np.ndarray, *, perplexity: float | None = None
) -> np.ndarray:
    """Local inverse Simpson index of every cell (Korsunsky et al. 2019).

    The effective number of labels among a cell's neighbours, weighted by a Gaussian kernel
    calibrated to ``perplexity``: 1 when all neighbours share one label, up to the number of
    labels when they are evenly mixed.

    Parameters
    ----------
    neighbors
        kNN graph (scIB uses 90 neighbours).
    labels
        (n_cells,) batches (iLISI) or cell types (cLISI).
    perplexity
        Effective neighbourhood size; None: ``floor(n_neighbors / 3)``.

    Returns
    -------
    np.ndarray
        (n_cells,) LISI.
    """
    y = codes(labels)
    if y.shape[0] != neighbors.n_cells:
        raise ValueError(f"labels has {y.shape[0]} cells, the graph {neighbors.n_cells}.")
    if perplexity is None:
        perplexity = float(np.floor(neighbors.n_neighbors / 3))
    if perplexity <= 0:
        raise ValueError(f"perplexity must be positive, got {perplexity}; use more neighbors.")
    return 1.0 / _simpson_index(neighbors, y, int(y.max() + 1), perplexity)


def ilisi(
    neighbors: Neighbors, batches: Sequence | np.ndarray, *, perplexity: float | None = None
) -> float:
    """Integration LISI, scaled to [0, 1]: ``(median LISI - 1) / (n_batches - 1)``.

    1 is batches evenly mixed in every neighbourhood, 0 is no mixing. NaN for one batch.
    """
    b = codes(batches, name="batches")
    n_batches = np.unique(b).size
    if n_batches < 2:
        return float("nan")
    return float((np.nanmedian(lisi(neighbors, b, perplexity=perplexity)) - 1) / (n_batches - 1))


def clisi(
    neighbors: Neighbors, labels: Sequence | np.ndarray, *, perplexity: float | None = None
) -> float:
    """Cell-type LISI, scaled to [0, 1]: ``(n_labels - median LISI) / (n_labels - 1)``.

    1 is every neighbourhood of a single cell type, 0 is all types evenly mixed. NaN for one
    label.
    """
    y = codes(labels)
    n_labels = np.unique(y).size
    if n_labels < 2:
        return float("nan")
    return float(
        (n_labels - np.nanmedian(lisi(neighbors, y, perplexity=perplexity))) / (n_labels - 1)
    )


# ------------------------------------------------------------------------ graph connectivity
def graph_connectivity(
    neighbors: Neighbors,
    labels: Sequence | np.ndarray,
    *,
    connection: Literal["strong", "weak"] = "strong",
) -> float:
    """Mean over cell types of the share of a type's cells in its largest connected piece.

    For each label, the kNN graph restricted to its cells is split into connected components;
    the label's score is the size of the largest component over the number of its cells.

    Parameters
    ----------
    neighbors
        kNN graph (scIB uses 15 neighbours).
    labels
        (n_cells,) cell types.
    connection
        ``"strong"`` (default, scib-metrics): strongly connected components of the directed
        kNN graph, so a cell that is no other cell's neighbour is a piece of its own.
        ``"weak"``: components of the symmetrized graph, as the original scIB package (on
        scanpy's symmetric connectivities).

    Returns
    -------
    float
        In (0, 1]; 1 when every cell type forms one connected piece.
    """
    if connection not in ("strong", "weak"):
        raise ValueError(f"connection must be 'strong' or 'weak', got {connection!r}.")
    y = codes(labels)
    graph = neighbors.distance_graph()
    graph.data = np.ones_like(graph.data)  # every listed neighbour is an edge, even at d = 0
    scores = []
    for label in np.unique(y):
        mask = y == label
        _, component = connected_components(graph[mask][:, mask], connection=connection)
        scores.append(np.bincount(component).max() / mask.sum())
    return float(np.mean(scores))


# ------------------------------------------------------------------------------------ kBET
def kbet(
    neighbors: Neighbors, batches: Sequence | np.ndarray, *, alpha: float = 0.05
) -> tuple[float, np.ndarray, np.ndarray]:
    """kBET (Büttner et al. 2019): chi-square test of each neighbourhood's batch composition.

    For every cell, the batch counts among its ``k`` neighbours (itself included) are compared
    with ``k`` times the global batch frequencies by Pearson's chi-square test with
    ``n_batches - 1`` degrees of freedom; a cell is accepted when ``p >= alpha``.

    Parameters
    ----------
    neighbors
        kNN graph.
    batches
        (n_cells,) batches.
    alpha
        Significance level.

    Returns
    -------
    tuple
        ``(acceptance rate, chi-square statistics, p-values)``; the rate is in [0, 1], higher
        is better mixed.
    """
    b = codes(batches, name="batches")
    if b.shape[0] != neighbors.n_cells:
        raise ValueError(f"batches has {b.shape[0]} cells, the graph {neighbors.n_cells}.")
    b = np.unique(b, return_inverse=True)[1]
    n_batches = int(b.max() + 1)
    expected = np.bincount(b, minlength=n_batches) / b.size * neighbors.n_neighbors  # (B,)
    n = neighbors.n_cells
    flat = (np.arange(n)[:, None] * n_batches + b[neighbors.indices]).ravel()
    observed = np.bincount(flat, minlength=n * n_batches).reshape(n, n_batches)  # (N, B)
    statistic = (((observed - expected) ** 2) / expected).sum(axis=1)  # (N,)
    p_values = chi2.sf(statistic, df=max(n_batches - 1, 1))
    return float((p_values >= alpha).mean()), statistic, p_values


def _diffusion_neighbors(
    connectivities: sp.csr_matrix, *, n_neighbors: int, n_components: int, seed: int
) -> Neighbors:
    """Exact kNN in a multiscale diffusion map of a connectivity graph (scib-metrics' kBET).

    Density-normalized transitions ``T = Z^-1/2 Q^-1 W Q^-1 Z^-1/2`` (Coifman & Lafon, as
    scanpy), their ``n_components`` leading eigenpairs, eigenvectors scaled by
    ``lambda / (1 - lambda)`` (1 for ``lambda = 1``), Euclidean neighbours in that space.
    """
    W = sp.csr_matrix(connectivities, dtype=np.float64)
    q = np.asarray(W.sum(axis=0)).ravel()
    K = sp.diags(1.0 / q) @ W @ sp.diags(1.0 / q)
    z = np.sqrt(np.asarray(K.sum(axis=0)).ravel())
    T = sp.diags(1.0 / z) @ K @ sp.diags(1.0 / z)
    n = T.shape[0]
    k = min(n - 1, n_components)
    v0 = np.random.default_rng(seed).uniform(size=n)
    values, vectors = eigsh(T, k=k, which="LM", v0=v0)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    scale = np.ones_like(values)
    steps = ~np.isclose(values, 1.0, rtol=0.0, atol=1e-6)  # lambda = 1 is kept at scale 1
    scale[steps] = values[steps] / (1.0 - values[steps])
    return nearest_neighbors(vectors * scale, n_neighbors + 1)


def kbet_per_label(
    neighbors: Neighbors,
    batches: Sequence | np.ndarray,
    labels: Sequence | np.ndarray,
    *,
    alpha: float = 0.05,
    n_diffusion_components: int = 100,
    seed: int = 0,
) -> tuple[float, dict[str, float]]:
    """scIB's kBET: the kBET acceptance rate within each cell type, averaged over types.

    As scib-metrics' ``kbet_per_label``: each label's cells are taken out of the connectivity
    graph of ``neighbors``; the neighbourhood size is ``k0 = min(70, max(10, mean cells per
    batch / 4))``; neighbours are found in a diffusion map of the label's subgraph (so that
    every label and every method gets neighbourhoods of the same size); a label whose subgraph
    falls apart into pieces smaller than ``3 k0`` covering more than a quarter of its cells
    scores 0; a label with fewer than 10 cells or a single batch is skipped (NaN).

    Parameters
    ----------
    neighbors
        kNN graph (scIB uses 50 neighbours).
    batches, labels
        (n_cells,) batches and cell types.
    alpha
        Significance level of each cell's test.
    n_diffusion_components
        Diffusion-map dimensions.
    seed
        Seeds the eigensolver's start vector.

    Returns
    -------
    tuple
        ``(mean over labels, ignoring NaN; {label: score})``.
    """
    b, y = codes(batches, name="batches"), np.asarray(labels)
    label_codes = codes(y)
    names = np.asarray(y).astype(str)
    graph = neighbors.connectivities()
    scores: dict[str, float] = {}
    for label in np.unique(label_codes):
        mask = label_codes == label
        name = str(names[mask][0])
        sub = graph[mask][:, mask].tocsr()
        b_sub = b[mask]
        if mask.sum() < 10 or np.unique(b_sub).size == 1:
            scores[name] = float("nan")
            continue
        k0 = int(min(70, max(10, np.floor(np.bincount(b_sub)[np.unique(b_sub)].mean() / 4))))
        n_comp, component = connected_components(sub, connection="strong")
        keep = np.arange(mask.sum())
        if n_comp > 1:
            sizes = np.bincount(component)
            keep = np.flatnonzero(np.isin(component, np.flatnonzero(sizes >= 3 * k0)))
            if keep.size / mask.sum() < 0.75:
                scores[name] = 0.0
                continue
            sub = sub[keep][:, keep]
        if keep.size <= k0 + 1:
            scores[name] = 0.0
            continue
        try:
            diffusion = _diffusion_neighbors(
                sub,
                n_neighbors=k0,
                n_components=min(n_diffusion_components, keep.size - 1),
                seed=seed,
            )
        except (ValueError, ArithmeticError, ArpackError):
            scores[name] = 0.0  # as scib-metrics: a failed diffusion map counts as rejection
            continue
        scores[name] = kbet(diffusion, b_sub[keep], alpha=alpha)[0]
    values = np.array(list(scores.values()), dtype=np.float64)
    mean = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return mean, scores
