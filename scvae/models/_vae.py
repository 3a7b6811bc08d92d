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
import scipy.sparse as sp
import torch
from anndata import AnnData

from scvae import checks
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
from scvae.minibatch import CSRMinibatches, Minibatch, sparse_input_pays
from scvae.models._io import SavedModel
from scvae.models._vae_config import VAEConfig
from scvae.module.vae import VAEModule

__all__ = ["VAEModel"]

_LOG = logging.getLogger("scvae")
# Elements of one (K, B, G) intermediate tensor allowed when scoring (bounds scoring memory).
_SCORING_BUDGET = 2**23
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
    "interrupted",
    "resumed",
)


class VAEModel(SavedModel):
    """Shared implementation of the VAEs; see :class:`ZINBVAE` for the documentation."""

    likelihood: ClassVar[Literal["zinb", "nb", "poisson", "gaussian"]] = "zinb"
    default_key: ClassVar[str] = "zinbvae"

    def __init__(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        batch_key: str | None = None,
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
        )
        self._setup_from(adata, layer=layer, batch_key=batch_key, config=config)

    # ------------------------------------------------------------------------ construction
    def _setup_from(
        self, adata: AnnData, *, layer: str | None, batch_key: str | None, config: VAEConfig
    ) -> None:
        counts = self._reads_counts(config)
        setup, data = read_training_data(
            adata, layer=layer, batch_key=batch_key, counts=counts, nonnegative=counts
        )
        self._init_state(setup, config, data=self._transform(data, config))
        self._obs_names = pd.Index(adata.obs_names)

    def _init_state(self, setup: DataSetup, config: VAEConfig, *, data: CellData | None) -> None:
        self.setup = setup
        self.config = config
        self._data = data
        self._obs_names: pd.Index | None = None  # of the training (or default) cells
        self.module: VAEModule | None = None
        self.history = pd.DataFrame()
        self.training: dict[str, Any] = {}
        self.train_indices: np.ndarray | None = None
        self.validation_indices: np.ndarray | None = None
        self.device = torch.device("cpu")

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
            **self.config.module_options(),
        )

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

    def __repr__(self) -> str:
        state = "trained" if self.is_trained else "not trained"
        c = self.config
        return (
            f"{type(self).__name__}({self.setup.n_genes} genes, {self.setup.n_batch} batches, "
            f"n_latent={c.n_latent}, dispersion={c.dispersion!r}, library={c.library!r}; "
            f"{state})"
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
            Lightning's; "auto" uses one GPU when present, else the CPU.
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
        from scvae.train import TrainConfig, TrainingDivergedError, train_vae  # Lightning: lazily

        data = self._require_training_data()
        config = TrainConfig(
            max_epochs=checks.optional_positive_int("max_epochs", max_epochs),
            batch_size=checks.positive_int("batch_size", batch_size, minimum=2),
            lr=checks.fraction("lr", lr, low=0.0, high=float("inf"), include_low=False),
            weight_decay=checks.fraction("weight_decay", weight_decay, low=0.0, high=np.inf),
            train_size=checks.fraction("train_size", train_size, low=0.0, include_low=False),
            early_stopping=bool(early_stopping),
            patience=checks.positive_int("patience", patience),
            n_steps_kl_warmup=checks.optional_positive_int(
                "n_steps_kl_warmup", n_steps_kl_warmup, minimum=0
            ),
            seed=checks.resolve_seed(seed),
            accelerator=accelerator,
            devices=devices,
            progress_bar=bool(progress_bar),
            checkpoint_dir=None if checkpoint_dir is None else os.fspath(checkpoint_dir),
        )
        log_mean, log_var = library_log_prior(
            data.library_size, data.batch_index, self.setup.n_batch
        )
        try:
            result = train_vae(
                lambda: self._build_module(log_mean, log_var),
                data,
                config,
                callbacks=callbacks,
                model_options={"model": type(self).__name__, **self.config.to_dict()},
            )
        except TrainingDivergedError as err:
            raise TrainingDivergedError(str(err)) from None
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

    def _require_training_data(self) -> CellData:
        if self._data is None:
            raise ValueError(
                "This model was loaded without its training AnnData; pass adata to "
                f"{type(self).__name__}.load(path, adata=...) to train or query it."
            )
        return self._data

    # ----------------------------------------------------------------------------- inference
    def _cells(self, adata: AnnData | None) -> CellData:
        if adata is None:
            return self._require_training_data()
        return self._read_query(adata)

    def _read_query(self, adata: AnnData) -> CellData:
        counts = self._reads_counts(self.config)
        data = read_query_data(adata, self.setup, counts=counts, nonnegative=counts)
        return self._transform(data, self.config)

    def _minibatches(self, data: CellData, batch_size: int) -> Iterator[Minibatch]:
        """The cells in order, as minibatches on the model's device, module in eval mode.

        The encoders read the counts by their non-zeros where that is faster (as in training).
        """
        module = self._trained_module().to(self.device).eval()
        batch_size = checks.positive_int("batch_size", batch_size)
        module.sparse_input = sparse_input_pays(data, self.device)
        loader = CSRMinibatches(
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

    def _batch_codes(self, batch: Any, n_cells: int) -> torch.Tensor:
        """Codes of one batch label for every cell, or of one label per cell."""
        if batch is None:
            labels = [self.setup.batch_categories[0]] * n_cells
        elif isinstance(batch, str) or np.ndim(batch) == 0:
            labels = [batch] * n_cells
        else:
            labels = list(batch)
        if len(labels) != n_cells:
            raise ValueError(f"batch has {len(labels)} labels for n_cells={n_cells}.")
        codes = [self.setup.batch_code(b) for b in labels]
        return torch.tensor(codes, dtype=torch.int64, device=self.device)

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

    @torch.inference_mode()
    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        *,
        gene_list: Sequence[str] | None = None,
        transform_batch: Any = None,
        library_size: float | Literal["latent"] = 1e4,
        n_samples: int = 1,
        layer: str | None = None,
        batch_size: int = 256,
        seed: int = 0,
    ) -> pd.DataFrame | None:
        """Denoised expression: ``library_size * rho(z, s)``, averaged over posterior draws.

        For :class:`GaussianVAE` it is the decoded mean ``mu(z, s)`` in its input space
        (log-normalized by default) and ``library_size`` does not apply.

        Parameters
        ----------
        adata
            Cells (None: the training data).
        gene_list
            Genes to return (names of :attr:`var_names`); None: all.
        transform_batch
            Decode every cell as if it came from this batch (a label as in
            ``adata.obs[batch_key]``, string or number), or from each of several batches and
            average: batch-corrected expression. None decodes each cell with its own batch.
        library_size
            Scale of the proportions ``rho``: a number (1e4: counts per 10k), or ``"latent"``
            for each cell's own library (posterior mean of ``l``, or the observed total when
            ``library="observed"``): the expected counts ``mu``.
        n_samples
            1: decode the posterior mean of ``z``. More: average over that many draws of
            ``z ~ q(z | x, s)`` (and of ``l`` with ``library_size="latent"``).
        layer
            Write the result to ``adata.layers[layer]`` (float32, every gene) instead of
            returning it; ``adata`` must then be given and not be a view.
        batch_size
            Cells per forward pass: memory is the output plus one chunk of this many cells.
        seed
            Seeds the draws when ``n_samples > 1``.

        Returns
        -------
        pandas.DataFrame or None
            Cells x genes, float32, indexed by ``obs_names`` with the gene names as columns;
            None when written to ``layer``.
        """
        module = self._trained_module()
        n_samples = checks.positive_int("n_samples", n_samples)
        if layer is not None:
            if adata is None:
                raise ValueError("layer= writes into adata.layers: pass the adata to write to.")
            if gene_list is not None:
                raise ValueError("A layer holds every gene: pass gene_list=None with layer=.")
            check_writable(adata)
        genes = self._gene_positions(gene_list)
        if isinstance(library_size, str) and library_size != "latent":
            raise ValueError(f"library_size must be a number or 'latent', got {library_size!r}.")
        if not isinstance(library_size, str):
            checks.fraction("library_size", library_size, low=0.0, high=np.inf, include_low=False)
        data = self._cells(adata)
        codes = self._transform_codes(transform_batch)
        latent_library = library_size == "latent" and module.observation.counts
        scale = 1.0 if library_size == "latent" else float(library_size)
        out = np.empty((data.X.shape[0], len(genes)), dtype=np.float32)  # the output itself
        index = torch.as_tensor(genes, device=self.device)
        start = 0
        with _seeded(seed, self.device):
            for batch in self._minibatches(data, batch_size):
                posterior = module.encode(batch)
                decode_as = [batch.batch_index] if not codes else [
                    batch.batch_index.new_full((batch.n_cells,), code) for code in codes
                ]  # fmt: skip
                total = torch.zeros(batch.n_cells, len(genes), device=self.device)
                for _ in range(n_samples):
                    z, log_l = _posterior_point(module, batch, posterior, draw=n_samples > 1)
                    for b in decode_as:
                        expr = module.denoised(z, b, library_size=scale).index_select(-1, index)
                        total += expr * torch.exp(log_l) if latent_library else expr
                total /= n_samples * len(decode_as)
                out[start : start + batch.n_cells] = total.cpu().numpy()
                start += batch.n_cells
        if layer is not None:
            adata.layers[layer] = out
            return None
        obs_names = adata.obs_names if adata is not None else self._obs_names
        return pd.DataFrame(out, index=pd.Index(obs_names), columns=self.var_names[genes])

    def _gene_positions(self, gene_list: Sequence[str] | None) -> np.ndarray:
        """Positions of ``gene_list`` in :attr:`var_names` (all genes for None)."""
        if gene_list is None:
            return np.arange(self.setup.n_genes)
        names = [gene_list] if isinstance(gene_list, str) else [str(g) for g in gene_list]
        positions = self.var_names.get_indexer(names)
        missing = [n for n, p in zip(names, positions, strict=True) if p < 0]
        if missing:
            raise KeyError(
                f"gene_list has {len(missing)} genes the model was not trained on: "
                f"{', '.join(map(repr, missing[:10]))}{' ...' if len(missing) > 10 else ''}."
            )
        return positions

    def _transform_codes(self, transform_batch: Any) -> list[int]:
        """Batch codes to decode under: [] for each cell's own batch."""
        if transform_batch is None:
            return []
        labels = (
            [transform_batch]
            if isinstance(transform_batch, str) or np.ndim(transform_batch) == 0
            else list(transform_batch)
        )
        if not labels:
            raise ValueError("transform_batch is empty; give a batch, several, or None.")
        return [self.setup.batch_code(label) for label in labels]

    @torch.inference_mode()
    def elbo(
        self,
        adata: AnnData | None = None,
        *,
        n_samples: int = 10,
        batch_size: int = 256,
        seed: int = 0,
    ) -> np.ndarray:
        """Per-cell ELBO (nats), the reconstruction term averaged over ``n_samples`` draws.

        Parameters
        ----------
        adata
            Cells (same genes, known batches). None: the training data.
        n_samples
            Posterior draws averaged per cell (a positive integer).
        batch_size
            Cells per forward pass.
        seed
            Seeds the draws.

        Returns
        -------
        np.ndarray
            (n_cells,) ``E_q[log p(x|z,l)] - KL(q(z)||p(z)) - KL(q(l)||p(l))``.
        """
        module = self._trained_module()
        n_samples = checks.positive_int("n_samples", n_samples)
        data = self._cells(adata)
        out = []
        with _seeded(seed, self.device):
            for batch in self._minibatches(data, batch_size):
                total = torch.zeros(batch.n_cells, device=self.device)
                for _ in range(n_samples):
                    total += module.loss(batch).elbo
                out.append((total / n_samples).cpu())
        return torch.cat(out).double().numpy()

    @torch.inference_mode()
    def marginal_log_likelihood(
        self, adata: AnnData | None = None, *, n_samples: int = 100, seed: int = 0
    ) -> np.ndarray:
        """Importance-weighted (IWAE) estimate of ``log p(x)`` per cell.

        ``log (1/K) sum_k p(x, z_k, l_k) / q(z_k, l_k | x)`` with ``K = n_samples`` draws from
        the amortized posterior: a lower bound on ``log p(x)`` that tightens as K grows and is
        at least the ELBO in expectation.

        Parameters
        ----------
        adata
            Cells (same genes, known batches). None: the training data; score held-out cells
            with ``adata[model.validation_indices]``.
        n_samples
            Importance samples ``K`` per cell (a positive integer).
        seed
            Seeds the draws.

        Returns
        -------
        np.ndarray
            (n_cells,) float64, nats.
        """
        module = self._trained_module()
        n_samples = checks.positive_int("n_samples", n_samples)
        data = self._cells(adata)
        n_genes = self.setup.n_genes
        cells_per_chunk = max(1, min(256, _SCORING_BUDGET // n_genes))
        samples_per_block = max(1, min(n_samples, _SCORING_BUDGET // (cells_per_chunk * n_genes)))
        out = []
        with _seeded(seed, self.device):
            for batch in self._minibatches(data, cells_per_chunk):
                posterior = module.encode(batch)  # one pass of the encoders for all draws
                log_w = []
                for start in range(0, n_samples, samples_per_block):
                    k = min(samples_per_block, n_samples - start)
                    log_w.append(
                        module.log_importance_weights(
                            batch, n_samples=k, posterior=posterior
                        ).double()
                    )
                out.append(VAEModule.iwae_estimate(torch.cat(log_w)).cpu())
        return torch.cat(out).numpy()

    @torch.inference_mode()
    def sample(
        self,
        adata: AnnData | None = None,
        *,
        n_samples: int = 1,
        batch_size: int = 256,
        seed: int = 0,
    ) -> np.ndarray:
        """Posterior predictive counts: ``z, l ~ q(. | x, s)``, then ``x ~ p(x | z, l, s)``.

        Parameters
        ----------
        adata
            Cells (same genes, known batches). None: the training data.
        n_samples
            Draws per cell.
        batch_size
            Cells per forward pass.
        seed
            Seeds the draws.

        Returns
        -------
        np.ndarray
            (n_cells, n_genes) for ``n_samples=1``, else (n_samples, n_cells, n_genes); float32.
        """
        module = self._trained_module()
        n_samples = checks.positive_int("n_samples", n_samples)
        data = self._cells(adata)
        out = []
        with _seeded(seed, self.device):
            for batch in self._minibatches(data, batch_size):
                inf = module.inference(batch, n_samples=n_samples)
                px = module.generative(inf.z, inf.log_library, batch.batch_index)
                out.append(px.sample().cpu())  # (K, B, G)
        counts = torch.cat(out, dim=1).numpy()
        return counts[0] if n_samples == 1 else counts

    @torch.inference_mode()
    def generate(self, n_cells: int, *, batch: Any = None, seed: int = 0) -> AnnData:
        """Ancestral sampling from the prior: ``z ~ N(0, I)``, ``l ~ p(l | s)``, ``x ~ p(x|z,l,s)``.

        Parameters
        ----------
        n_cells
            Number of cells to draw.
        batch
            One batch label for every cell (string or number, as in ``adata.obs[batch_key]``),
            or one per cell; None: the first batch.
        seed
            Seeds the draw.

        Returns
        -------
        AnnData
            Counts in ``X`` (CSR), ``obs["batch"]``, the drawn ``z`` in ``obsm["X_latent"]`` and
            library sizes in ``obs["library_size"]``.
        """
        module = self._trained_module()
        n_cells = checks.positive_int("n_cells", n_cells)
        codes = self._batch_codes(batch, n_cells)
        module.to(self.device).eval()
        with _seeded(seed, self.device):
            z = torch.randn(n_cells, self.config.n_latent, device=self.device)  # (N, L)
            log_library = module.library_prior(codes).sample()  # (N, 1)
            x = module.generative(z, log_library, codes).sample()  # (N, G)
        x = x.cpu().numpy()
        categories = self.batch_categories
        out = AnnData(
            X=sp.csr_matrix(x) if self.observation.counts else x,
            obs=pd.DataFrame(
                {
                    "batch": pd.Categorical.from_codes(codes.cpu().numpy(), categories),
                    "library_size": torch.exp(log_library).squeeze(-1).cpu().numpy(),
                },
                index=[f"generated_{i}" for i in range(n_cells)],
            ),
            var=pd.DataFrame(index=self.var_names),
        )
        out.obsm["X_latent"] = z.cpu().numpy()
        return out

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
        }

    def _save_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self._trained_module().state_dict())

    @classmethod
    def _restore(
        cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], adata: AnnData | None
    ) -> VAEModel:
        model = cls.__new__(cls)
        config = VAEConfig.from_dict(meta["config"])
        model._init_state(DataSetup.from_dict(meta["setup"]), config, data=None)
        n_batch = model.setup.n_batch
        module = model._build_module(torch.zeros(n_batch), torch.ones(n_batch))
        module.load_state_dict(tensors)
        model.module = module.eval()
        model._data = model._read_query(adata) if adata is not None else None
        model._obs_names = None if adata is None else pd.Index(adata.obs_names)
        model.training = meta.get("training", meta.get("fit_params", {}))  # older: fit_params
        history = pd.DataFrame(meta["history"])
        model.history = history.set_index("epoch") if "epoch" in history else history
        for name in ("train_indices", "validation_indices"):
            value = meta.get(name)
            setattr(model, name, None if value is None else np.asarray(value, dtype=np.int64))
        return model

    # --------------------------------------------------------------------------- diagnostics
    @torch.inference_mode()
    def latent_kl(
        self,
        adata: AnnData | None = None,
        *,
        threshold: float = 0.01,
        batch_size: int = 1024,
    ) -> pd.DataFrame:
        """KL divergence and activity of each latent dimension: which dimensions are used.

        For each dimension ``d`` of ``z``, averaged over cells ``x``:

        * ``kl``: ``E_x[KL(q(z_d | x, s) || N(0, 1))]`` in nats, in closed form for the
          Gaussian posterior, ``0.5 (m^2 + s^2 - 1) - log s``. Summed over ``d`` it is the
          mean ``KL(q(z) || p(z))`` term of the ELBO (at KL weight 1) on the same cells.
        * ``activity``: ``Cov_x(E[z_d | x, s])``, the variance over cells of the posterior
          mean (Burda et al. 2016, "Importance Weighted Autoencoders").

        A dimension whose posterior equals the prior for every cell (KL near 0, activity near
        0) carries no information about the cell: *posterior collapse*. The encoder's dropout
        is off and nothing is sampled, so the result is deterministic.

        Parameters
        ----------
        adata
            Cells (same genes, known batches). None: the training data.
        threshold
            A dimension is ``active`` when its activity exceeds this (Burda et al. use 0.01).
        batch_size
            Cells per forward pass.

        Returns
        -------
        pandas.DataFrame
            One row per latent dimension (index ``dimension``, 0 .. n_latent - 1) with float
            columns ``kl`` and ``activity`` and the boolean ``active``.
        """
        module = self._trained_module()
        data = self._cells(adata)
        n_latent = self.config.n_latent
        kl_sum = torch.zeros(n_latent, dtype=torch.float64)  # (L,)
        mean_sum = torch.zeros(n_latent, dtype=torch.float64)  # (L,)
        mean_sq_sum = torch.zeros(n_latent, dtype=torch.float64)  # (L,)
        for batch in self._minibatches(data, batch_size):
            qz = module.inference(batch).qz
            m = qz.loc.double().cpu()  # (B, L) posterior means
            s = qz.scale.double().cpu()  # (B, L) posterior standard deviations
            kl_sum += (0.5 * (m.square() + s.square() - 1.0) - torch.log(s)).sum(0)
            mean_sum += m.sum(0)
            mean_sq_sum += m.square().sum(0)
        n = data.X.shape[0]
        mean = mean_sum / n
        activity = (mean_sq_sum / n - mean.square()).clamp_min(0.0)
        return pd.DataFrame(
            {
                "kl": (kl_sum / n).numpy(),
                "activity": activity.numpy(),
                "active": (activity > threshold).numpy(),
            },
            index=pd.RangeIndex(n_latent, name="dimension"),
        )


def _posterior_point(
    module: VAEModule, batch: Minibatch, posterior: tuple, *, draw: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``z`` (B, L) and ``log l`` (B, 1): posterior means, or one draw of each."""
    if draw:
        inf = module.inference(batch, posterior=posterior)
        return inf.z, inf.log_library
    qz, ql = posterior
    if ql is not None:
        return qz.loc, ql.loc
    return qz.loc, torch.log(module._totals(batch))


class _seeded:
    """Context manager: fork torch's RNG (CPU and the given CUDA device) and seed it."""

    def __init__(self, seed: int, device: torch.device) -> None:
        devices = [device] if device.type == "cuda" else []
        self._fork = torch.random.fork_rng(devices=devices)
        self.seed = checks.resolve_seed(seed)

    def __enter__(self) -> None:
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        self._fork.__exit__(*exc)
