"""One-line, scanpy-style training of the count VAEs: ``scvae.tl.zinbvae(adata, ...)``."""

from __future__ import annotations

from anndata import AnnData

from scvae.models import NBVAE, ZINBVAE, GaussianVAE, PoissonVAE
from scvae.models._vae import VAEModel

__all__ = ["gaussianvae", "nbvae", "poissonvae", "zinbvae"]


def _fit_and_write(
    model_class: type[VAEModel],
    adata: AnnData,
    *,
    key_added: str | None,
    copy: bool,
    return_model: bool,
    model_kwargs: dict,
    fit_kwargs: dict,
) -> AnnData | VAEModel | tuple[AnnData, VAEModel] | None:
    if adata.is_view and not copy:
        raise ValueError(
            "adata is a view; results cannot be written into it. Pass adata.copy() or use "
            "copy=True."
        )
    model = model_class(adata, **model_kwargs)
    model.fit(**fit_kwargs)
    target = adata.copy() if copy else adata
    model.write_latent(target, key_added=key_added)
    if copy:
        return (target, model) if return_model else target
    return model if return_model else None


_DOC = """Fit {cls} on ``adata`` and write its embedding, scanpy style.

    Trains :class:`scvae.{cls}` (see its documentation for the model) and writes

    * ``adata.obsm["X_<key_added>"]``: posterior mean of ``q(z | x, s)``, (n_cells, n_latent);
    * ``adata.uns[<key_added>]["params"]``: model and fit options.

    Nothing else is written, and nothing at all if an error is raised.

    Parameters
    ----------
    adata
        Cells x genes AnnData with raw counts in ``adata.X`` or ``layer``.
    layer, batch_key, n_latent, n_hidden, n_layers, dropout_rate, dispersion, library
        Model options, as in :class:`scvae.{cls}`.
    max_epochs, batch_size, lr, early_stopping, seed, accelerator, devices, progress_bar
        Fit options, as in :meth:`scvae.{cls}.fit`.
    key_added
        Key of the results (default ``"{key}"``).
    copy
        Work on a copy of ``adata`` and return it.
    return_model
        Also return the fitted model.

    Returns
    -------
    None, or the AnnData copy (``copy=True``), or the model (``return_model=True``), or both as
    ``(adata, model)``.
    """


def _make_tool(model_class: type[VAEModel]):
    def tool(
        adata: AnnData,
        *,
        layer: str | None = None,
        batch_key: str | None = None,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        dispersion: str = "gene",
        library: str = "latent",
        max_epochs: int | None = None,
        batch_size: int = 128,
        lr: float = 1e-3,
        early_stopping: bool = True,
        seed: int = 0,
        accelerator: str = "auto",
        devices: int | str = "auto",
        progress_bar: bool = True,
        key_added: str | None = None,
        copy: bool = False,
        return_model: bool = False,
    ):
        return _fit_and_write(
            model_class,
            adata,
            key_added=key_added,
            copy=copy,
            return_model=return_model,
            model_kwargs={
                "layer": layer,
                "batch_key": batch_key,
                "n_latent": n_latent,
                "n_hidden": n_hidden,
                "n_layers": n_layers,
                "dropout_rate": dropout_rate,
                "dispersion": dispersion,
                "library": library,
            },
            fit_kwargs={
                "max_epochs": max_epochs,
                "batch_size": batch_size,
                "lr": lr,
                "early_stopping": early_stopping,
                "seed": seed,
                "accelerator": accelerator,
                "devices": devices,
                "progress_bar": progress_bar,
            },
        )

    tool.__name__ = tool.__qualname__ = model_class.default_key
    tool.__doc__ = _DOC.format(cls=model_class.__name__, key=model_class.default_key)
    return tool


zinbvae = _make_tool(ZINBVAE)
nbvae = _make_tool(NBVAE)
poissonvae = _make_tool(PoissonVAE)


def gaussianvae(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    log_normalize: bool = True,
    n_latent: int = 10,
    n_hidden: int = 128,
    n_layers: int = 1,
    dropout_rate: float = 0.1,
    max_epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    early_stopping: bool = True,
    seed: int = 0,
    accelerator: str = "auto",
    devices: int | str = "auto",
    progress_bar: bool = True,
    key_added: str | None = None,
    copy: bool = False,
    return_model: bool = False,
):
    return _fit_and_write(
        GaussianVAE,
        adata,
        key_added=key_added,
        copy=copy,
        return_model=return_model,
        model_kwargs={
            "layer": layer,
            "batch_key": batch_key,
            "log_normalize": log_normalize,
            "n_latent": n_latent,
            "n_hidden": n_hidden,
            "n_layers": n_layers,
            "dropout_rate": dropout_rate,
        },
        fit_kwargs={
            "max_epochs": max_epochs,
            "batch_size": batch_size,
            "lr": lr,
            "early_stopping": early_stopping,
            "seed": seed,
            "accelerator": accelerator,
            "devices": devices,
            "progress_bar": progress_bar,
        },
    )


gaussianvae.__doc__ = _DOC.format(cls="GaussianVAE", key="gaussianvae").replace(
    "dispersion, library", "log_normalize"
)
