"""Reference mapping (scArches): embed a query with a trained VAE by learning only its batches.

:func:`map_query` is :meth:`VAEModel.map_query <scvae.models.VAEModel.map_query>`. It

1. reads the query through the AnnData boundary (:func:`scvae.data.read_mapping_data`): genes
   aligned to the reference by name (missing ones zero, extra ones dropped, sparse throughout;
   refused below :data:`~scvae.data.MIN_GENE_OVERLAP` of the reference's genes, a warning below
   :data:`~scvae.data.WARN_GENE_OVERLAP`), the query's new batch labels (and new categories of
   each categorical covariate) appended after the reference's;
2. copies the reference module and grows it (:meth:`VAEModule.grow
   <scvae.module.vae.VAEModule.grow>`): new rows in every batch embedding (encoders and
   decoder) and covariate embedding, new ``log theta`` rows with ``dispersion="gene-batch"``,
   the new batches' empirical library prior. The reference's rows are fixed buffers and every
   other parameter has ``requires_grad=False``, so the optimizer holds the new rows only;
3. trains them on the query by the same ELBO through :func:`scvae.train.train_vae`, with the
   reference's BatchNorm running statistics kept exactly (``batchnorm``);
4. merges the grown embeddings into ordinary ones and returns a new model of the same class.

Because the rows of the reference's batches and every shared weight and statistic are
unchanged, the reference cells' latent is bit for bit the same under the mapped model.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from scvae import checks
from scvae.data import library_log_prior, read_mapping_data

if TYPE_CHECKING:  # pragma: no cover
    from scvae.models._vae import VAEModel

__all__ = ["BATCHNORM_MODES", "NEW_ROW_INITS", "default_map_epochs", "map_query"]

_LOG = logging.getLogger("scvae")
#: how the rows of new batches and categories start (``docs/user_guide/batch_correction.md``)
NEW_ROW_INITS: tuple[str, ...] = ("zero", "mean")
#: what the reference's BatchNorm layers do while the query is mapped (see :func:`map_query`)
BATCHNORM_MODES: tuple[str, ...] = ("eval", "train")


def default_map_epochs(n_cells: int) -> int:
    """Epochs of a mapping when ``max_epochs=None``: ``min(100, 100 * 20000 / n_cells)``, at
    least 10 (a quarter of a fit's rule: only the new batches' rows are learned, and with early
    stopping on the query's validation ELBO the mapping stops when they have converged)."""
    return int(max(10, min(100, round(100 * 20_000 / max(n_cells, 1)))))


def _check_new_cells(model: VAEModel, adata: AnnData) -> None:
    """Refuse a query made of the reference's own training cells; warn on shared names."""
    reference = model._obs_names
    if reference is None:  # loaded without its training AnnData: nothing to compare with
        return
    shared = int(np.count_nonzero(pd.Index(adata.obs_names).isin(reference)))
    if shared == adata.n_obs:
        raise ValueError(
            f"Every cell of adata ({adata.n_obs}) has the obs_names of a cell the reference "
            "was trained on: these are the reference's cells, which need no mapping. Embed "
            "them with model.get_latent(adata); map_query is for cells of new samples."
        )
    if shared:
        warnings.warn(
            f"{shared} of the {adata.n_obs} query cells have the obs_names of the reference's "
            "training cells; they are mapped as new cells. If they are the same cells, remove "
            "them first: adata[~adata.obs_names.isin(reference_adata.obs_names)].copy().",
            UserWarning,
            stacklevel=3,
        )


def map_query(
    model: VAEModel,
    adata: AnnData,
    *,
    max_epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    train_size: float = 0.9,
    early_stopping: bool = True,
    patience: int = 10,
    n_steps_kl_warmup: int | None = 0,
    seed: int | None = 0,
    accelerator: str = "auto",
    devices: int | str | Sequence[int] = "auto",
    progress_bar: bool = True,
    new_row_init: Literal["zero", "mean"] = "zero",
    batchnorm: Literal["eval", "train"] = "eval",
    callbacks: Sequence[Any] = (),
) -> VAEModel:
    """Map ``adata`` onto the trained ``model``; see :meth:`VAEModel.map_query`."""
    from scvae.models._vae import _RECORDED  # the fit record's keys
    from scvae.train import TrainConfig, train_vae  # Lightning: imported lazily

    reference_module = model._trained_module()
    checks.choice("new_row_init", new_row_init, NEW_ROW_INITS)
    checks.choice("batchnorm", batchnorm, BATCHNORM_MODES)
    counts = model._reads_counts(model.config)
    setup, data, overlap, new = read_mapping_data(
        adata, model.setup, counts=counts, nonnegative=counts
    )
    _check_new_cells(model, adata)
    data = model._transform(data, model.config)
    config = TrainConfig.validated(
        max_epochs=max_epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        train_size=train_size,
        early_stopping=early_stopping,
        patience=patience,
        n_steps_kl_warmup=n_steps_kl_warmup,
        seed=seed,
        accelerator=accelerator,
        devices=devices,
        progress_bar=progress_bar,
    )
    if config.max_epochs is None:
        config = dataclasses.replace(config, max_epochs=default_map_epochs(data.X.shape[0]))
    n_reference = model.setup.n_batch
    n_new_batches = len(new["batch"])
    categorical_keys = model.setup.covariates.categorical_keys
    n_new_categories = tuple(len(new[key]) for key in categorical_keys)
    log_mean, log_var = library_log_prior(data.library_size, data.batch_index, setup.n_batch)
    _LOG.info(
        "map_query: %d cells, %d of the reference's %d genes present (%d zero-filled, %d "
        "dropped), %d new batches %s%s.",
        data.X.shape[0], overlap.n_present, overlap.n_reference, overlap.n_missing,
        overlap.n_extra, n_new_batches, list(new["batch"]),
        "".join(f", {n} new {key!r} categories" for key, n in zip(
            categorical_keys, n_new_categories, strict=True) if n),
    )  # fmt: skip

    def make_module() -> Any:
        module = copy.deepcopy(reference_module)
        module.requires_grad_(False)  # every reference weight frozen
        new_parameters = module.grow(
            n_new_batches,
            log_mean[n_reference:],
            log_var[n_reference:],
            n_new_categories=n_new_categories,
            init=new_row_init,
        )
        for parameter in new_parameters:
            parameter.requires_grad_(True)
        return module.train()

    start = time.perf_counter()
    if n_new_batches or any(n_new_categories):
        result = train_vae(
            make_module,
            data,
            config,
            callbacks=callbacks,
            model_options={"model": type(model).__name__, "map_query": True},
            keep_batchnorm=batchnorm,
        )
        module, device, history = result.module, result.device, result.history
        record = {**config.to_dict(), **result.record}
        train_indices, validation_indices = result.train_indices, result.validation_indices
    else:  # every batch and category known: nothing to learn, the reference embeds the query
        _LOG.info("map_query: the query has no new batch or category; nothing is trained.")
        module, device, history = make_module(), model.device, pd.DataFrame()
        record = {**config.to_dict(), "n_epochs_trained": 0, "device": str(device)}
        train_indices = np.arange(data.X.shape[0])
        validation_indices = np.zeros(0, dtype=np.int64)
    module.merge()
    module.requires_grad_(True)  # an ordinary module again, as a loaded one
    module.to(device).eval()
    seconds = time.perf_counter() - start

    mapped = copy.copy(model)
    mapped.setup = setup
    mapped._data = data
    mapped._obs_names = pd.Index(adata.obs_names)
    mapped._adata = adata
    mapped._align_genes = True  # later queries are aligned to the genes the same way
    mapped.module = module
    mapped.device = device
    mapped.history = history
    mapped.train_indices, mapped.validation_indices = train_indices, validation_indices
    training = {k: record[k] for k in _RECORDED if k in record}
    training.update(
        {
            "map_query": True,
            "reference_batch_categories": list(model.setup.batch_categories),
            "reference_n_epochs_trained": model.training.get("n_epochs_trained"),
            "reference_seed": model.training.get("seed"),
            "n_new_batches": n_new_batches,
            "new_batch_categories": list(new["batch"]),
            "n_new_categories": list(n_new_categories) or None,
            "n_query_cells": int(data.X.shape[0]),
            "gene_overlap": overlap.fraction,
            "n_genes_zero_filled": overlap.n_missing,
            "n_genes_dropped": overlap.n_extra,
            "new_row_init": new_row_init,
            "batchnorm": batchnorm,
            "map_seconds": seconds,
        }
    )
    mapped.training = {k: v for k, v in training.items() if v is not None}
    return mapped
