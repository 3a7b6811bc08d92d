"""User-facing VAEs over one implementation: ZINBVAE, NBVAE, PoissonVAE and GaussianVAE.

The path through the code: the AnnData boundary (:mod:`scvae.data`) validates the cells, the
model builds a :class:`~scvae.module.vae.VAEModule` from its :class:`VAEConfig`,
:func:`scvae.train.train_vae` fits it with Lightning, and the getters below run the trained
module over :class:`~scvae.minibatch.Minibatch` chunks and write results back into AnnData.
This file never imports Lightning (``fit`` imports :mod:`scvae.train` when it runs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from scvae import checks
from scvae.backed import minibatches
from scvae.data import (
    CellData,
    DataSetup,
    check_writable,
    latent_slots,
    library_log_prior,
    read_query_data,
    read_training_data,
)
from scvae.distributions import ObservationModel, observation_model
from scvae.minibatch import Minibatch, sparse_input_pays
from scvae.models._de import DifferentialExpression
from scvae.models._io import SavedModel
from scvae.models._vae_config import VAEConfig
from scvae.models._vae_queries import VAEQueries, _seeded
from scvae.module.vae import VAEModule

__all__ = ["VAEModel"]

_LOG = logging.getLogger("scvae")
#: the fit options recorded in ``uns[key]["params"]`` and ``model.training``
_RECORDED = (
    "max_epochs",
    "n_epochs_trained",
    "best_epoch",
    "batch_size",
    "lr",
    "weight_decay",
    "train_size",
    "early_stopping",
    "patience",
    "n_steps_kl_warmup",
    "seed",
    "device",
    "world_size",
    "global_rank",
    "interrupted",
    "resumed",
)


class VAEModel(VAEQueries, DifferentialExpression, SavedModel):
    """Shared implementation of the VAEs; see :class:`ZINBVAE` for the documentation."""

    likelihood: ClassVar[Literal["zinb", "nb", "poisson", "gaussian"]] = "zinb"
    default_key: ClassVar[str] = "zinbvae"
    #: the construction options' class (a subclass of :class:`VAEConfig` for richer models)
    _config_class: ClassVar[type[VAEConfig]] = VAEConfig

    def __init__(
        self,
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
    ) -> None:
        config = VAEConfig(
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            dispersion=dispersion,
            library=library,
            encode_covariates=encode_covariates,
        )
        self._setup_from(
            adata,
            layer=layer,
            batch_key=batch_key,
            config=config,
            categorical_covariate_keys=categorical_covariate_keys,
            continuous_covariate_keys=continuous_covariate_keys,
        )

    # ------------------------------------------------------------------------ construction
    def _setup_from(
        self,
        adata: AnnData,
        *,
        layer: str | None,
        batch_key: str | None,
        config: VAEConfig,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
    ) -> None:
        counts = self._reads_counts(config)
        setup, data = read_training_data(
            adata,
            layer=layer,
            batch_key=batch_key,
            counts=counts,
            nonnegative=counts,
            categorical_covariate_keys=categorical_covariate_keys,
            continuous_covariate_keys=continuous_covariate_keys,
            backed=True,
        )
        self._init_state(setup, config, data=self._transform(data, config))
        self._obs_names = pd.Index(adata.obs_names)
        self._adata = adata  # a reference (no copy): its obs columns name groups for DE

    def _init_state(self, setup: DataSetup, config: VAEConfig, *, data: CellData | None) -> None:
        self.setup = setup
        self.config = config
        self._data = data
        self._obs_names: pd.Index | None = None  # of the training (or default) cells
        self._adata: AnnData | None = None  # the training (or default) AnnData, by reference
        self.module: VAEModule | None = None
        self.history = pd.DataFrame()
        self.training: dict[str, Any] = {}
        self.train_indices: np.ndarray | None = None
        self.validation_indices: np.ndarray | None = None
        self.device = torch.device("cpu")
        self._align_genes = False  # a mapped model aligns its queries' genes by name

    def _reads_counts(self, config: VAEConfig) -> bool:
        """Whether the input must be raw counts (every model but a non-normalizing Gaussian)."""
        return True

    def _transform(self, data: CellData, config: VAEConfig) -> CellData:
        """What the module reads, from the validated cells (identity for count models)."""
        return data

    def _build_module(self, log_mean: torch.Tensor, log_var: torch.Tensor) -> VAEModule:
        return VAEModule(
            self.setup.n_genes,
            self.setup.n_batch,
            log_mean,
            log_var,
            likelihood=self.likelihood,
            **self._module_options(),
        )

    def _module_options(self) -> dict[str, Any]:
        """The module's options: the configuration and the sizes of the covariates."""
        options = self.config.module_options()
        covariates = self.setup.covariates
        if covariates:  # a model without covariates builds exactly the module it always did
            options["n_cats_per_cov"] = covariates.n_categories
            options["n_continuous_cov"] = covariates.n_continuous
        return options

    @property
    def is_trained(self) -> bool:
        """Whether the model has weights (fitted or loaded)."""
        return self.module is not None

    @property
    def observation(self) -> type[ObservationModel]:
        """The observation-model class of :attr:`likelihood`, e.g. ``scvae.distributions.ZINB``."""
        return observation_model(self.likelihood)

    @property
    def var_names(self) -> pd.Index:
        """Genes the model was trained on, in order."""
        return pd.Index(self.setup.var_names)

    @property
    def batch_categories(self) -> list[str]:
        """Batch labels known to the model."""
        return list(self.setup.batch_categories)

    @property
    def covariate_categories(self) -> dict[str, list[str]]:
        """The categories known to the model of each categorical covariate."""
        covariates = self.setup.covariates
        return {
            key: list(categories)
            for key, categories in zip(
                covariates.categorical_keys, covariates.categories, strict=True
            )
        }

    def __repr__(self) -> str:
        state = "trained" if self.is_trained else "not trained"
        c = self.config
        keys = self.setup.covariates.keys
        covariates = f", covariates {list(keys)}" if keys else ""
        return (
            f"{type(self).__name__}({self.setup.n_genes} genes, {self.setup.n_batch} batches"
            f"{covariates}, n_latent={c.n_latent}, dispersion={c.dispersion!r}, "
            f"library={c.library!r}; {state})"
        )

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
    ) -> VAEModel:
        """Fit by maximizing the ELBO with amortized, reparameterized minibatch VI.

        Training always starts from a fresh initialization drawn with ``seed``, so the same
        seed gives the same model on the same machine.

        Parameters
        ----------
        max_epochs
            Passes over the training cells; None picks ``min(400, 400 * 20000 / n_cells)``.
        batch_size
            Cells per minibatch (at least 2: BatchNorm needs two cells).
        lr, weight_decay
            Adam learning rate and weight decay.
        train_size
            Fraction of cells used for training; the rest (seeded split) is the validation set
            for early stopping and the history. 1.0 trains on every cell: there is then no
            validation, so early stopping is off (``training["early_stopping"]`` says so).
        early_stopping
            Stop when the validation ELBO has not improved for ``patience`` epochs after the KL
            warm-up, and keep the weights of the best validation epoch.
        patience
            See ``early_stopping``.
        n_steps_kl_warmup
            Optimizer steps over which the weight of KL(z) rises linearly from 0 to 1. None: a
            tenth of all steps, so the weight reaches 1 early and most of training maximizes
            the ELBO itself (on PBMC 3k a tenth reached a better held-out ELBO, sooner, than a
            quarter; ``benchmarks/speed.py``).
        seed
            Seeds the split, the initialization, the minibatch order and the MC samples.
            None draws a random seed, recorded in ``training["seed"]``.
        accelerator, devices
            Lightning's; "auto" uses one GPU when present, else the CPU. ``devices=N`` with
            ``strategy="ddp"`` trains on N devices (GPUs, or CPU processes).
        num_nodes, strategy
            Lightning's distributed training: ``strategy="ddp"`` with ``devices=N`` (and
            ``num_nodes=M`` machines) trains data-parallel on ``N x M`` processes, each
            holding its disjoint shard of the training and validation cells;
            ``batch_size`` is per process (the global minibatch is ``N x M x batch_size``).
            Run it from a script, which every process runs (``srun`` on SLURM, see the user
            guide *Many GPUs and nodes*); after fit every rank holds the same model
            (``training["global_rank"]`` tells them apart, e.g. to write files on rank 0
            only). Strategies that spawn processes (``ddp_spawn``, ``ddp_notebook``) are
            refused: the model would stay in the spawned processes.
        precision
            ``"bf16-mixed"`` trains under bfloat16 autocast (the layers' products in bfloat16,
            the likelihood in float32), for GPUs with bfloat16 units; the fitted model is
            float32 and scored in float32. Default full float32. Measured on PBMC 3k (CPU
            autocast, ``benchmarks/precision.py``, 4 seeds): held-out ELBO -0.38 to +0.65
            nats/cell from float32's (-0.07 % to +0.13 %, mean +0.31: not worse); not yet
            measured on a GPU.
        progress_bar
            Show progress: a bar on a terminal, else one line per few epochs on stderr.
        checkpoint_dir
            Directory for a checkpoint written after every epoch (``last.ckpt``). If it holds
            one of the same fit (options, model and cells), training resumes from it: after a
            crash or ``kill -9``, the same call continues where it stopped and, with the same
            seed on the CPU, ends with the weights of an uninterrupted fit. A checkpoint of
            another fit is refused. The file is removed when the fit completes.
        callbacks
            Extra Lightning callbacks (they see the :class:`~scvae.train.TrainingPlan`).

        Returns
        -------
        The fitted model (``self``); :attr:`history` holds per-epoch train/validation ELBO,
        reconstruction and KL terms, KL weight and elapsed seconds (``time``).

        Raises
        ------
        TrainingDivergedError
            The loss became NaN/inf; the message says what probably caused it. The model keeps
            its previous state.
        """
        from scvae.train import TrainConfig, train_vae  # Lightning: imported lazily

        data = self._require_training_data()
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
            num_nodes=num_nodes,
            strategy=strategy,
            precision=precision,
            progress_bar=progress_bar,
            checkpoint_dir=checkpoint_dir,
        )
        log_mean, log_var = library_log_prior(
            data.library_size, data.batch_index, self.setup.n_batch
        )
        result = train_vae(  # raises TrainingDivergedError with a clean traceback
            lambda: self._build_module(log_mean, log_var),
            data,
            config,
            callbacks=callbacks,
            model_options=self._fingerprint_options(),
        )
        if config.early_stopping and not result.record["early_stopping"]:
            _LOG.info("train_size=1.0 leaves no validation cells: early stopping is off.")
        self.module = result.module
        self.device = result.device
        self.history = result.history
        self.train_indices, self.validation_indices = (
            result.train_indices,
            result.validation_indices,
        )
        options = {**config.to_dict(), **result.record}
        self.training = {k: options[k] for k in _RECORDED if k in options}
        return self

    def _fingerprint_options(self) -> dict[str, Any]:
        """The model options a checkpoint must match (the covariates' setup when there are)."""
        options = {"model": type(self).__name__, **self.config.to_dict()}
        if self.setup.covariates:
            options["covariates"] = self.setup.covariates.to_dict()
        else:  # no effect without covariates: checkpoints of older fits still resume
            options.pop("encode_covariates")
        return options

    def _require_training_data(self) -> CellData:
        if self._data is None:
            raise ValueError(
                "This model was loaded without its training AnnData; pass adata to "
                f"{type(self).__name__}.load(path, adata=...) to train or query it."
            )
        return self._data

    def map_query(
        self,
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
        """Map a query onto this trained reference (scArches): a new model embedding both.

        The query's genes are aligned to the reference's by name (missing genes read as zero
        counts, extra genes dropped; refused below :data:`scvae.data.MIN_GENE_OVERLAP` of the
        reference's genes, a warning below :data:`scvae.data.WARN_GENE_OVERLAP`). Its new
        batches (and new categories of each categorical covariate) get new rows in every
        batch (covariate) embedding, encoders and decoder, new ``log theta`` rows with
        ``dispersion="gene-batch"`` and their empirical library prior; a batch the reference
        knows keeps its row. Only these new parameters are trained, by the same ELBO and
        training loop as :meth:`fit`; every other weight, and the BatchNorm statistics, stay
        the reference's, so ``mapped.get_latent(reference_adata)`` equals
        ``model.get_latent(reference_adata)`` exactly. This model is not modified, nor is
        ``adata``.

        Parameters
        ----------
        adata
            The query cells: raw counts in the reference's layer, the reference's batch
            column (and covariate columns); no labels or other columns needed. In memory,
            not a view, not the reference's own cells (same ``obs_names`` as every training
            cell: refused; some shared names: a warning).
        max_epochs
            Passes over the query's training cells; None: :func:`default_map_epochs`
            (``min(100, 100 * 20000 / n_cells)``).
        lr
            Adam's learning rate; 1e-2 (ten times :meth:`fit`'s): only the new rows learn,
            from a few steps per epoch (on the 430-cell PBMC query, 1e-3 had not converged in
            40 epochs; 1e-2 and 3e-2 reached the same query ELBO, ``benchmarks/map_query.py``).
        batch_size, train_size, seed, accelerator, devices, progress_bar, callbacks
            As in :meth:`fit`.
        weight_decay
            Adam's weight decay on the new parameters (0 by default, as scArches).
        early_stopping, patience
            Stop when the query's validation ELBO has not improved for ``patience`` epochs.
        n_steps_kl_warmup
            KL warm-up steps; 0 by default (the networks are trained, only the new rows learn).
        new_row_init
            How the new rows start: ``"zero"`` (as a fresh embedding) or ``"mean"`` of the
            reference's rows (measured in ``benchmarks/map_query.py``).
        batchnorm
            ``"eval"`` (default): the reference's BatchNorm layers normalize by their running
            statistics while mapping, as they do when embedding; ``"train"``: by the query
            minibatch's statistics (the reference's running statistics are restored after).

        Returns
        -------
        VAEModel
            A new model of this class: :attr:`batch_categories` are the reference's and then
            the new ones; its default cells (``adata=None``) are the query's; ``training``
            (and ``uns[key]["params"]``) record ``map_query``, the reference's batches and
            epochs, the new batches, the gene overlap and the mapping's own epochs and seconds.

        Raises
        ------
        ValueError
            No or too little gene overlap, a view, backed data, the reference's own cells,
            missing batch or covariate values, bad counts.
        KeyError
            The query lacks the batch column or a covariate column of the reference.

        Examples
        --------
        >>> reference = scvae.ZINBVAE(ref_adata, batch_key="batch").fit()
        >>> mapped = reference.map_query(query_adata)
        >>> mapped.write_latent(query_adata)  # obsm["X_zinbvae"], same space as the reference
        """
        from scvae.models._map_query import map_query

        return map_query(
            self,
            adata,
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
            new_row_init=new_row_init,
            batchnorm=batchnorm,
            callbacks=callbacks,
        )

    # ----------------------------------------------------------------------------- inference
    def _cells(self, adata: AnnData | None) -> CellData:
        if adata is None:
            return self._require_training_data()
        return self._read_query(adata)

    def _read_query(self, adata: AnnData) -> CellData:
        counts = self._reads_counts(self.config)
        data = read_query_data(
            adata,
            self.setup,
            counts=counts,
            nonnegative=counts,
            align_genes=self._align_genes,
            backed=True,
        )
        return self._transform(data, self.config)

    def _minibatches(self, data: CellData, batch_size: int) -> Iterator[Minibatch]:
        """The cells in order, as minibatches on the model's device, module in eval mode.

        The encoders read the counts by their non-zeros where that is faster (as in training).
        """
        module = self._trained_module().to(self.device).eval()
        batch_size = checks.positive_int("batch_size", batch_size)
        module.sparse_input = sparse_input_pays(data, self.device)
        loader = minibatches(  # in memory, or read in blocks from a backed AnnData
            data,
            np.arange(data.X.shape[0]),
            batch_size=batch_size,
            shuffle=False,
            dense=not module.sparse_input,  # the encoders and likelihoods read the non-zeros
        ).to(self.device)
        yield from loader

    def _trained_module(self) -> VAEModule:
        if self.module is None:
            raise RuntimeError(f"{type(self).__name__} is not trained yet: call model.fit() first.")
        return self.module

    @torch.inference_mode()
    def get_latent(
        self,
        adata: AnnData | None = None,
        *,
        give_mean: bool = True,
        batch_size: int = 1024,
        seed: int = 0,
    ) -> np.ndarray:
        """Cell embedding: the mean of ``q(z | x, s)`` (or one posterior sample).

        Parameters
        ----------
        adata
            Cells to embed (same genes; known batch categories). None: the training data.
        give_mean
            Posterior mean (default) or one draw from ``q(z | x, s)``.
        batch_size
            Cells per forward pass.
        seed
            Seeds the draw when ``give_mean=False``.

        Returns
        -------
        np.ndarray
            (n_cells, n_latent) float32.
        """
        module = self._trained_module()
        data = self._cells(adata)
        with _seeded(seed, self.device):
            chunks = []
            for batch in self._minibatches(data, batch_size):
                qz = module.inference(batch).qz
                chunks.append((qz.loc if give_mean else qz.sample()).cpu())
        return torch.cat(chunks).numpy()

    def write_latent(
        self,
        adata: AnnData,
        *,
        key_added: str | None = None,
        give_mean: bool = True,
    ) -> None:
        """Write the embedding of ``adata``'s cells and the model's parameters into ``adata``.

        Writes ``adata.obsm["X_<key>"]`` (n_cells x n_latent) and ``adata.uns[<key>]["params"]``
        (model and fit options), with ``<key>`` = ``key_added`` or the model's default
        (``"zinbvae"``, ``"nbvae"``, ``"poissonvae"``); ``key_added="X_scvi"`` writes
        ``obsm["X_scvi"]`` and ``uns["scvi"]``. Nothing else is written, and nothing at all if
        an error is raised.

        Parameters
        ----------
        adata
            The cells to embed and write into (same genes, known batches; not a view).
        key_added
            Name of the result (see above); None: the model's default key.
        give_mean
            Posterior mean (default) or one draw from ``q(z | x, s)``.
        """
        check_writable(adata)
        obsm_key, uns_key = latent_slots(key_added, self.default_key)
        latent = self.get_latent(adata, give_mean=give_mean)
        params = self.uns_params()
        adata.obsm[obsm_key] = latent
        adata.uns[uns_key] = {"params": params}

    def uns_params(self) -> dict[str, Any]:
        """Model and fit options as a flat, h5ad-serialisable dict (None values omitted)."""
        from scvae import __version__

        record = {
            "model": type(self).__name__,
            "likelihood": self.likelihood,
            **self._config_record(),
            "layer": self.setup.layer,
            "batch_key": self.setup.batch_key,
            "batch_categories": list(self.setup.batch_categories),
            "categorical_covariate_keys": list(self.setup.covariates.categorical_keys) or None,
            "continuous_covariate_keys": list(self.setup.covariates.continuous_keys) or None,
            **self.training,
            "scvae_version": __version__,
        }
        if not self.history.empty and "validation_elbo" in self.history:
            record["final_validation_elbo"] = float(self.history["validation_elbo"].iloc[-1])
        return {k: v for k, v in record.items() if v is not None}

    def _config_record(self) -> dict[str, Any]:
        """The configuration as written to ``uns`` (count models have no ``log_normalize``)."""
        d = self.config.to_dict()
        d.pop("log_normalize")
        return d

    # --------------------------------------------------------------------------- persistence
    def _save_meta(self) -> dict[str, Any]:
        self._trained_module()
        return {
            "config": self.config.to_dict(),
            "setup": self.setup.to_dict(),
            "training": self.training,
            "history": self.history.reset_index().to_dict(orient="list"),
            "train_indices": self.train_indices,
            "validation_indices": self.validation_indices,
            "align_genes": self._align_genes,
        }

    def _save_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self._trained_module().state_dict())

    @classmethod
    def _restore(
        cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], adata: AnnData | None
    ) -> VAEModel:
        model = cls.__new__(cls)
        config = cls._config_class.from_dict(meta["config"])
        model._init_state(DataSetup.from_dict(meta["setup"]), config, data=None)
        model.training = meta.get("training", meta.get("fit_params", {}))  # older: fit_params
        model._align_genes = bool(meta.get("align_genes", False))
        n_batch = model.setup.n_batch
        module = model._build_module(torch.zeros(n_batch), torch.ones(n_batch))
        module.load_state_dict(tensors)
        model.module = module.eval()
        model._data = model._read_query(adata) if adata is not None else None
        model._obs_names = None if adata is None else pd.Index(adata.obs_names)
        model._adata = adata
        history = pd.DataFrame(meta["history"])
        model.history = history.set_index("epoch") if "epoch" in history else history
        for name in ("train_indices", "validation_indices"):
            value = meta.get(name)
            setattr(model, name, None if value is None else np.asarray(value, dtype=np.int64))
        return model
