"""Scanpy-style factor analysis: ``scvae.tl.factor_analysis(adata, ...)``."""

from __future__ import annotations

from typing import Literal

from anndata import AnnData

from scvae import checks
from scvae.data import check_writable, latent_slots
from scvae.models._fa import FactorAnalysis
from scvae.module.fa import DEFAULT_PSI_FLOOR

__all__ = ["factor_analysis"]


def factor_analysis(
    adata: AnnData,
    *,
    layer: str | None = None,
    n_latent: int = 10,
    log_normalize: bool = True,
    psi_floor: float = DEFAULT_PSI_FLOOR,
    max_iter: int = 1000,
    tol: float = 1e-4,
    seed: int | None = 0,
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto",
    key_added: str | None = None,
    copy: bool = False,
    return_model: bool = False,
) -> AnnData | FactorAnalysis | tuple[AnnData, FactorAnalysis] | None:
    """Fit factor analysis by EM and write its embedding and loadings, scanpy style.

    Writes ``adata.obsm["X_<key_added>"]`` (posterior means ``E[z | x]``, n_cells x n_latent),
    the loadings ``adata.varm["FA_loadings"]`` (``varm["<key_added>_loadings"]`` with a
    ``key_added``; n_genes x n_latent) and ``adata.uns[<key_added>]["params"]`` (options, seed,
    EM iterations, noise variances); nothing else, and nothing at all if an error is raised.
    A ``key_added`` that starts with ``"X_"`` names the ``obsm`` key itself.

    Parameters
    ----------
    adata
        Cells x genes AnnData.
    layer, n_latent, log_normalize, psi_floor, max_iter, tol
        As in :class:`scvae.FactorAnalysis`.
    seed, accelerator
        As in :meth:`scvae.FactorAnalysis.fit` (``seed=None`` draws one and records it).
    key_added
        Key of the results (default ``"fa"``).
    copy
        Work on a copy of ``adata`` and return it.
    return_model
        Also return the fitted model.

    Returns
    -------
    None, the AnnData copy (``copy=True``), the model (``return_model=True``), or both.
    """
    copy = checks.boolean("copy", copy)
    return_model = checks.boolean("return_model", return_model)
    if not isinstance(adata, AnnData):
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
    if not copy:
        check_writable(adata, copy_option=True)
    latent_slots(key_added, FactorAnalysis.default_key)  # refuse a bad key before fitting
    model = FactorAnalysis(
        adata,
        layer=layer,
        n_latent=n_latent,
        log_normalize=log_normalize,
        psi_floor=psi_floor,
        max_iter=max_iter,
        tol=tol,
    )
    model.fit(seed=seed, accelerator=accelerator)
    target = adata.copy() if copy else adata
    model.write_latent(target, key_added=key_added)
    if copy:
        return (target, model) if return_model else target
    return model if return_model else None
