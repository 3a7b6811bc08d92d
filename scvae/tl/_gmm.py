"""Scanpy-style Gaussian-mixture clustering of an embedding: ``scvae.tl.gmm(adata, ...)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from anndata import AnnData

from scvae import checks
from scvae.data import check_writable, cluster_slots
from scvae.models._gmm import GMM

__all__ = ["gmm"]


def gmm(
    adata: AnnData,
    *,
    use_rep: str = "X_zinbvae",
    n_components: int | Sequence[int] | None = None,
    covariance_type: Literal["full", "diag"] = "full",
    key_added: str = "gmm",
    seed: int | None = 0,
    n_init: int = 1,
    max_iter: int = 200,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    copy: bool = False,
    return_model: bool = False,
) -> AnnData | GMM | tuple[AnnData, GMM] | None:
    """Cluster cells with a Gaussian mixture fitted by EM on an embedding.

    Fits :func:`scvae.module.gmm.fit_gmm` (float64, k-means initialisation) on
    ``adata.obsm[use_rep]``. Components are relabelled by decreasing size: label ``"0"`` is
    the component with the most cells under the hard (maximum-probability) assignment, ties
    broken by the original component index; all parameters and probability columns follow
    the same order.

    Writes exactly these slots (overwriting existing ones of the same name):

    * ``adata.obs[key_added]``: hard assignment, a pandas Categorical of the string labels
      ``"0", "1", ..., str(K - 1)`` (all ``K`` categories, even ones that no cell is
      assigned to, so that they match the probability columns);
    * ``adata.obsm[key_added + "_proba"]``: ``(n_cells, K)`` float64 responsibilities
      ``p(component | cell)``, column ``k`` for label ``str(k)``; rows sum to one;
    * ``adata.uns[key_added]``: a dict with

      - ``"params"``: the options of this call (``use_rep``, ``n_components`` as given,
        ``covariance_type``, ``seed``, ``n_init``, ``max_iter``, ``tol``, ``reg_covar``);
      - ``"weights"`` ``(K,)``, ``"means"`` ``(K, n_dims)`` and ``"covariances"``
        (``(K, n_dims, n_dims)`` for ``"full"``, ``(K, n_dims)`` for ``"diag"``), numpy;
      - ``"bic"``: ``{"n_components": [...], "bic": [...]}``, the whole BIC curve, only when
        ``K`` was chosen by BIC (``n_components`` None or a sequence);
      - ``"log_likelihood"``: the fitted model's mean log-likelihood per cell (float).

    Nothing else is written, and nothing at all if an error is raised.

    Parameters
    ----------
    adata
        Annotated data with an embedding in ``adata.obsm[use_rep]``.
    use_rep
        Key of the embedding in ``adata.obsm`` (default ``"X_zinbvae"``, written by
        ``model.write_latent``; ``"X_pca"`` after ``sc.pp.pca``).
    n_components
        Number of clusters ``K``; ``None`` (default) chooses ``K`` by BIC over
        ``2 .. min(20, n_cells - 1)``; a sequence of ints chooses by BIC among them.
    covariance_type
        ``"full"`` or ``"diag"`` covariance per component.
    key_added
        Name of the slots written (see above).
    seed
        Seed of the k-means++ initialisation; None draws one (recorded in
        ``uns[key_added]["params"]["seed"]``).
    n_init
        Number of initialisations per ``K``; the best log-likelihood is kept.
    max_iter
        Maximum number of EM iterations.
    tol
        Convergence threshold on the change of the mean log-likelihood per cell.
    reg_covar
        Added to the diagonal of every covariance (keeps them positive definite).
    copy
        Return a modified copy instead of writing into ``adata``.
    return_model
        Also return the fitted :class:`scvae.GMM`.

    Returns
    -------
    None (``adata`` is updated in place), the modified copy (``copy=True``), the model
    (``return_model=True``), or both as ``(adata, model)``.

    Raises
    ------
    KeyError
        If ``use_rep`` is not in ``adata.obsm``.
    ValueError
        If ``adata`` is a view and ``copy=False``, if the embedding has NaN/inf values, fewer
        than 2 cells, or ``n_components`` exceeds the number of cells, or if EM fails (a
        covariance that is not positive definite: increase ``reg_covar``).

    Examples
    --------
    >>> model.write_latent(adata)  # adata.obsm["X_zinbvae"]
    >>> scvae.tl.gmm(adata, n_components=8)
    >>> sc.pl.umap(adata, color="gmm")
    """
    copy = checks.boolean("copy", copy)
    return_model = checks.boolean("return_model", return_model)
    if not isinstance(adata, AnnData):
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
    if not copy:
        check_writable(adata, copy_option=True)
    cluster_slots(key_added)  # refuse a bad key before fitting
    seed = checks.resolve_seed(seed)
    model = GMM(
        adata,
        use_rep=use_rep,
        n_components=n_components,
        covariance_type=covariance_type,
        n_init=n_init,
        max_iter=max_iter,
        tol=tol,
        reg_covar=reg_covar,
    ).fit(seed=seed)
    target = adata.copy() if copy else adata
    model.write_latent(target, key_added=key_added)
    if copy:
        return (target, model) if return_model else target
    return model if return_model else None
