"""Scanpy-style probabilistic PCA: ``scvae.tl.ppca(adata, ...)``."""

from __future__ import annotations

from anndata import AnnData

from scvae.models import PPCA

__all__ = ["ppca"]


def ppca(
    adata: AnnData,
    *,
    layer: str | None = None,
    n_latent: int = 10,
    log_normalize: bool = True,
    ddof: int = 0,
    seed: int = 0,
    accelerator: str = "auto",
    key_added: str | None = None,
    copy: bool = False,
    return_model: bool = False,
) -> AnnData | PPCA | tuple[AnnData, PPCA] | None:
    """Fit probabilistic PCA in closed form and write its embedding, scanpy style.

    Writes ``adata.obsm["X_<key_added>"]`` (posterior means ``E[z | x]``, n_cells x n_latent)
    and ``adata.uns[<key_added>]["params"]`` (options, ``sigma2``, explained variance ratios);
    nothing else, and nothing at all if an error is raised.

    Parameters
    ----------
    adata
        Cells x genes AnnData.
    layer, n_latent, log_normalize, ddof
        As in :class:`scvae.PPCA`.
    seed, accelerator
        As in :meth:`scvae.PPCA.fit`.
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
    if adata.is_view and not copy:
        raise ValueError("adata is a view; pass adata.copy() or use copy=True.")
    model = PPCA(adata, layer=layer, n_latent=n_latent, log_normalize=log_normalize, ddof=ddof)
    model.fit(seed=seed, accelerator=accelerator)
    target = adata.copy() if copy else adata
    model.write_latent(target, key_added=key_added)
    if copy:
        return (target, model) if return_model else target
    return model if return_model else None
