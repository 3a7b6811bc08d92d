"""One-line, scanpy-style training of the VAEs: ``scvae.tl.zinbvae(adata, ...)``.

Every option of the model's constructor and of its ``fit`` is a keyword of the one-liner, with
the same name and default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from anndata import AnnData

from scvae.data import check_writable, latent_slots
from scvae.models import NBVAE, ZINBVAE, GaussianVAE, PoissonVAE

if TYPE_CHECKING:
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
    if not copy:
        check_writable(adata, copy_option=True)
    latent_slots(key_added, model_class.default_key)  # a bad key fails before training
    model = model_class(adata, **model_kwargs)
    model.fit(**fit_kwargs)
    target = adata.copy() if copy else adata
    model.write_latent(target, key_added=key_added)
    if copy:
        return (target, model) if return_model else target
    return model if return_model else None


_FIT_DOC = """max_epochs
        Passes over the training cells; None picks ``min(400, 400 * 20000 / n_cells)``.
    batch_size
        Cells per minibatch.
    lr, weight_decay
        Adam learning rate and weight decay.
    train_size
        Fraction of cells used for training; the rest (a seeded split) is the validation set
        for early stopping and the history. 1.0 trains on every cell, without early stopping.
    early_stopping
        Stop when the validation ELBO has not improved for ``patience`` epochs after the KL
        warm-up, and keep the weights of the best validation epoch.
    patience
        Epochs without improvement before early stopping.
    n_steps_kl_warmup
        Optimizer steps over which the KL weight rises from 0 to 1; None: a tenth of all steps.
    seed
        Seeds the split, the initialization, the minibatch order and the Monte Carlo samples;
        None draws a random seed (recorded in the model's parameters).
    accelerator, devices
        Lightning's; ``"auto"`` trains on one GPU when there is one, else on the CPU.
    num_nodes, strategy, precision
        Lightning's distributed training (``strategy="ddp"`` with ``devices=N``), from a
        script; see :meth:`scvae.{cls}.fit`.
    progress_bar
        Show training progress (a bar on a terminal, else a line every few epochs on stderr).
    checkpoint_dir
        Write a checkpoint there after every epoch and resume from it. :meth:`scvae.{cls}.fit`
        documents every fit option in full."""

_DOC = """Fit {cls} on ``adata`` and write its embedding, scanpy style.

    Trains :class:`scvae.{cls}` (see its documentation for the model) and writes

    * ``adata.obsm["X_<key>"]``: posterior mean of ``q(z | x, s)``, (n_cells, n_latent);
    * ``adata.uns[<key>]["params"]``: model and fit options,

    with ``<key>`` = ``key_added`` (``"X_scvi"`` is taken as ``obsm["X_scvi"]`` and
    ``uns["scvi"]``). Nothing else is written, and nothing at all if an error is raised.

    Parameters
    ----------
    adata
        Cells x genes AnnData with raw counts in ``adata.X`` or ``layer``.
    {model_params}
        Model options, as in :class:`scvae.{cls}`.
    {fit_doc}
    key_added
        Name of the results (default ``"{key}"``).
    copy
        Work on a copy of ``adata`` and return it.
    return_model
        Also return the fitted model.

    Returns
    -------
    None, or the AnnData copy (``copy=True``), or the model (``return_model=True``), or both as
    ``(adata, model)``.

    Examples
    --------
    >>> scvae.tl.{key}(adata, batch_key="batch", max_epochs=100, train_size=0.9, patience=20)
    >>> sc.pp.neighbors(adata, use_rep="X_{key}")
    """


def _doc(cls: str, key: str, model_params: str) -> str:
    return _DOC.format(
        cls=cls, key=key, model_params=model_params, fit_doc=_FIT_DOC.format(cls=cls)
    )


def _make_tool(model_class: type[VAEModel]):
    def tool(
        adata: AnnData,
        *,
        layer: str | None = None,
        batch_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
        encode_covariates: bool = False,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        dispersion: Literal["gene", "gene-batch", "gene-cell"] = "gene",
        library: Literal["latent", "observed"] = "latent",
        max_epochs: int | None = None,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        train_size: float = 0.9,
        early_stopping: bool = True,
        patience: int = 30,
        n_steps_kl_warmup: int | None = None,
        seed: int | None = 0,
        accelerator: str = "auto",
        devices: int | str | Sequence[int] = "auto",
        num_nodes: int = 1,
        strategy: str = "auto",
        precision: Literal["32-true", "bf16-mixed"] = "32-true",
        progress_bar: bool = True,
        checkpoint_dir: str | os.PathLike | None = None,
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
                "categorical_covariate_keys": categorical_covariate_keys,
                "continuous_covariate_keys": continuous_covariate_keys,
                "encode_covariates": encode_covariates,
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
                "weight_decay": weight_decay,
                "train_size": train_size,
                "early_stopping": early_stopping,
                "patience": patience,
                "n_steps_kl_warmup": n_steps_kl_warmup,
                "seed": seed,
                "accelerator": accelerator,
                "devices": devices,
                "num_nodes": num_nodes,
                "strategy": strategy,
                "precision": precision,
                "progress_bar": progress_bar,
                "checkpoint_dir": checkpoint_dir,
            },
        )

    tool.__name__ = tool.__qualname__ = model_class.default_key
    tool.__module__ = __name__
    tool.__doc__ = _doc(
        model_class.__name__,
        model_class.default_key,
        "layer, batch_key, categorical_covariate_keys, continuous_covariate_keys, "
        "encode_covariates, n_latent, n_hidden, n_layers, dropout_rate, dispersion, library",
    )
    return tool


zinbvae = _make_tool(ZINBVAE)
nbvae = _make_tool(NBVAE)
poissonvae = _make_tool(PoissonVAE)


def gaussianvae(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    categorical_covariate_keys: Sequence[str] | None = None,
    continuous_covariate_keys: Sequence[str] | None = None,
    encode_covariates: bool = False,
    log_normalize: bool = True,
    n_latent: int = 10,
    n_hidden: int = 128,
    n_layers: int = 1,
    dropout_rate: float = 0.1,
    max_epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 1e-6,
    train_size: float = 0.9,
    early_stopping: bool = True,
    patience: int = 30,
    n_steps_kl_warmup: int | None = None,
    seed: int | None = 0,
    accelerator: str = "auto",
    devices: int | str | Sequence[int] = "auto",
    num_nodes: int = 1,
    strategy: str = "auto",
    precision: Literal["32-true", "bf16-mixed"] = "32-true",
    progress_bar: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
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
            "categorical_covariate_keys": categorical_covariate_keys,
            "continuous_covariate_keys": continuous_covariate_keys,
            "encode_covariates": encode_covariates,
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
            "weight_decay": weight_decay,
            "train_size": train_size,
            "early_stopping": early_stopping,
            "patience": patience,
            "n_steps_kl_warmup": n_steps_kl_warmup,
            "seed": seed,
            "accelerator": accelerator,
            "devices": devices,
            "num_nodes": num_nodes,
            "strategy": strategy,
            "precision": precision,
            "progress_bar": progress_bar,
            "checkpoint_dir": checkpoint_dir,
        },
    )


gaussianvae.__doc__ = _doc(
    "GaussianVAE",
    "gaussianvae",
    "layer, batch_key, categorical_covariate_keys, continuous_covariate_keys, encode_covariates, "
    "log_normalize, n_latent, n_hidden, n_layers, dropout_rate",
)
