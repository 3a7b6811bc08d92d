"""Score an embedding scIB-style: ``scvae.tl.evaluate(adata, use_rep=..., label_key=...)``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from scvae import checks, metrics
from scvae.data import read_embedding, read_obs_column

__all__ = ["BATCH_CORRECTION", "BIO_CONSERVATION", "evaluate"]

#: metrics averaged into ``bio_conservation`` (scIB's, without isolated labels)
BIO_CONSERVATION = ("leiden_nmi", "leiden_ari", "silhouette_label", "clisi")
#: metrics averaged into ``batch_correction`` (scIB's, without PC regression)
BATCH_CORRECTION = ("silhouette_batch", "ilisi", "kbet", "graph_connectivity")

_GROUPS = {
    **dict.fromkeys(BIO_CONSERVATION, "bio conservation"),
    **dict.fromkeys(BATCH_CORRECTION, "batch correction"),
}


def _scib_backend() -> Any:
    try:
        import scib_metrics
        from scib_metrics.nearest_neighbors import NeighborsResults
    except ImportError as err:
        raise ImportError(
            'backend="scib-metrics" needs scib-metrics (and JAX): pip install "scvae[scib]". '
            'The default backend="scvae" computes the same scores without it.'
        ) from err
    return scib_metrics, NeighborsResults


def _integration_scores(
    X: np.ndarray,
    knn: metrics.Neighbors,
    labels: np.ndarray,
    batches: np.ndarray | None,
    *,
    n_neighbors: int,
    lisi_n_neighbors: int,
    kbet_n_neighbors: int,
    resolutions: Sequence[float],
    seed: int,
    backend: str,
) -> tuple[dict[str, float], dict[str, Any]]:
    """The scIB scores (NaN for the batch ones without batches) and extra details.

    ``knn`` holds the most neighbours needed; each score uses its first columns.
    """
    graph = knn.subset(min(n_neighbors, knn.n_neighbors))
    lisi_graph = knn.subset(min(lisi_n_neighbors, knn.n_neighbors))
    kbet_graph = knn.subset(min(kbet_n_neighbors, knn.n_neighbors))
    nan = float("nan")
    if backend == "scvae":
        leiden = metrics.leiden_nmi_ari(graph, labels, resolutions=resolutions, seed=seed)
        scores = {
            "leiden_nmi": leiden["nmi"],
            "leiden_ari": leiden["ari"],
            "silhouette_label": metrics.silhouette_label(X, labels),
            "clisi": metrics.clisi(lisi_graph, labels),
        }
        details = {
            "leiden_resolution": leiden["resolution"],
            "leiden_n_clusters": leiden["n_clusters"],
        }
        if batches is None:
            return scores | dict.fromkeys(BATCH_CORRECTION, nan), details
        kbet, per_label = metrics.kbet_per_label(kbet_graph, batches, labels, seed=seed)
        details["kbet_per_label"] = per_label
        return scores | {
            "silhouette_batch": metrics.silhouette_batch(X, labels, batches),
            "ilisi": metrics.ilisi(lisi_graph, batches),
            "kbet": kbet,
            "graph_connectivity": metrics.graph_connectivity(graph, labels),
        }, details
    scib, NeighborsResults = _scib_backend()

    def results(k: metrics.Neighbors) -> Any:
        return NeighborsResults(indices=k.indices, distances=k.distances)

    leiden = scib.nmi_ari_cluster_labels_leiden(results(graph), labels, seed=seed)
    scores = {
        "leiden_nmi": float(leiden["nmi"]),
        "leiden_ari": float(leiden["ari"]),
        "silhouette_label": float(scib.silhouette_label(X, labels)),
        "clisi": float(scib.clisi_knn(results(lisi_graph), labels)),
    }
    if batches is None:
        return scores | dict.fromkeys(BATCH_CORRECTION, nan), {}
    return scores | {
        "silhouette_batch": float(scib.silhouette_batch(X, labels, batches)),
        "ilisi": float(scib.ilisi_knn(results(lisi_graph), batches)),
        "kbet": float(scib.kbet_per_label(results(kbet_graph), batches, labels)),
        "graph_connectivity": float(scib.graph_connectivity(results(graph), labels)),
    }, {}


def evaluate(
    adata: AnnData,
    *,
    use_rep: str,
    label_key: str,
    batch_key: str | None = None,
    cluster_key: str | None = None,
    n_neighbors: int = 15,
    lisi_n_neighbors: int = 90,
    kbet_n_neighbors: int = 50,
    resolutions: Sequence[float] = metrics.DEFAULT_RESOLUTIONS,
    gmm: bool = True,
    gmm_n_components: int | None = None,
    model: Any = None,
    heldout: AnnData | None = None,
    n_samples: int = 100,
    backend: Literal["scvae", "scib-metrics"] = "scvae",
    seed: int | None = 0,
) -> pd.DataFrame:
    """Score how an embedding keeps cell types apart and mixes batches, scIB style.

    Reads ``adata.obsm[use_rep]`` and ``adata.obs`` and writes nothing: neighbours are computed
    here (exact Euclidean kNN), not taken from or stored in ``adata``.

    Rows (``metric``, ``group``), every score in [0, 1] with higher better:

    * bio conservation: ``leiden_nmi``, ``leiden_ari`` (Leiden on the ``n_neighbors`` graph,
      the resolution of ``resolutions`` with the best NMI, as scIB), ``silhouette_label``
      (``(ASW + 1) / 2``), ``clisi`` (scaled, ``lisi_n_neighbors`` graph);
    * batch correction: ``silhouette_batch`` (within each cell type, ``1 - |ASW|`` over
      batches), ``ilisi`` (scaled), ``kbet`` (kBET acceptance rate per cell type on the
      ``kbet_n_neighbors`` graph, averaged), ``graph_connectivity`` (``n_neighbors`` graph);
    * clustering: ``gmm_nmi``, ``gmm_ari`` (:class:`scvae.GMM`, full covariances, ``K`` =
      number of labels unless ``gmm_n_components``) and ``obs_<cluster_key>_nmi``/``_ari``
      (the given clusters);
    * likelihood: ``heldout_log_px``, the mean per-cell held-out log-likelihood of ``model``
      on ``heldout`` (nats; IWAE with ``n_samples`` draws for VAEs, exact for PPCA/GMM; see
      :func:`scvae.metrics.heldout_log_likelihood`);
    * aggregate: ``bio_conservation`` and ``batch_correction`` (means of the scores of each
      group, ignoring NaN) and ``total = 0.6 * bio_conservation + 0.4 * batch_correction``,
      scIB's weighting.

    Without ``batch_key``, or with a single batch (with a warning), the batch-correction rows,
    ``batch_correction`` and ``total`` are NaN. A cell type in one batch only, or with fewer
    than 10 cells, is left out of ``kbet`` and ``silhouette_batch``.

    Parameters
    ----------
    adata
        Cells with an embedding in ``obsm`` and labels (and batches) in ``obs``.
    use_rep
        Key of the embedding in ``adata.obsm`` (e.g. ``"X_zinbvae"``, ``"X_pca"``).
    label_key
        ``obs`` column of cell types.
    batch_key
        ``obs`` column of batches; None scores label conservation only.
    cluster_key
        ``obs`` column of existing clusters (e.g. ``"leiden"``) to score against the labels.
    n_neighbors, lisi_n_neighbors, kbet_n_neighbors
        kNN sizes (self included) of the Leiden / graph-connectivity, LISI and kBET graphs:
        scib-metrics' 15, 90 and 50.
    resolutions
        Leiden resolutions of the sweep (scib-metrics': 0.2, 0.4, ..., 2.0).
    gmm
        Add the GMM clustering rows.
    gmm_n_components
        ``K`` of the GMM; None: the number of labels.
    model, heldout
        A fitted scvae model and AnnData of held-out cells: adds ``heldout_log_px``. Give both
        or neither.
    n_samples
        Importance samples of the IWAE estimate (VAEs).
    backend
        ``"scvae"`` (numpy/scipy/scikit-learn/igraph) or ``"scib-metrics"`` (the scIB scores
        by scib-metrics on the same kNN graphs; needs ``pip install "scvae[scib]"``). With
        scib-metrics, the Leiden sweep is its own (0.2, ..., 2.0; ``resolutions`` is
        ignored) and kBET's diffusion-map neighbours are approximate (pynndescent), so
        ``kbet`` can differ slightly; ``attrs`` hold only the seed.
    seed
        Seeds Leiden, the GMM, kBET's eigensolver and the IWAE draws; None draws one (in
        ``attrs["seed"]``).

    Returns
    -------
    pandas.DataFrame
        Columns ``embedding``, ``group``, ``metric``, ``value``; one row per metric. ``attrs``
        hold the seed, the chosen Leiden resolution and the per-label kBET scores (scvae
        backend).

    Raises
    ------
    KeyError
        ``use_rep``, ``label_key``, ``batch_key`` or ``cluster_key`` not in ``adata``; the
        message lists the available keys.
    ValueError
        NaN/inf in the embedding, missing labels, fewer than 3 cells, or only one of
        ``model``/``heldout``.

    Examples
    --------
    >>> scores = scvae.tl.evaluate(adata, use_rep="X_zinbvae", label_key="cell_type",
    ...                            batch_key="batch")
    >>> scores.set_index("metric")["value"]
    """
    if not isinstance(adata, AnnData):
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
    checks.choice("backend", backend, ("scvae", "scib-metrics"))
    if (model is None) != (heldout is None):
        raise ValueError(
            "Pass both model= (a fitted scvae model) and heldout= (AnnData of held-out cells) "
            "to add the held-out log-likelihood, or neither."
        )
    # the neighbour counts include the cell itself
    n_neighbors = checks.positive_int("n_neighbors", n_neighbors, minimum=2)
    lisi_n_neighbors = checks.positive_int("lisi_n_neighbors", lisi_n_neighbors, minimum=2)
    kbet_n_neighbors = checks.positive_int("kbet_n_neighbors", kbet_n_neighbors, minimum=2)
    n_samples = checks.positive_int("n_samples", n_samples)
    gmm = checks.boolean("gmm", gmm)
    gmm_n_components = checks.optional_positive_int("gmm_n_components", gmm_n_components)
    resolutions = [
        checks.fraction(f"resolutions[{i}]", r, low=0.0, high=np.inf, include_low=False)
        for i, r in enumerate(resolutions)
    ]
    seed = checks.resolve_seed(seed)
    X = read_embedding(adata, use_rep)  # (N, D) float64, finite
    labels = read_obs_column(adata, label_key, what="label_key")
    batches = None if batch_key is None else read_obs_column(adata, batch_key, what="batch_key")
    clusters = (
        None if cluster_key is None else read_obs_column(adata, cluster_key, what="cluster_key")
    )
    if X.shape[0] < 3:
        raise ValueError(f"Need at least 3 cells to evaluate an embedding, got {X.shape[0]}.")
    if batches is not None and np.unique(batches).size < 2:
        warnings.warn(
            f"adata.obs[{batch_key!r}] has a single batch ({batches[0]!r}); the batch-correction "
            "scores, batch_correction and total are NaN. Pass batch_key=None to score label "
            "conservation only.",
            UserWarning,
            stacklevel=2,
        )
        batches = None
    k_max = max(n_neighbors, lisi_n_neighbors, kbet_n_neighbors if batches is not None else 2)
    knn = metrics.nearest_neighbors(X, min(k_max, X.shape[0]))
    scores, details = _integration_scores(
        X,
        knn,
        labels,
        batches,
        n_neighbors=n_neighbors,
        lisi_n_neighbors=lisi_n_neighbors,
        kbet_n_neighbors=kbet_n_neighbors,
        resolutions=resolutions,
        seed=seed,
        backend=backend,
    )
    rows = [(_GROUPS[name], name, value) for name, value in scores.items()]
    if gmm:
        found = metrics.gmm_nmi_ari(X, labels, n_components=gmm_n_components, seed=seed)
        rows += [("clustering", "gmm_nmi", found["nmi"]), ("clustering", "gmm_ari", found["ari"])]
    if clusters is not None:
        given = metrics.nmi_ari(labels, clusters)
        rows += [
            ("clustering", f"obs_{cluster_key}_nmi", given["nmi"]),
            ("clustering", f"obs_{cluster_key}_ari", given["ari"]),
        ]
    if model is not None:
        value = metrics.heldout_log_likelihood(model, heldout, n_samples=n_samples, seed=seed)
        rows.append(("likelihood", "heldout_log_px", value))
    bio = _nanmean([scores[m] for m in BIO_CONSERVATION])
    batch = _nanmean([scores[m] for m in BATCH_CORRECTION])
    rows += [
        ("aggregate", "bio_conservation", bio),
        ("aggregate", "batch_correction", batch),
        ("aggregate", "total", 0.6 * bio + 0.4 * batch),
    ]
    table = pd.DataFrame(rows, columns=["group", "metric", "value"])
    table.insert(0, "embedding", use_rep)
    table["value"] = table["value"].astype(np.float64)
    table.attrs.update({"seed": seed, **details})
    return table


def _nanmean(values: list[float]) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
