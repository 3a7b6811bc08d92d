"""SSVAE: the semi-supervised count VAE (Kingma et al.'s M1+M2 on scVI), which labels cells.

The module is :class:`~scvae.module.ssvae.SSVAEModule`; this class reads the labels, trains
through the shared loop (:func:`scvae.train.train_vae`; the label codes travel in
:class:`LabelledCellData` to :attr:`Minibatch.labels`), fits a temperature on the validation
cells' labels after training, and adds the label getters and writers.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from scvae import checks
from scvae.data import CellData, DataSetup, check_writable, cluster_slots, latent_slots
from scvae.models._vae import VAEModel
from scvae.models._vae_config import VAEConfig
from scvae.models._vae_queries import _seeded
from scvae.module.ssvae import SSVAEModule

__all__ = ["SSVAE", "LabelledCellData", "SSVAEConfig", "expected_calibration_error"]

_LOG = logging.getLogger("scvae")
LIKELIHOODS: tuple[str, ...] = ("zinb", "nb", "poisson")
LABEL_PRIORS: tuple[str, ...] = ("frequencies", "uniform")
#: ``alpha = ALPHA_0 * n_cells / n_labelled`` by default (Kingma et al.: 0.1; measured here on
#: PBMC 3k and on seven label-transfer splits, docs/math.md)
ALPHA_0 = 30.0
#: the label given to cells below ``min_confidence``
UNCERTAIN = "uncertain"
#: fewest labelled validation cells for fitting a temperature (else it stays 1)
MIN_CALIBRATION_CELLS = 20
#: bins of the expected calibration error
ECE_BINS = 15


@dataclass
class LabelledCellData(CellData):
    """:class:`~scvae.data.CellData` with the (N,) int64 label codes (-1: unlabelled).

    :class:`~scvae.minibatch.CSRMinibatches` slices ``labels`` into ``Minibatch.labels``.
    """

    labels: np.ndarray | None = None


def _with_labels(data: CellData, labels: np.ndarray | None) -> LabelledCellData:
    values = {f.name: getattr(data, f.name) for f in fields(CellData)}
    return LabelledCellData(**values, labels=labels)


@dataclass(frozen=True)
class SSVAEConfig(VAEConfig):
    """The construction options of an :class:`SSVAE` (a :class:`VAEConfig` and the labels).

    Attributes
    ----------
    likelihood
        ``"zinb"``, ``"nb"`` or ``"poisson"``.
    label_prior
        ``p(y)``: ``"frequencies"`` (of the labelled cells) or ``"uniform"``.
    alpha
        Weight of ``log q(y | x)`` per labelled cell; None: ``ALPHA_0 * N / N_labelled``.
    """

    likelihood: Literal["zinb", "nb", "poisson"] = "zinb"
    label_prior: Literal["frequencies", "uniform"] = "frequencies"
    alpha: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.choice("likelihood", self.likelihood, LIKELIHOODS)
        checks.choice("label_prior", self.label_prior, LABEL_PRIORS)
        if self.alpha is not None:
            alpha = checks.fraction("alpha", self.alpha, low=0.0, high=math.inf, include_high=False)
            object.__setattr__(self, "alpha", alpha)

    def module_options(self) -> dict[str, Any]:
        """The options :class:`~scvae.module.vae.VAEModule` takes."""
        d = super().module_options()
        for name in ("likelihood", "label_prior", "alpha"):
            d.pop(name)
        return d


# ------------------------------------------------------------------------------ labels
def _label_text(value: object) -> str:
    """A label as a string: ``2``, ``2.0`` and ``"2"`` all read ``"2"``."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def read_labels(
    adata: AnnData, labels_key: str, unlabeled_category: str | None
) -> tuple[np.ndarray, list[str] | None, np.ndarray]:
    """Labels of ``adata.obs[labels_key]``: strings, their category order, and the known mask.

    A cell is unlabelled when its value is missing (NaN, None) or equals
    ``unlabeled_category``. The categories are those of a categorical column, in its order
    (used labels only), else the labels sorted as strings; None when no cell is labelled.

    Raises
    ------
    KeyError
        ``labels_key`` is not a column of ``adata.obs`` (the message lists them).
    TypeError
        ``labels_key`` or ``unlabeled_category`` is not a string.
    """
    if not isinstance(labels_key, str):
        raise TypeError(f"labels_key must be an obs column name (a string), got {labels_key!r}.")
    if unlabeled_category is not None and not isinstance(unlabeled_category, str):
        raise TypeError(
            "unlabeled_category must be a string (or None: only missing values are unlabelled)"
            f", got {unlabeled_category!r}."
        )
    if labels_key not in adata.obs:
        columns = ", ".join(repr(c) for c in adata.obs.columns) or "none"
        raise KeyError(
            f"labels_key={labels_key!r} is not a column of adata.obs (available columns: "
            f"{columns}). Pass labels_key=<the column of cell-type labels>."
        )
    column = adata.obs[labels_key]
    missing = column.isna().to_numpy()
    text = np.array(
        ["" if m else _label_text(v) for v, m in zip(column.to_numpy(), missing, strict=True)],
        dtype=object,
    )
    known = ~missing
    if unlabeled_category is not None:
        known &= text != unlabeled_category
    if not known.any():
        return text, None, known
    used = set(text[known])
    if isinstance(column.dtype, pd.CategoricalDtype):
        order = [_label_text(c) for c in column.cat.categories]
        categories = [c for c in dict.fromkeys(order) if c in used]
    else:
        categories = sorted(used)
    return text, categories, known


def _codes(text: np.ndarray, known: np.ndarray, categories: Sequence[str]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(categories)}
    codes = np.full(len(text), -1, dtype=np.int64)
    codes[known] = [lookup.get(t, -2) for t in text[known]]
    unknown = sorted(set(text[codes == -2]))
    if unknown:
        raise ValueError(
            f"Labels the model does not know: {', '.join(map(repr, unknown[:10]))}; it knows "
            f"{', '.join(map(repr, categories))}."
        )
    return codes


def expected_calibration_error(
    proba: np.ndarray, labels: np.ndarray, *, n_bins: int = ECE_BINS
) -> float:
    """Expected calibration error of the top label: ``sum_b (n_b / n) |acc_b - conf_b|``.

    Parameters
    ----------
    proba
        (n, C) probabilities.
    labels
        (n,) true label codes.
    n_bins
        Equal-width bins of the top probability in [0, 1].

    Returns
    -------
    float
        In [0, 1]; NaN for no cells.
    """
    proba, labels = np.asarray(proba, dtype=np.float64), np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == labels
    bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def _softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    p = np.exp(scaled)
    return p / p.sum(axis=1, keepdims=True)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = _softmax(logits, temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-300, None))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T`` minimizing the NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    Bounded 1-D search over ``log T`` in [-4, 4].
    """
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(
        lambda log_t: _nll(logits, labels, math.exp(log_t)),
        bounds=(-4.0, 4.0),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(result.x))


class SSVAE(VAEModel):
    """Semi-supervised count VAE (SSVAE; the FSVAE when every cell is labelled).

    Kingma et al.'s (2014) M1+M2 stacked on scVI's count model, as scANVI does, with the
    textbook objective. For cell ``n`` with batch ``s_n``::

        y ~ Cat(pi),  z2 ~ N(0, I),  z1 | z2, y ~ N(mu(z2, y), sigma^2(z2, y)),
        l ~ LogNormal(l_mu[s], l_var[s]),  x | z1, l, s ~ ZINB/NB/Poisson  (as ZINBVAE)

    ``z1`` is the embedding. ``q(z1 | x, s)`` and ``q(l | x, s)`` are the count VAEs'
    encoders, ``q(y | x)`` a classifier (an MLP on the posterior mean of ``z1``) and
    ``q(z2 | z1, y)`` an MLP. A labelled cell contributes its bound ``L(x, y)`` with the observed
    label plus ``alpha * log q(y | x)``; an unlabelled cell ``U(x) = sum_y q(y|x) L(x, y) +
    H[q(y|x)]``, the sum over the labels exact (``docs/math.md``). This is not scvi-tools'
    SCANVI objective (which gives every cell the unlabelled bound and adds a cross-entropy).

    After training a temperature ``T`` (``q(y|x) = softmax(f / T)``) is fitted on the labelled
    cells of the validation split; :attr:`calibration` has ``T`` and the expected calibration
    error before and after on those cells. The labels returned by :meth:`predict` are the
    argmax, which ``T`` does not change.

    Parameters
    ----------
    adata
        Cells x genes AnnData with raw counts (sparse or dense, float or integer).
    labels_key
        ``obs`` column of cell labels (any type; ``2``, ``2.0``, ``"2"`` are the same label).
        A cell is unlabelled when its value is ``unlabeled_category`` or missing (NaN/None).
        At least one cell must be labelled, with at least two labels, and every label needs
        at least two labelled cells (else a ValueError: mark such a cell unlabelled or merge
        its label). Label order: a categorical column's categories (those used), else sorted.
    unlabeled_category
        The value that marks an unlabelled cell (default ``"Unknown"``); None: only missing
        values do.
    likelihood
        ``"zinb"`` (default), ``"nb"`` or ``"poisson"``: one class for all three, as
        :class:`GMVAE`.
    label_prior
        ``p(y)``: ``"frequencies"`` (default: the label frequencies among the labelled cells)
        or ``"uniform"`` (Kingma et al., scANVI). The prior pulls the unlabelled cells towards
        its proportions. Measured on seven label-transfer splits (``docs/benchmarks.md``),
        keep the default when the query may lack some of the reference's cell types (a
        uniform prior sent query cells to absent types: accuracy 0.76 against 0.88); choose
        ``"uniform"`` when both hold the same types in other proportions (accuracy 0.91
        against 0.88), or when the labelled cells were chosen by type rather than at random.
    alpha
        Weight of ``log q(y | x)`` per labelled cell, against its bound in nats. None:
        ``ALPHA_0 * n_cells / n_labelled`` with ``ALPHA_0 = 30``: Kingma et al.'s rule
        (``alpha = 0.1 N`` on a sum over cells, with the classification term averaged over the
        labelled cells) with the constant measured. On PBMC 3k with half the labels hidden
        (one seed) ``ALPHA_0`` from 1 to 100 gave the same accuracy within a point; on seven
        label-transfer splits (three seeds) 30 against 10 kept the joint training of
        reference and query from carrying a whole query population to a wrong type (in one
        seed in three at 10: accuracy 0.67 against 0.84), at the same accuracy elsewhere
        (``benchmarks/ssvae_alpha.py``, ``benchmarks/ssvae_prior.py``, ``docs/math.md``).
        The resolved value is ``model.alpha``.
    layer
        Layer with the raw counts; None uses ``adata.X``.
    batch_key
        ``obs`` column of batches to correct for.
    categorical_covariate_keys, continuous_covariate_keys, encode_covariates
        Covariates beyond the batch, as in :class:`ZINBVAE`.
    n_latent, n_hidden, n_layers, dropout_rate
        Dimension of ``z1`` and ``z2`` and network sizes (the classifier and the ``z2``
        networks have one hidden layer of ``n_hidden``).
    dispersion
        ``"gene"`` (default), ``"gene-batch"`` or ``"gene-cell"``.
    library
        ``"latent"`` (default) or ``"observed"``.

    Examples
    --------
    >>> model = scvae.SSVAE(adata, labels_key="cell_type", unlabeled_category="Unknown")
    >>> model.fit()
    >>> model.write_labels(adata)  # obs["ssvae"], obsm["ssvae_proba"], uns["ssvae"]
    >>> model.write_latent(adata)  # obsm["X_ssvae"]
    >>> model.generate(100, label="B cell")  # FSVAE: cells of one type
    """

    default_key = "ssvae"
    _config_class = SSVAEConfig

    def __init__(
        self,
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
    ) -> None:
        config = SSVAEConfig(
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            dispersion=dispersion,
            library=library,
            encode_covariates=encode_covariates,
            likelihood=likelihood,
            label_prior=label_prior,
            alpha=alpha,
        )
        text, categories, known = read_labels(adata, labels_key, unlabeled_category)
        if categories is None:
            what = f"{unlabeled_category!r} or missing" if unlabeled_category else "missing"
            raise ValueError(
                f"adata.obs[{labels_key!r}] labels no cell: every value is {what}. The SSVAE "
                "needs labelled cells; fit a ZINBVAE (or a GMVAE to cluster) without labels."
            )
        if len(categories) < 2:
            raise ValueError(
                f"adata.obs[{labels_key!r}] has one label ({categories[0]!r}) among the "
                "labelled cells; the SSVAE needs at least two."
            )
        codes = _codes(text, known, categories)
        counts = np.bincount(codes[known], minlength=len(categories))
        single = [c for c, n in zip(categories, counts, strict=True) if n < 2]
        if single:
            raise ValueError(
                f"adata.obs[{labels_key!r}]: the labels {', '.join(map(repr, single))} have "
                "one labelled cell each; every label needs at least two. Mark such cells "
                f"unlabelled ({unlabeled_category!r}) or merge their label into another."
            )
        self._setup_from(
            adata,
            layer=layer,
            batch_key=batch_key,
            config=config,
            categorical_covariate_keys=categorical_covariate_keys,
            continuous_covariate_keys=continuous_covariate_keys,
        )
        self._data = _with_labels(self._data, codes)
        self.labels_key, self.unlabeled_category = labels_key, unlabeled_category
        self.label_categories = list(categories)
        self._label_counts = counts
        self.alpha = float(
            config.alpha if config.alpha is not None else ALPHA_0 * len(codes) / known.sum()
        )

    def _init_state(self, setup: DataSetup, config: VAEConfig, *, data: Any) -> None:
        super()._init_state(setup, config, data=data)
        self.likelihood = config.likelihood  # an instance attribute: the user's choice
        self.labels_key: str = ""
        self.unlabeled_category: str | None = None
        self.label_categories: list[str] = []
        self._label_counts: np.ndarray = np.zeros(0, dtype=np.int64)
        self.alpha = 0.0
        self.calibration: dict[str, Any] = {}
        self._warm_start: SSVAEModule | None = None

    @property
    def temperature(self) -> float:
        """The fitted temperature of ``q(y | x)`` (1 before calibration)."""
        return float(self.calibration.get("temperature", 1.0))

    @property
    def labels(self) -> np.ndarray | None:
        """(N,) int64 label codes of the training (or default) cells, -1: unlabelled."""
        return None if self._data is None else getattr(self._data, "labels", None)

    def _log_pi(self) -> torch.Tensor:
        c = len(self.label_categories)
        if self.config.label_prior == "uniform" or len(self._label_counts) != c:
            return torch.zeros(c)
        freq = self._label_counts / self._label_counts.sum()
        return torch.log(torch.as_tensor(freq, dtype=torch.float32))

    def _build_module(self, log_mean: torch.Tensor, log_var: torch.Tensor) -> SSVAEModule:
        if self._warm_start is not None:  # from_vae: every fit starts from the VAE's weights
            return copy.deepcopy(self._warm_start).train()
        return SSVAEModule(
            self.setup.n_genes,
            self.setup.n_batch,
            log_mean,
            log_var,
            n_labels=len(self.label_categories),
            log_pi=self._log_pi(),
            alpha=self.alpha,
            likelihood=self.likelihood,
            **self._module_options(),
        )

    def __repr__(self) -> str:
        state = "trained" if self.is_trained else "not trained"
        n_labelled = int(self._label_counts.sum())
        return (
            f"SSVAE({self.setup.n_genes} genes, {self.setup.n_batch} batches, "
            f"{len(self.label_categories)} labels of {self.labels_key!r} ({n_labelled} "
            f"labelled cells), likelihood={self.likelihood!r}, n_latent={self.config.n_latent}"
            f"; {state})"
        )

    # ---------------------------------------------------------------------------- warm start
    @classmethod
    def from_vae(
        cls,
        vae_model: VAEModel,
        adata: AnnData | None = None,
        *,
        labels_key: str,
        unlabeled_category: str | None = "Unknown",
        label_prior: Literal["frequencies", "uniform"] = "frequencies",
        alpha: float | None = None,
    ) -> SSVAE:
        """An SSVAE whose count networks start from a trained ZINBVAE, NBVAE or PoissonVAE.

        The encoders of ``z1`` and ``l``, the decoder, the dispersion and the library prior
        are copied exactly; the classifier and the ``z2`` networks are new (seeded by
        ``fit``). Every :meth:`fit` starts again from these weights. Before fitting, the
        model already embeds as the VAE (:meth:`get_latent` equals the VAE's).

        Parameters
        ----------
        vae_model
            A trained :class:`ZINBVAE`, :class:`NBVAE` or :class:`PoissonVAE`.
        adata
            The cells with labels (same genes, batches and covariates as the VAE's
            training data); None: the VAE's training AnnData.
        labels_key, unlabeled_category, label_prior, alpha
            As in :class:`SSVAE`.

        Returns
        -------
        SSVAE
            Not yet fitted for the labels: call :meth:`fit`.
        """
        from scvae.models._scvi import NBVAE, ZINBVAE, PoissonVAE

        if not isinstance(vae_model, ZINBVAE | NBVAE | PoissonVAE) or type(vae_model) not in (
            ZINBVAE,
            NBVAE,
            PoissonVAE,
        ):
            raise TypeError(
                "from_vae takes a trained ZINBVAE, NBVAE or PoissonVAE, got "
                f"{type(vae_model).__name__}."
            )
        vae = vae_model._trained_module()
        if adata is None:
            adata = vae_model._adata
            if adata is None:
                raise ValueError(
                    "The VAE has no training AnnData (it was loaded without one): pass adata."
                )
        setup, config = vae_model.setup, vae_model.config
        model = cls(
            adata,
            labels_key=labels_key,
            unlabeled_category=unlabeled_category,
            likelihood=vae_model.likelihood,
            label_prior=label_prior,
            alpha=alpha,
            layer=setup.layer,
            batch_key=setup.batch_key,
            categorical_covariate_keys=list(setup.covariates.categorical_keys) or None,
            continuous_covariate_keys=list(setup.covariates.continuous_keys) or None,
            encode_covariates=config.encode_covariates,
            n_latent=config.n_latent,
            n_hidden=config.n_hidden,
            n_layers=config.n_layers,
            dropout_rate=config.dropout_rate,
            dispersion=config.dispersion,
            library=config.library,
        )
        if model.setup.to_dict() != setup.to_dict():
            raise ValueError(
                "adata does not match the VAE's training data (genes, batches or covariates "
                "differ): warm-start from a VAE trained on these cells' genes and batches."
            )
        with torch.random.fork_rng():
            torch.manual_seed(0)
            module = model._build_module(vae.library_log_mean.cpu(), vae.library_log_var.cpu())
        state = {k: v.detach().cpu().clone() for k, v in vae.state_dict().items()}
        missing, unexpected = module.load_state_dict(state, strict=False)
        new = ("classifier.", "z2_encoder.", "z1_decoder.", "log_pi")
        if unexpected or any(not name.startswith(new) for name in missing):
            raise ValueError(
                f"The VAE's weights do not fit the SSVAE (unexpected {unexpected}, missing "
                f"{[n for n in missing if not n.startswith(new)]})."
            )
        model._warm_start = module.eval()
        model.module = copy.deepcopy(module).eval()
        model.training = {"warm_start": type(vae_model).__name__}
        return model

    # ------------------------------------------------------------------------------ training
    def fit(
        self,
        *,
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
        callbacks: Sequence[Any] = (),
    ) -> SSVAE:
        """Fit the SSVAE (labelled and unlabelled bounds), then calibrate ``q(y | x)``.

        Same parameters as :meth:`ZINBVAE.fit`; the validation split (``1 - train_size`` of
        the cells) also holds out labelled cells, on which the temperature is fitted after
        training (:attr:`calibration`; with fewer than 20 labelled validation cells, or
        ``train_size=1.0``, the temperature stays 1 and ``calibration["fitted"]`` is False).
        A model made by :meth:`from_vae` starts from the VAE's weights.

        Returns
        -------
        The fitted model (``self``).
        """
        warm = self.training.get("warm_start")
        super().fit(
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
            callbacks=callbacks,
        )
        self.training["alpha"] = self.alpha
        if warm is not None:
            self.training["warm_start"] = warm
        self.calibration = self._calibrate()
        return self

    def _fingerprint_options(self) -> dict[str, Any]:
        options = super()._fingerprint_options()
        labels = self.labels
        digest = hashlib.blake2b(digest_size=16)
        if labels is not None:
            digest.update(np.ascontiguousarray(labels).tobytes())
        options["labels"] = {
            "categories": list(self.label_categories),
            "codes": digest.hexdigest(),
            "alpha": self.alpha,
            "warm_start": self._warm_start is not None,
        }
        return options

    def _calibrate(self) -> dict[str, Any]:
        """Temperature and ECE on the labelled validation cells."""
        labels = self.labels
        idx = self.validation_indices if self.validation_indices is not None else []
        idx = np.asarray(idx, dtype=np.int64)
        if labels is None or len(idx) == 0:
            held = np.zeros(0, dtype=np.int64)
        else:
            held = idx[labels[idx] >= 0]
        record: dict[str, Any] = {"n_cells": len(held), "fitted": False, "temperature": 1.0}
        if len(held) == 0:
            return record
        logits = self._logits(self._require_training_data())[held]
        y = labels[held]
        before = _softmax(logits)
        record["accuracy"] = float((before.argmax(1) == y).mean())
        record["ece_before"] = expected_calibration_error(before, y)
        record["nll_before"] = _nll(logits, y, 1.0)
        if len(held) < MIN_CALIBRATION_CELLS:
            _LOG.info(
                "SSVAE: %d labelled validation cells (fewer than %d): temperature kept at 1.",
                len(held),
                MIN_CALIBRATION_CELLS,
            )
            return record
        t = fit_temperature(logits, y)
        record.update(
            fitted=True,
            temperature=t,
            ece_after=expected_calibration_error(_softmax(logits, t), y),
            nll_after=_nll(logits, y, t),
        )
        return record

    # ------------------------------------------------------------------------------- queries
    @torch.inference_mode()
    def _logits(self, data: CellData, batch_size: int = 1024) -> np.ndarray:
        """Logits of ``q(y | x)`` at temperature 1: (n_cells, C) float64."""
        module = self._trained_module()
        chunks = []
        for batch in self._minibatches(data, batch_size):
            qz, _ = module.encode(batch)
            chunks.append(module.classify(qz).double().cpu())
        return torch.cat(chunks).numpy()

    def _proba(self, data: CellData, batch_size: int = 1024) -> np.ndarray:
        return _softmax(self._logits(data, batch_size), self.temperature)

    def _observed_codes(self, adata: AnnData | None) -> np.ndarray:
        """Observed label codes of the cells (-1: unlabelled) for ``keep_observed``."""
        if adata is None:
            labels = self.labels
            if labels is None:
                raise ValueError("The model has no training labels: pass adata.")
            return labels
        text, _, known = read_labels(adata, self.labels_key, self.unlabeled_category)
        return _codes(text, known, self.label_categories)

    def predict(
        self,
        adata: AnnData | None = None,
        *,
        soft: bool = False,
        keep_observed: bool = False,
        min_confidence: float | None = None,
        batch_size: int = 1024,
    ) -> np.ndarray | pd.DataFrame:
        """The label of each cell, ``argmax_y q(y | x)``, or with ``soft`` all of ``q(y | x)``.

        ``q(y | x)`` is the calibrated one, ``softmax(f / T)`` (:attr:`temperature`).

        Parameters
        ----------
        adata
            Cells (same genes, known batches). None: the training data.
        soft
            Return the probabilities instead of the labels.
        keep_observed
            Cells with an observed label (in ``adata.obs[labels_key]``, or the training
            labels) keep it: their label, or a one-hot row with ``soft``.
        min_confidence
            Cells whose top probability is below this get the label ``"uncertain"`` (not
            with ``soft``; observed labels kept by ``keep_observed`` are never flagged).
            None: every cell gets its most probable label.
        batch_size
            Cells per forward pass.

        Returns
        -------
        np.ndarray or pandas.DataFrame
            (n_cells,) object array of label strings; or (``soft=True``) a cells x labels
            DataFrame of float64 probabilities (rows sum to 1) indexed by ``obs_names``, the
            labels as columns in :attr:`label_categories` order.
        """
        soft = checks.boolean("soft", soft)
        keep_observed = checks.boolean("keep_observed", keep_observed)
        if min_confidence is not None:
            if soft:
                raise ValueError("min_confidence flags labels; it does not apply with soft=True.")
            min_confidence = checks.fraction("min_confidence", min_confidence, low=0.0)
        observed = self._observed_codes(adata) if keep_observed else None
        proba = self._proba(self._cells(adata), batch_size)
        if observed is not None:
            rows = observed >= 0
            proba[rows] = np.eye(proba.shape[1])[observed[rows]]
        if soft:
            obs_names = adata.obs_names if adata is not None else self._obs_names
            columns = pd.Index(self.label_categories, name=self.labels_key)
            return pd.DataFrame(proba, index=pd.Index(obs_names), columns=columns)
        labels = np.asarray(self.label_categories, dtype=object)[proba.argmax(axis=1)]
        if min_confidence is not None:
            labels[proba.max(axis=1) < min_confidence] = UNCERTAIN
        return labels

    def write_labels(
        self,
        adata: AnnData,
        *,
        key_added: str | None = None,
        keep_observed: bool = False,
        min_confidence: float | None = None,
    ) -> None:
        """Write ``obs[key]`` (categorical labels), ``obsm[key + "_proba"]`` and ``uns[key]``.

        ``key`` is ``key_added`` or ``"ssvae"`` (:func:`scvae.data.cluster_slots`).
        ``obsm[key + "_proba"]`` is the calibrated ``q(y | x)`` (n_cells, C), columns in the
        order of ``uns[key]["labels"]``. ``uns[key]`` holds ``params`` (as
        :meth:`write_latent`), ``labels``, ``temperature``, ``calibration`` and
        ``min_confidence`` when given. Nothing is written if an error is raised.

        Parameters
        ----------
        adata
            The cells to label and write into (same genes, known batches; not a view).
        key_added
            Name of the result; None: ``"ssvae"``.
        keep_observed, min_confidence
            As in :meth:`predict`; with ``min_confidence`` the category ``"uncertain"`` is
            added to ``obs[key]``.
        """
        check_writable(adata)
        obs_key, proba_key, uns_key = cluster_slots(key_added, self.default_key)
        keep_observed = checks.boolean("keep_observed", keep_observed)
        if min_confidence is not None:
            min_confidence = checks.fraction("min_confidence", min_confidence, low=0.0)
            if UNCERTAIN in self.label_categories:
                raise ValueError(
                    f"{UNCERTAIN!r} is a label of the model: min_confidence cannot flag cells "
                    "with it."
                )
        observed = self._observed_codes(adata) if keep_observed else None
        proba = np.ascontiguousarray(self._proba(self._cells(adata)))
        codes = proba.argmax(axis=1)
        categories = list(self.label_categories)
        if observed is not None:
            rows = observed >= 0
            proba[rows] = np.eye(proba.shape[1])[observed[rows]]
            codes[rows] = observed[rows]
        if min_confidence is not None:
            categories.append(UNCERTAIN)
            codes = np.where(proba.max(axis=1) < min_confidence, len(categories) - 1, codes)
        labels = pd.Categorical.from_codes(codes, categories=categories)
        record = self._labels_record()
        if min_confidence is not None:
            record["min_confidence"] = float(min_confidence)
        adata.obs[obs_key] = pd.Series(labels, index=adata.obs_names)
        adata.obsm[proba_key] = proba
        adata.uns[uns_key] = record

    def write_latent(
        self,
        adata: AnnData,
        *,
        key_added: str | None = None,
        give_mean: bool = True,
    ) -> None:
        """Write the embedding ``obsm["X_<key>"]`` (``z1``) and the record ``uns[<key>]``.

        As :meth:`ZINBVAE.write_latent`; ``uns[<key>]`` is the record that
        :meth:`write_labels` writes (``params``, ``labels``, ``temperature``,
        ``calibration``), so the two writers can be called in either order with one key.

        Parameters
        ----------
        adata
            The cells to embed and write into (same genes, known batches; not a view).
        key_added
            Name of the result; None: ``"ssvae"``.
        give_mean
            Posterior mean (default) or one draw from ``q(z1 | x, s)``.
        """
        check_writable(adata)
        obsm_key, uns_key = latent_slots(key_added, self.default_key)
        latent = self.get_latent(adata, give_mean=give_mean)
        record = self._labels_record()
        adata.obsm[obsm_key] = latent
        adata.uns[uns_key] = record

    def _labels_record(self) -> dict[str, Any]:
        calibration = {k: v for k, v in self.calibration.items() if v is not None}
        return {
            "params": self.uns_params(),
            "labels": np.asarray(self.label_categories, dtype=object),
            "temperature": self.temperature,
            "calibration": calibration,
        }

    def _config_record(self) -> dict[str, Any]:
        d = super()._config_record()
        d.pop("likelihood")
        d["alpha"] = self.alpha
        d["labels_key"] = self.labels_key
        d["unlabeled_category"] = self.unlabeled_category
        d["n_labels"] = len(self.label_categories)
        d["n_labelled"] = int(self._label_counts.sum())
        return d

    @torch.inference_mode()
    def elbo(
        self,
        adata: AnnData | None = None,
        *,
        n_samples: int = 10,
        batch_size: int = 256,
        seed: int = 0,
        observed_labels: bool = False,
    ) -> np.ndarray:
        """Per-cell ELBO (nats): the unlabelled bound ``U(x)`` of ``log p(x)``, or ``L(x, y)``.

        Parameters
        ----------
        adata
            Cells (same genes, known batches). None: the training data.
        n_samples
            Posterior draws averaged per cell.
        batch_size
            Cells per forward pass.
        seed
            Seeds the draws.
        observed_labels
            False (default): ``U(x)`` for every cell, a bound on ``log p(x)`` comparable with
            the other VAEs' and :meth:`marginal_log_likelihood`. True: for the cells with an
            observed label (the training labels, or ``adata.obs[labels_key]``) the bound
            ``L(x, y)`` of ``log p(x, y)``, the training objective's term.

        Returns
        -------
        np.ndarray
            (n_cells,) float64.
        """
        observed_labels = checks.boolean("observed_labels", observed_labels)
        labels = self._observed_codes(adata) if observed_labels else None
        data = _with_labels(self._cells(adata), labels)
        module = self._trained_module()
        n_samples = checks.positive_int("n_samples", n_samples)
        out = []
        with _seeded(seed, self.device):
            for batch in self._minibatches(data, batch_size):
                total = torch.zeros(batch.n_cells, device=self.device)
                for _ in range(n_samples):
                    total += module.loss(batch).elbo
                out.append((total / n_samples).cpu())
        return torch.cat(out).double().numpy()

    @torch.inference_mode()
    def generate(
        self,
        n_cells: int,
        *,
        label: Any = None,
        batch: Any = None,
        covariates: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> AnnData:
        """Cells drawn from the model, of given labels (the FSVAE's label-conditional draw).

        ``y`` given (or ``y ~ Cat(pi)``), ``z2 ~ N(0, I)``, ``z1 ~ p(z1 | z2, y)``,
        ``l ~ p(l | s)``, ``x ~ p(x | z1, l, s)``.

        Parameters
        ----------
        n_cells
            Number of cells to draw.
        label
            One label for every cell (as in ``adata.obs[labels_key]``), or one per cell;
            None: drawn from ``p(y)``.
        batch
            One batch label for every cell, or one per cell; None: the first batch.
        covariates
            ``{key: value}`` for the covariates beyond the batch, as
            :meth:`ZINBVAE.generate`.
        seed
            Seeds the draw.

        Returns
        -------
        AnnData
            Counts in ``X`` (CSR), ``obs["label"]`` (categorical), ``obs["batch"]``,
            ``obs["library_size"]``, the drawn ``z1`` in ``obsm["X_latent"]``, and covariate
            columns when the model has covariates.
        """
        module = self._trained_module()
        n_cells = checks.positive_int("n_cells", n_cells)
        codes = self._batch_codes(batch, n_cells)
        label_codes = self._label_codes_for(label, n_cells)
        categorical, continuous = self._covariate_values(covariates)
        decode_under = self._prior_covariates(n_cells, categorical, continuous)
        module.to(self.device).eval()
        with _seeded(seed, self.device):
            if label_codes is None:
                y = torch.multinomial(module.log_pi.exp(), n_cells, replacement=True)
            else:
                y = torch.as_tensor(label_codes, device=self.device)
            z = module.sample_prior_z_given_y(y)  # (N, L)
            log_library = module.library_prior(codes).sample()  # (N, 1)
            x = module.generative(z, log_library, codes, decode_under).sample()  # (N, G)
        out = AnnData(
            X=sp.csr_matrix(x.cpu().numpy()),
            obs=pd.DataFrame(
                {
                    "label": pd.Categorical.from_codes(y.cpu().numpy(), self.label_categories),
                    "batch": pd.Categorical.from_codes(codes.cpu().numpy(), self.batch_categories),
                    "library_size": torch.exp(log_library).squeeze(-1).cpu().numpy(),
                },
                index=[f"generated_{i}" for i in range(n_cells)],
            ),
            var=pd.DataFrame(index=self.var_names),
        )
        out.obsm["X_latent"] = z.cpu().numpy()
        for key, column in self._covariate_columns(decode_under).items():
            out.obs[key] = column
        return out

    def _label_codes_for(self, label: Any, n_cells: int) -> np.ndarray | None:
        if label is None:
            return None
        values = [label] if isinstance(label, str) or np.ndim(label) == 0 else list(label)
        text = np.array([_label_text(v) for v in values], dtype=object)
        codes = _codes(text, np.ones(len(text), dtype=bool), self.label_categories)
        if len(codes) == 1:
            codes = np.repeat(codes, n_cells)
        if len(codes) != n_cells:
            raise ValueError(f"label has {len(codes)} values for n_cells={n_cells}.")
        return codes

    # --------------------------------------------------------------------------- persistence
    def _save_meta(self) -> dict[str, Any]:
        meta = super()._save_meta()
        meta["labels"] = {
            "key": self.labels_key,
            "unlabeled_category": self.unlabeled_category,
            "categories": list(self.label_categories),
            "counts": [int(n) for n in self._label_counts],
            "alpha": self.alpha,
        }
        meta["calibration"] = dict(self.calibration)
        return meta

    @classmethod
    def _restore(
        cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], adata: AnnData | None
    ) -> SSVAE:
        model = cls.__new__(cls)
        config = SSVAEConfig.from_dict(meta["config"])
        model._init_state(DataSetup.from_dict(meta["setup"]), config, data=None)
        labels = meta["labels"]
        model.labels_key, model.unlabeled_category = labels["key"], labels["unlabeled_category"]
        model.label_categories = list(labels["categories"])
        model._label_counts = np.asarray(labels["counts"], dtype=np.int64)
        model.alpha = float(labels["alpha"])
        model.calibration = dict(meta.get("calibration") or {})
        model.training = meta.get("training", {})
        n_batch = model.setup.n_batch
        module = model._build_module(torch.zeros(n_batch), torch.ones(n_batch))
        module.load_state_dict(tensors)
        model.module = module.eval()
        if adata is not None:
            codes = None  # the observed labels when adata has the column and only known labels
            if model.labels_key in adata.obs:
                text, _, known = read_labels(adata, model.labels_key, model.unlabeled_category)
                try:
                    codes = _codes(text, known, model.label_categories)
                except ValueError:
                    codes = None
            model._data = _with_labels(model._read_query(adata), codes)
        model._obs_names = None if adata is None else pd.Index(adata.obs_names)
        model._adata = adata
        history = pd.DataFrame(meta["history"])
        model.history = history.set_index("epoch") if "epoch" in history else history
        for name in ("train_indices", "validation_indices"):
            value = meta.get(name)
            setattr(model, name, None if value is None else np.asarray(value, dtype=np.int64))
        return model
