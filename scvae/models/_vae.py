"""User-facing VAEs over one implementation: ZINBVAE, NBVAE, PoissonVAE and GaussianVAE."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from scvae.data import (
    CellData,
    CSRMinibatches,
    DataSetup,
    library_log_prior,
    log_normalize,
    read_query_data,
    read_training_data,
)
from scvae.distributions import NonZeros
from scvae.models._io import META_FILE, prepare_directory, read_meta
from scvae.module.vae import DISPERSIONS, LIBRARIES, VAEModule
from scvae.train import (
    EarlyStoppingAfterWarmup,
    TrainingDivergedError,
    TrainingPlan,
    make_trainer,
    recalibrate_batchnorm,
)

__all__ = ["NBVAE", "ZINBVAE", "GaussianVAE", "PoissonVAE", "VAEModel"]

_WEIGHTS_FILE = "model.pt"
# Elements of one (K, B, G) intermediate tensor allowed when scoring (bounds scoring memory).
_SCORING_BUDGET = 2**23


#: Largest fraction of non-zero counts at which the encoders read their input sparsely on the
#: CPU, and the fewest genes (``benchmarks/sparse_input.py`` measures the crossover).
SPARSE_INPUT_MAX_DENSITY = 0.1
SPARSE_INPUT_MIN_GENES = 8000


def sparse_input_pays(data: CellData, device: torch.device) -> bool:
    """Whether the encoders' first layer should read the counts by their non-zeros.

    On the CPU a sparse product costs ``nnz`` row gathers against ``G`` multiply-adds per cell
    for the dense one. Measured on PBMC 3k (about 5-7 % non-zeros): 1.16x faster per training
    step with all 16.6k genes, on par with 1 thread and 0.88x with 2 threads at 2,000 genes
    (the gather does not parallelize as well as the dense product). So: sparse for many genes
    at low density. On a GPU the dense product is so fast that the gather does not pay.
    """
    n_cells, n_genes = data.X.shape
    density = data.X.nnz / max(n_cells * n_genes, 1)
    return bool(
        device.type == "cpu"
        and density <= SPARSE_INPUT_MAX_DENSITY
        and n_genes >= SPARSE_INPUT_MIN_GENES
    )


def default_max_epochs(n_cells: int) -> int:
    """scVI's rule: 400 epochs up to 20k cells, then fewer, ``round(400 * 20000 / n)``."""
    return int(max(10, min(400, round(400 * 20_000 / max(n_cells, 1)))))


class VAEModel:
    """Shared implementation of the VAEs; see :class:`ZINBVAE` for the documentation."""

    likelihood: ClassVar[str] = "zinb"
    default_key: ClassVar[str] = "zinbvae"
    #: config keys that are data options, not VAEModule arguments
    _data_options: ClassVar[tuple[str, ...]] = ()

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
        dispersion: str = "gene",
        library: str = "latent",
    ) -> None:
        config = {
            "n_latent": n_latent,
            "n_hidden": n_hidden,
            "n_layers": n_layers,
            "dropout_rate": dropout_rate,
            "dispersion": dispersion,
            "library": library,
        }
        self._check_config(config)
        self._initialise_from(adata, layer=layer, batch_key=batch_key, config=config)

    def _initialise_from(
        self, adata: AnnData, *, layer: str | None, batch_key: str | None, config: dict
    ) -> None:
        setup, data = read_training_data(adata, layer=layer, batch_key=batch_key, counts=True)
        self._initialise(setup, config, data=data, adata=adata)

    # ------------------------------------------------------------------------ construction
    @staticmethod
    def _check_config(config: dict[str, Any]) -> None:
        for name in ("n_latent", "n_hidden", "n_layers"):
            value = config[name]
            if not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not 0.0 <= config["dropout_rate"] < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {config['dropout_rate']!r}.")
        if config["dispersion"] not in DISPERSIONS:
            raise ValueError(
                f"dispersion={config['dispersion']!r} is not one of {', '.join(DISPERSIONS)}."
            )
        if config["library"] not in LIBRARIES:
            raise ValueError(f"library={config['library']!r} is not one of {', '.join(LIBRARIES)}.")

    def _initialise(
        self,
        setup: DataSetup,
        config: dict[str, Any],
        *,
        data: CellData | None,
        adata: AnnData | None,
    ) -> None:
        self.setup = setup
        self.config = dict(config)
        self.adata = adata
        self._data = data
        if data is not None:
            log_mean, log_var = library_log_prior(
                data.library_size, data.batch_index, setup.n_batch
            )
        else:
            log_mean = torch.zeros(setup.n_batch)
            log_var = torch.ones(setup.n_batch)
        self.module = self._build_module(log_mean, log_var)
        self.is_trained = False
        self.history = pd.DataFrame()
        self.fit_params: dict[str, Any] = {}
        self.train_indices: np.ndarray | None = None
        self.validation_indices: np.ndarray | None = None
        self.device = torch.device("cpu")

    def _build_module(self, log_mean: torch.Tensor, log_var: torch.Tensor) -> VAEModule:
        options = {k: v for k, v in self.config.items() if k not in self._data_options}
        return VAEModule(
            self.setup.n_genes,
            self.setup.n_batch,
            log_mean,
            log_var,
            likelihood=self.likelihood,
            **options,
        )

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
        return (
            f"{type(self).__name__}({self.setup.n_genes} genes, {self.setup.n_batch} batches, "
            f"n_latent={self.config['n_latent']}, dispersion={self.config['dispersion']!r}, "
            f"library={self.config['library']!r}; {state})"
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
        seed: int = 0,
        accelerator: str = "auto",
        devices: int | str | Sequence[int] = "auto",
        progress_bar: bool = True,
        callbacks: Sequence[pl.Callback] = (),
    ) -> VAEModel:
        """Fit by maximizing the ELBO with amortized, reparameterized minibatch VI.

        Training always starts from a fresh initialization drawn with ``seed``, so the same
        seed gives the same model on the same machine.

        Parameters
        ----------
        max_epochs
            Passes over the training cells; None picks ``min(400, 400 * 20000 / n_cells)``.
        batch_size
            Cells per minibatch.
        lr, weight_decay
            Adam learning rate and weight decay.
        train_size
            Fraction of cells used for training; the rest (seeded split) is the validation set
            for early stopping and the history. 1.0 trains on every cell (no validation).
        early_stopping
            Stop when the validation ELBO has not improved for ``patience`` epochs after the KL
            warm-up, and keep the weights of the best validation epoch.
        patience
            See ``early_stopping``.
        n_steps_kl_warmup
            Optimizer steps over which the KL weight rises linearly from 0 to 1. None: a tenth
            of all steps, so the weight reaches 1 early and most of training maximizes the
            ELBO itself (on PBMC 3k a tenth reached a better held-out ELBO, sooner, than a
            quarter; ``benchmarks/speed.py``).
        seed
            Seeds the split, the initialization, the minibatch order and the MC samples.
        accelerator, devices
            Lightning's; "auto" uses one GPU when present, else the CPU.
        progress_bar
            Show Lightning's progress bar.
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
        data = self._require_training_data()
        n_cells = data.X.shape[0]
        if not 0.0 < train_size <= 1.0:
            raise ValueError(f"train_size must be in (0, 1], got {train_size!r}.")
        if batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (BatchNorm), got {batch_size}.")
        if max_epochs is not None and max_epochs < 1:
            raise ValueError(f"max_epochs must be a positive integer or None, got {max_epochs}.")
        train_idx, val_idx = self._split(n_cells, train_size, seed)
        if early_stopping and len(val_idx) == 0:
            raise ValueError(
                "early_stopping needs validation cells, but train_size=1.0 leaves none. "
                "Use train_size<1 or early_stopping=False."
            )
        if len(train_idx) < 2:
            raise ValueError(f"Need at least 2 training cells, got {len(train_idx)}.")
        max_epochs = max_epochs or default_max_epochs(n_cells)
        train_loader = CSRMinibatches(
            data, train_idx, batch_size=batch_size, shuffle=True, drop_last=True, seed=seed
        )
        val_loader = (
            CSRMinibatches(data, val_idx, batch_size=max(batch_size, 1024), shuffle=False)
            if len(val_idx)
            else None
        )
        total_steps = max_epochs * len(train_loader)
        if n_steps_kl_warmup is None:
            n_steps_kl_warmup = total_steps // 10
        pl.seed_everything(seed, workers=False, verbose=False)
        module = self._build_module(self.module.library_log_mean, self.module.library_log_var)
        plan = TrainingPlan(
            module,
            train_loader=train_loader,
            val_loader=val_loader,
            lr=lr,
            weight_decay=weight_decay,
            n_steps_kl_warmup=n_steps_kl_warmup,
        )
        stopper = EarlyStoppingAfterWarmup(patience=patience) if early_stopping else None
        trainer = make_trainer(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            callbacks=([stopper] if stopper else []) + list(callbacks),
            progress_bar=progress_bar,
            check_val=val_loader is not None,
        )
        module.sparse_input = sparse_input_pays(data, trainer.strategy.root_device)
        for loader in (train_loader, val_loader):
            if loader is not None:
                loader.dense = not module.sparse_input  # the dense counts would go unused
        try:
            trainer.fit(plan)
        except TrainingDivergedError as err:
            raise TrainingDivergedError(str(err)) from None
        self.device = trainer.strategy.root_device
        recalibrate_batchnorm(module.to(self.device), train_loader.to(self.device))
        self.module = module.eval()
        self.is_trained = True
        self.history = plan.history
        self.train_indices, self.validation_indices = train_idx, val_idx
        self.fit_params = {
            "max_epochs": max_epochs,
            "n_epochs_trained": len(plan.history_rows),
            "best_epoch": stopper.best_epoch if stopper else None,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "train_size": train_size,
            "early_stopping": early_stopping,
            "patience": patience,
            "n_steps_kl_warmup": n_steps_kl_warmup,
            "seed": seed,
            "device": str(self.device),
        }
        return self

    @staticmethod
    def _split(n_cells: int, train_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        perm = np.random.default_rng(seed).permutation(n_cells)
        n_train = (
            n_cells if train_size >= 1.0 else min(n_cells - 1, math.ceil(train_size * n_cells))
        )
        return np.sort(perm[:n_train]), np.sort(perm[n_train:])

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
        return read_query_data(adata, self.setup, counts=True)

    def _minibatches(
        self, data: CellData, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, NonZeros]]:
        self.module.to(self.device).eval()
        loader = CSRMinibatches(
            data, np.arange(data.X.shape[0]), batch_size=batch_size, shuffle=False
        ).to(self.device)
        yield from loader

    def _check_trained(self) -> None:
        if not self.is_trained:
            raise RuntimeError(f"{type(self).__name__} is not trained yet: call model.fit() first.")

    def _batch_code(self, batch: str) -> int:
        try:
            return self.setup.batch_categories.index(str(batch))
        except ValueError:
            raise ValueError(
                f"Unknown batch {batch!r}; the model knows {self.batch_categories}."
            ) from None

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
        self._check_trained()
        data = self._cells(adata)
        with _seeded(seed, self.device):
            chunks = []
            for x, b, _nz in self._minibatches(data, batch_size):
                qz = self.module.inference(x, b).qz
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
        (``"zinbvae"``, ``"nbvae"``, ``"poissonvae"``). Nothing else is written, and nothing at
        all if an error is raised.
        """
        if adata.is_view:
            raise ValueError(
                "adata is a view; writing to it would silently copy it. Write to the full "
                "AnnData, or make the view a real object first: adata = adata.copy()."
            )
        key = key_added or self.default_key
        latent = self.get_latent(adata, give_mean=give_mean)
        adata.obsm[f"X_{key}"] = latent
        adata.uns[key] = {"params": self.params()}

    def params(self) -> dict[str, Any]:
        """Model and fit options as a flat, h5ad-serialisable dict (None values omitted)."""
        from scvae import __version__

        record = {
            "model": type(self).__name__,
            "likelihood": self.likelihood,
            **self.config,
            "layer": self.setup.layer,
            "batch_key": self.setup.batch_key,
            "batch_categories": list(self.setup.batch_categories),
            **self.fit_params,
            "scvae_version": __version__,
        }
        if not self.history.empty and "validation_elbo" in self.history:
            record["final_validation_elbo"] = float(self.history["validation_elbo"].iloc[-1])
        return {k: v for k, v in record.items() if v is not None}

    @torch.inference_mode()
    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        *,
        transform_batch: str | None = None,
        library_size: float = 1e4,
        batch_size: int = 256,
    ) -> np.ndarray:
        """Denoised expression ``library_size * rho(z, s)`` at the posterior mean of ``z``.

        For :class:`GaussianVAE` it is the decoded mean ``mu(z, s)`` in its input space
        (log-normalized by default) and ``library_size`` is ignored.

        Parameters
        ----------
        adata
            Cells (None: the training data).
        transform_batch
            Decode every cell as if it came from this batch: batch-corrected expression.
            None decodes each cell with its own batch.
        library_size
            Scale of the proportions ``rho`` (1e4: counts per 10k).

        Returns
        -------
        np.ndarray
            (n_cells, n_genes) float32.
        """
        self._check_trained()
        data = self._cells(adata)
        code = None if transform_batch is None else self._batch_code(transform_batch)
        chunks = []
        for x, b, _nz in self._minibatches(data, batch_size):
            z = self.module.inference(x, b).qz.loc  # (B, L)
            b_dec = b if code is None else torch.full_like(b, code)
            chunks.append(self.module.denoised(z, b_dec, library_size=library_size).cpu())
        return torch.cat(chunks).numpy()

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

        Returns
        -------
        np.ndarray
            (n_cells,) ``E_q[log p(x|z,l)] - KL(q(z)||p(z)) - KL(q(l)||p(l))``.
        """
        self._check_trained()
        data = self._cells(adata)
        out = []
        with _seeded(seed, self.device):
            for x, b, nz in self._minibatches(data, batch_size):
                total = torch.zeros(x.shape[0], device=x.device)
                for _ in range(n_samples):
                    total += self.module.loss(x, b, nz=nz).elbo
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

        Returns
        -------
        np.ndarray
            (n_cells,) float64, nats.
        """
        self._check_trained()
        data = self._cells(adata)
        n_genes = self.setup.n_genes
        cells_per_chunk = max(1, min(256, _SCORING_BUDGET // n_genes))
        samples_per_block = max(1, min(n_samples, _SCORING_BUDGET // (cells_per_chunk * n_genes)))
        out = []
        with _seeded(seed, self.device):
            for x, b, nz in self._minibatches(data, cells_per_chunk):
                log_w = []
                for start in range(0, n_samples, samples_per_block):
                    k = min(samples_per_block, n_samples - start)
                    log_w.append(
                        self.module.log_importance_weights(x, b, n_samples=k, nz=nz).double()
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

        Returns
        -------
        np.ndarray
            (n_cells, n_genes) for ``n_samples=1``, else (n_samples, n_cells, n_genes); float32.
        """
        self._check_trained()
        data = self._cells(adata)
        out = []
        with _seeded(seed, self.device):
            for x, b, _nz in self._minibatches(data, batch_size):
                inf = self.module.inference(x, b, n_samples=n_samples)
                gen = self.module.generative(inf.z, inf.log_library, b)
                out.append(self.module.sample_counts(gen).cpu())  # (K, B, G)
        counts = torch.cat(out, dim=1).numpy()
        return counts[0] if n_samples == 1 else counts

    @torch.inference_mode()
    def generate(
        self, n_cells: int, *, batch: str | Sequence[str] | None = None, seed: int = 0
    ) -> AnnData:
        """Ancestral sampling from the prior: ``z ~ N(0, I)``, ``l ~ p(l | s)``, ``x ~ p(x|z,l,s)``.

        Parameters
        ----------
        n_cells
            Number of cells to draw.
        batch
            One batch label for every cell, or one per cell; None: the first batch.
        seed
            Seeds the draw.

        Returns
        -------
        AnnData
            Counts in ``X`` (CSR), ``obs["batch"]``, the drawn ``z`` in ``obsm["X_latent"]`` and
            library sizes in ``obs["library_size"]``.
        """
        self._check_trained()
        labels = (
            [self.setup.batch_categories[0]] * n_cells
            if batch is None
            else [batch] * n_cells
            if isinstance(batch, str)
            else list(batch)
        )
        if len(labels) != n_cells:
            raise ValueError(f"batch has {len(labels)} labels for n_cells={n_cells}.")
        codes = torch.tensor([self._batch_code(b) for b in labels], device=self.device)
        self.module.to(self.device).eval()
        with _seeded(seed, self.device):
            z = torch.randn(n_cells, self.config["n_latent"], device=self.device)  # (N, L)
            log_library = self.module.library_prior(codes).sample()  # (N, 1)
            gen = self.module.generative(z, log_library, codes)
            x = self.module.sample_counts(gen)  # (N, G)
        x = x.cpu().numpy()
        out = AnnData(
            X=x if self.likelihood == "gaussian" else sp.csr_matrix(x),
            obs=pd.DataFrame(
                {
                    "batch": pd.Categorical(labels, categories=self.batch_categories),
                    "library_size": torch.exp(log_library).squeeze(-1).cpu().numpy(),
                },
                index=[f"generated_{i}" for i in range(n_cells)],
            ),
            var=pd.DataFrame(index=self.var_names),
        )
        out.obsm["X_latent"] = z.cpu().numpy()
        return out

    # --------------------------------------------------------------------------- persistence
    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Save weights (``model.pt``) and everything else (``model.json``) into a directory."""
        self._check_trained()
        path = prepare_directory(path, overwrite=overwrite)
        meta = {
            "class": type(self).__name__,
            "config": self.config,
            "setup": self.setup.to_dict(),
            "fit_params": self.fit_params,
            "history": self.history.reset_index().to_dict(orient="list"),
            "train_indices": None if self.train_indices is None else self.train_indices.tolist(),
            "validation_indices": None
            if self.validation_indices is None
            else self.validation_indices.tolist(),
        }
        state = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        torch.save(state, path / _WEIGHTS_FILE)
        (path / META_FILE).write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: str | Path, adata: AnnData | None = None) -> VAEModel:
        """Load a model saved with :meth:`save`.

        Parameters
        ----------
        path
            Directory written by :meth:`save`.
        adata
            Optional AnnData that becomes the default for the getters (validated against the
            saved genes and batches). Without it, pass ``adata`` to each getter.
        """
        path, meta = read_meta(path)
        if meta["class"] != cls.__name__ and cls is not VAEModel:
            raise ValueError(f"{path} holds a {meta['class']}, not a {cls.__name__}.")
        target = cls if cls is not VAEModel else _MODELS[meta["class"]]
        model = target.__new__(target)
        setup = DataSetup.from_dict(meta["setup"])
        model._initialise(setup, meta["config"], data=None, adata=adata)
        data = model._read_query(adata) if adata is not None else None
        state = torch.load(path / _WEIGHTS_FILE, map_location="cpu", weights_only=True)
        model.module.load_state_dict(state)
        model.module.eval()
        model._data = data
        model.is_trained = True
        model.fit_params = meta["fit_params"]
        history = pd.DataFrame(meta["history"])
        model.history = history.set_index("epoch") if "epoch" in history else history
        for name in ("train_indices", "validation_indices"):
            value = meta[name]
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
        self._check_trained()
        data = self._cells(adata)
        n_latent = self.config["n_latent"]
        kl_sum = torch.zeros(n_latent, dtype=torch.float64)  # (L,)
        mean_sum = torch.zeros(n_latent, dtype=torch.float64)  # (L,)
        mean_sq_sum = torch.zeros(n_latent, dtype=torch.float64)  # (L,)
        for x, b, _nz in self._minibatches(data, batch_size):
            qz = self.module.inference(x, b).qz
            m = qz.loc.double().cpu()  # (B, L) posterior means
            s = qz.scale.double().cpu()  # (B, L) posterior standard deviations
            kl_sum += (0.5 * (m.square() + s.square() - 1.0) - torch.log(s)).sum(0)
            mean_sum += m.sum(0)
            mean_sq_sum += m.square().sum(0)
        n = data.X.shape[0]
        mean = mean_sum / n
        activity = (mean_sq_sum / n - mean.square()).clamp_min(0.0)
        frame = pd.DataFrame(
            {
                "kl": (kl_sum / n).numpy(),
                "activity": activity.numpy(),
                "active": (activity > threshold).numpy(),
            },
            index=pd.RangeIndex(n_latent, name="dimension"),
        )
        return frame


class _seeded:
    """Context manager: fork torch's RNG (CPU and the given CUDA device) and seed it."""

    def __init__(self, seed: int, device: torch.device) -> None:
        devices = [device] if device.type == "cuda" else []
        self._fork = torch.random.fork_rng(devices=devices)
        self.seed = seed

    def __enter__(self) -> None:
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc) -> None:
        self._fork.__exit__(*exc)


class ZINBVAE(VAEModel):
    """scVI with a zero-inflated negative-binomial decoder (Lopez et al., Nature Methods 2019).

    ``z ~ N(0, I)``; ``l ~ LogNormal`` with the per-batch empirical prior of log library size;
    ``rho = softmax(f_w(z, s))``; ``x ~ ZINB(mean l * rho, inverse dispersion theta, gate
    sigmoid(f_h(z, s)))``. Fitted by amortized variational inference on the ELBO.

    Parameters
    ----------
    adata
        Cells x genes AnnData with raw counts (sparse or dense, float or integer).
    layer
        Layer with the raw counts; None uses ``adata.X``.
    batch_key
        ``obs`` column of batches to correct for (one-hot covariate in encoder and decoder).
    n_latent, n_hidden, n_layers, dropout_rate
        Latent dimension and network sizes.
    dispersion
        ``"gene"`` (default), ``"gene-batch"`` or ``"gene-cell"``.
    library
        ``"latent"`` (default: LogNormal latent with the empirical per-batch prior) or
        ``"observed"`` (the observed total count, no q(l)).

    Examples
    --------
    >>> model = scvae.ZINBVAE(adata, layer="counts", batch_key="batch")
    >>> model.fit()
    >>> model.write_latent(adata)  # adata.obsm["X_zinbvae"], adata.uns["zinbvae"]["params"]
    >>> sc.pp.neighbors(adata, use_rep="X_zinbvae")
    """

    likelihood = "zinb"
    default_key = "zinbvae"


class NBVAE(VAEModel):
    """scVI with a negative-binomial (Gamma-Poisson) decoder, no zero inflation.

    Same parameters and methods as :class:`ZINBVAE`; default key ``"nbvae"``.
    """

    likelihood = "nb"
    default_key = "nbvae"


class PoissonVAE(VAEModel):
    """scVI with a Poisson decoder (no Gamma overdispersion, no zero inflation).

    Same parameters and methods as :class:`ZINBVAE` (``dispersion`` is ignored); default key
    ``"poissonvae"``.
    """

    likelihood = "poisson"
    default_key = "poissonvae"


class GaussianVAE(VAEModel):
    """Gaussian VAE baseline on log-normalized expression.

    ``z ~ N(0, I)``; ``x ~ Normal(mu(z, s), diag sigma^2)`` with gene-wise variances, where
    ``x = log1p(normalize_total(counts, 1e4))`` is computed inside from the counts (sparse,
    on the non-zeros), or, with ``log_normalize=False``, the given layer used as it is.
    Trained, scored (ELBO, IWAE estimate of log p(x) in the log-normalized space) and saved
    exactly like :class:`ZINBVAE`, by the same training loop.

    Parameters
    ----------
    adata
        Cells x genes AnnData.
    layer
        Layer with raw counts (``log_normalize=True``) or with the data to model as it is.
    batch_key
        ``obs`` column of batches (one-hot covariate in encoder and decoder).
    log_normalize
        Log-normalize counts inside (default). False: model the layer's values as they are
        (finite values required; negative values allowed, e.g. scaled data).
    n_latent, n_hidden, n_layers, dropout_rate
        Latent dimension and network sizes.
    """

    likelihood = "gaussian"
    default_key = "gaussianvae"
    _data_options = ("log_normalize",)

    def __init__(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        batch_key: str | None = None,
        log_normalize: bool = True,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
    ) -> None:
        config = {
            "n_latent": n_latent,
            "n_hidden": n_hidden,
            "n_layers": n_layers,
            "dropout_rate": dropout_rate,
            "dispersion": "gene",
            "library": "observed",
            "log_normalize": bool(log_normalize),
        }
        self._check_config(config)
        self._initialise_from(adata, layer=layer, batch_key=batch_key, config=config)

    def _initialise_from(
        self, adata: AnnData, *, layer: str | None, batch_key: str | None, config: dict
    ) -> None:
        counts = config["log_normalize"]
        setup, data = read_training_data(
            adata, layer=layer, batch_key=batch_key, counts=counts, nonnegative=counts
        )
        self._initialise(setup, config, data=log_normalize(data) if counts else data, adata=adata)

    def _read_query(self, adata: AnnData) -> CellData:
        counts = self.config["log_normalize"]
        data = read_query_data(adata, self.setup, counts=counts, nonnegative=counts)
        return log_normalize(data) if counts else data


_MODELS: dict[str, type[VAEModel]] = {
    c.__name__: c for c in (ZINBVAE, NBVAE, PoissonVAE, GaussianVAE)
}
