"""One-line, scanpy-style SSVAE: ``scvae.tl.ssvae(adata, labels_key="cell_type")``.

Every option of :class:`scvae.SSVAE` and of its ``fit`` is a keyword, with the same name and
default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

from anndata import AnnData

from scvae import checks
from scvae.data import check_writable, cluster_slots, latent_slots
from scvae.models import SSVAE

__all__ = ["ssvae"]


def ssvae(
    adata: AnnData,
    *,
    labels_key: str,
    unlabeled_category: str | None = "Unknown",
    likelihood: Literal["zinb", "nb", "poisson"] = "zinb",
    label_prior: Literal["frequencies", "uniform"] = "frequencies",
    alpha: float | None = None,
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
    keep_observed: bool = False,
    min_confidence: float | None = None,
    key_added: str | None = None,
    copy: bool = False,
    return_model: bool = False,
) -> AnnData | SSVAE | tuple[AnnData, SSVAE] | None:
    """Fit an SSVAE on ``adata`` and write its labels and embedding, scanpy style.

    Trains :class:`scvae.SSVAE` (see it for the model) and writes

    * ``adata.obs[<key>]``: the label of each cell (categorical), ``argmax_y q(y | x)``;
    * ``adata.obsm[<key> + "_proba"]``: the calibrated ``q(y | x)``, (n_cells, C);
    * ``adata.uns[<key>]``: ``params``, ``labels`` (the column order of the probabilities),
      ``temperature`` and ``calibration``;
    * ``adata.obsm["X_<key>"]``: posterior mean of ``q(z1 | x, s)``, (n_cells, n_latent),

    with ``<key>`` = ``key_added`` or ``"ssvae"``. Nothing is written if an error is raised.

    Parameters
    ----------
    adata
        Cells x genes AnnData with raw counts in ``adata.X`` or ``layer``.
    labels_key, unlabeled_category, likelihood, label_prior, alpha
        The labels and the model, as in :class:`scvae.SSVAE`.
    layer, batch_key, n_latent, n_hidden, n_layers, dropout_rate, dispersion, library
        Model options, as in :class:`scvae.SSVAE`.
    categorical_covariate_keys, continuous_covariate_keys, encode_covariates
        Covariates beyond the batch, as in :class:`scvae.SSVAE`.
    max_epochs, batch_size, lr, weight_decay, train_size, early_stopping, patience
        Fit options, as in :meth:`scvae.SSVAE.fit`.
    n_steps_kl_warmup, seed, accelerator, devices, progress_bar, checkpoint_dir
        Fit options, as in :meth:`scvae.SSVAE.fit`.
    num_nodes, strategy, precision
        Fit options, as in :meth:`scvae.SSVAE.fit`.
    keep_observed, min_confidence
        As in :meth:`scvae.SSVAE.write_labels`: keep the observed labels; label
        ``"uncertain"`` the cells whose top probability is below ``min_confidence``.
    key_added
        Name of the results (default ``"ssvae"``; not starting with ``"X_"``).
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
    >>> scvae.tl.ssvae(adata, labels_key="cell_type", unlabeled_category="Unknown")
    >>> sc.pl.umap(adata, color="ssvae")
    """
    if not copy:
        check_writable(adata, copy_option=True)
    cluster_slots(key_added, SSVAE.default_key)  # a bad key fails before training
    latent_slots(key_added, SSVAE.default_key)
    if isinstance(key_added, str) and key_added.startswith("X_"):
        raise ValueError(f"key_added names the labels: not starting with 'X_', got {key_added!r}.")
    checks.boolean("keep_observed", keep_observed)
    if min_confidence is not None:
        checks.fraction("min_confidence", min_confidence, low=0.0)
    model = SSVAE(
        adata,
        labels_key=labels_key,
        unlabeled_category=unlabeled_category,
        likelihood=likelihood,
        label_prior=label_prior,
        alpha=alpha,
        layer=layer,
        batch_key=batch_key,
        categorical_covariate_keys=categorical_covariate_keys,
        continuous_covariate_keys=continuous_covariate_keys,
        encode_covariates=encode_covariates,
        n_latent=n_latent,
        n_hidden=n_hidden,
        n_layers=n_layers,
        dropout_rate=dropout_rate,
        dispersion=dispersion,
        library=library,
    )
    model.fit(
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
        num_nodes=num_nodes,
        strategy=strategy,
        precision=precision,
        progress_bar=progress_bar,
        checkpoint_dir=checkpoint_dir,
    )
    target = adata.copy() if copy else adata
    model.write_labels(
        target, key_added=key_added, keep_observed=keep_observed, min_confidence=min_confidence
    )
    model.write_latent(target, key_added=key_added)
    if copy:
        return (target, model) if return_model else target
    return model if return_model else None
