"""Evaluation scores as pure functions on arrays: clustering, integration, held-out likelihood.

Label conservation ("bio conservation" in scIB, Luecken et al. 2022): NMI/ARI of Leiden
clusters at the best resolution (:func:`leiden_nmi_ari`) and of :class:`scvae.GMM` clusters
(:func:`gmm_nmi_ari`), cell-type silhouette (:func:`silhouette_label`), cLISI (:func:`clisi`).
Batch mixing: batch silhouette (:func:`silhouette_batch`), iLISI (:func:`ilisi`), kBET
(:func:`kbet`, :func:`kbet_per_label`), graph connectivity (:func:`graph_connectivity`).
Model fit: :func:`heldout_log_likelihood`.

The scIB scores follow scib-metrics (a JAX library; ``pip install "scvae[scib]"``) and agree
with it on the same kNN graph (``tests/test_metrics.py``), without needing JAX. Graph-based
scores take a :class:`Neighbors` from :func:`nearest_neighbors`. :func:`scvae.tl.evaluate`
computes them all for an embedding in an AnnData and returns a tidy table.

>>> knn = scvae.metrics.nearest_neighbors(adata.obsm["X_zinbvae"], n_neighbors=90)
>>> scvae.metrics.ilisi(knn, adata.obs["batch"])
>>> scvae.metrics.leiden_nmi_ari(knn.subset(15), adata.obs["cell_type"])
"""

from scvae.metrics._clustering import (
    DEFAULT_RESOLUTIONS,
    gmm_clusters,
    gmm_nmi_ari,
    leiden,
    leiden_nmi_ari,
    nmi_ari,
)
from scvae.metrics._integration import (
    clisi,
    graph_connectivity,
    ilisi,
    kbet,
    kbet_per_label,
    lisi,
    silhouette_batch,
    silhouette_label,
)
from scvae.metrics._likelihood import heldout_log_likelihood
from scvae.metrics._neighbors import Neighbors, fuzzy_connectivities, nearest_neighbors

__all__ = [
    "DEFAULT_RESOLUTIONS",
    "Neighbors",
    "clisi",
    "fuzzy_connectivities",
    "gmm_clusters",
    "gmm_nmi_ari",
    "graph_connectivity",
    "heldout_log_likelihood",
    "ilisi",
    "kbet",
    "kbet_per_label",
    "leiden",
    "leiden_nmi_ari",
    "lisi",
    "nearest_neighbors",
    "nmi_ari",
    "silhouette_batch",
    "silhouette_label",
]
