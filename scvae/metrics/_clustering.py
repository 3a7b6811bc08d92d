"""Agreement of clusters with labels: NMI and ARI of Leiden (resolution sweep) and GMM clusters."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from scvae.metrics._neighbors import Neighbors

__all__ = [
    "DEFAULT_RESOLUTIONS",
    "gmm_clusters",
    "gmm_nmi_ari",
    "leiden",
    "leiden_nmi_ari",
    "nmi_ari",
]

#: scib-metrics' sweep: 0.2, 0.4, ..., 2.0 (scIB's original sweeps 0.1 .. 2.0 by 0.1).
DEFAULT_RESOLUTIONS: tuple[float, ...] = tuple(round(0.2 * i, 1) for i in range(1, 11))


def codes(values: Sequence | np.ndarray | pd.Series, *, name: str = "labels") -> np.ndarray:
    """Integer codes ``0 .. n_categories - 1`` of a label vector; refuses missing labels."""
    values = pd.Series(np.asarray(values))
    if values.isna().any():
        raise ValueError(
            f"{name} has {int(values.isna().sum())} missing values (NaN/None); every cell needs "
            "a label. Drop those cells first, or fill them with an explicit category."
        )
    return pd.Categorical(values.astype(str)).codes.astype(np.int64)


def nmi_ari(labels: Sequence | np.ndarray, clusters: Sequence | np.ndarray) -> dict[str, float]:
    """NMI (arithmetic normalization, as scIB) and ARI of ``clusters`` against ``labels``.

    Parameters
    ----------
    labels, clusters
        (n_cells,) label vectors of any type.

    Returns
    -------
    dict
        ``{"nmi": ..., "ari": ...}``; both 1 for identical partitions.
    """
    truth, pred = codes(labels), codes(clusters, name="clusters")
    if truth.shape != pred.shape:
        raise ValueError(f"labels {truth.shape} and clusters {pred.shape} differ in length.")
    return {
        "nmi": float(normalized_mutual_info_score(truth, pred, average_method="arithmetic")),
        "ari": float(adjusted_rand_score(truth, pred)),
    }


@contextmanager
def _igraph_seed(seed: int) -> Iterator[None]:
    """Seed igraph's global random generator; put Python's default back afterwards."""
    import igraph

    igraph.set_random_number_generator(random.Random(seed))
    try:
        yield
    finally:
        igraph.set_random_number_generator(random)


def leiden(
    connectivities: sp.spmatrix, *, resolution: float = 1.0, seed: int = 0, n_iterations: int = 2
) -> np.ndarray:
    """Leiden clusters (modularity, igraph) of a weighted cell graph.

    Builds the graph as scanpy's ``sc.tl.leiden(flavor="igraph", directed=False)`` and
    scib-metrics do (every stored entry ``(i, j)`` an undirected edge, so a symmetric matrix
    gives each pair twice), then ``community_leiden(objective_function="modularity")``.

    Parameters
    ----------
    connectivities
        (n_cells, n_cells) weights, e.g. :meth:`Neighbors.connectivities`.
    resolution
        Modularity resolution: higher gives more, smaller clusters.
    seed
        Seeds igraph's random generator (restored afterwards).
    n_iterations
        Leiden iterations (scanpy's igraph default 2; negative: until stable).

    Returns
    -------
    np.ndarray
        (n_cells,) int cluster labels.
    """
    import igraph

    graph = sp.csr_matrix(connectivities)
    g = igraph.Graph.Weighted_Adjacency(graph, mode="directed")
    g.to_undirected(mode="each")
    with _igraph_seed(seed):
        partition = g.community_leiden(
            objective_function="modularity",
            weights="weight",
            resolution=resolution,
            n_iterations=n_iterations,
        )
    return np.asarray(partition.membership, dtype=np.int64)


def leiden_nmi_ari(
    neighbors: Neighbors,
    labels: Sequence | np.ndarray,
    *,
    resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
    seed: int = 0,
) -> dict[str, float]:
    """NMI and ARI of Leiden clusters, at the resolution with the best NMI (scIB's sweep).

    Parameters
    ----------
    neighbors
        kNN graph (scIB uses 15 neighbours); its UMAP connectivities are clustered.
    labels
        (n_cells,) cell types.
    resolutions
        Resolutions tried; the one with the highest NMI is kept (ties: the first).
    seed
        Seed of every Leiden run.

    Returns
    -------
    dict
        ``{"nmi", "ari", "resolution", "n_clusters"}`` at the chosen resolution.
    """
    if len(resolutions) == 0:
        raise ValueError("resolutions is empty; pass at least one, e.g. (1.0,).")
    truth = codes(labels)
    graph = neighbors.connectivities()
    best: dict[str, float] | None = None
    for r in resolutions:
        clusters = leiden(graph, resolution=float(r), seed=seed)
        scores = nmi_ari(truth, clusters)
        if best is None or scores["nmi"] > best["nmi"]:
            best = {**scores, "resolution": float(r), "n_clusters": int(clusters.max() + 1)}
    return best


def gmm_clusters(X: np.ndarray, *, n_components: int, seed: int = 0) -> np.ndarray:
    """Hard assignments of :class:`scvae.GMM` (full covariances, EM) fitted on ``X``.

    Parameters
    ----------
    X
        (n_cells, n_dims) embedding.
    n_components
        Number of mixture components ``K``.
    seed
        Seed of the k-means++ initialisation.

    Returns
    -------
    np.ndarray
        (n_cells,) int component of highest responsibility.
    """
    from anndata import AnnData

    from scvae.models import GMM

    holder = AnnData(obs=pd.DataFrame(index=[str(i) for i in range(len(X))]))
    holder.obsm["X"] = np.asarray(X, dtype=np.float64)
    model = GMM(holder, use_rep="X", n_components=int(n_components), covariance_type="full")
    return model.fit(seed=seed).predict()


def gmm_nmi_ari(
    X: np.ndarray,
    labels: Sequence | np.ndarray,
    *,
    n_components: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """NMI and ARI of :class:`scvae.GMM` clusters of ``X`` against ``labels``.

    Parameters
    ----------
    X
        (n_cells, n_dims) embedding.
    labels
        (n_cells,) cell types.
    n_components
        ``K``; None: the number of distinct labels.
    seed
        Seed of the GMM.

    Returns
    -------
    dict
        ``{"nmi", "ari", "n_clusters"}``.
    """
    truth = codes(labels)
    k = int(truth.max() + 1) if n_components is None else int(n_components)
    clusters = gmm_clusters(X, n_components=k, seed=seed)
    return {**nmi_ari(truth, clusters), "n_clusters": k}
