"""Scanpy-style probabilistic PCA: ``scvae.tl.ppca(adata, ...)``."""

from __future__ import annotations

from typing import Literal

from anndata import AnnData

from scvae import checks
from scvae.data import check_writable, latent_slots
from scvae.models._ppca import PPCA

__all__ = ["ppca"]


def ppca(
    adata: AnnData,
    *,
    layer: str | None = None,
    n_latent: int = 10,
    log_normalize: bool = True,
    ddof: Literal[0, 1] = 0,
    seed: int | None = 0,
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto",
    key_added: str | None = None,
    copy: bool = False,
    return_model: bool = False,
) -> AnnData | PPCA | tuple[AnnData, PPCA] | None:
    """Fit probabilistic PCA in closed form and write its embedding, scanpy style.

    Writes ``adata.obsm["X_<key_added>"]`` (posterior means ``E[z | x]``, n_cells x n_latent)
    and ``adata.uns[<key_added>]["params"]`` (options, seed, ``sigma2``, explained variance
    ratios); nothing else, and nothing at all if an error is raised. A ``key_added`` that
    starts with ``"X_"`` names the ``obsm`` key itself (``"X_pc"``: ``obsm["X_pc"]``,
    ``uns["pc"]``).

    Parameters
    ----------
    adata
        Cells x genes AnnData.
    layer, n_latent, log_normalize, ddof
        As in :class:`scvae.PPCA`.
    seed, accelerator
        As in :meth:`scvae.PPCA.fit` (``seed=None`` draws one and records it).
    key_added
        Key of the results (default ``"ppca"``).
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
    latent_slots(key_added, PPCA.default_key)  # refuse a bad key before fitting
    model = PPCA(adata, layer=layer, n_latent=n_latent, log_normalize=log_normalize, ddof=ddof)
    model.fit(seed=seed, accelerator=accelerator)
    target = adata.copy() if copy else adata
    model.write_latent(target, key_added=key_added)
    if copy:
        return (target, model) if return_model else target
    return model if return_model else None
