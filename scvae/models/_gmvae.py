"""GMVAE: the count VAE with a Gaussian-mixture prior, which clusters the cells as it embeds.

The module is :class:`~scvae.module.gmvae.GMVAEModule`; this class adds the fit in two phases
(pretraining with the ``N(0, I)`` prior, then the mixture initialized from a GMM on the
pretrained latent and trained), restarts and the choice of ``K`` by validation ELBO, and the
cluster getters. Training runs through the shared loop (:func:`scvae.train.train_vae`).
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from scvae import checks
from scvae.data import DataSetup, check_writable, cluster_slots, latent_slots
from scvae.models._vae import VAEModel
from scvae.models._vae_config import VAEConfig
from scvae.module.gmm import fit_gmm
from scvae.module.gmvae import GMVAEModule

__all__ = ["GMVAE", "GMVAEConfig"]

_LOG = logging.getLogger("scvae")
#: the candidates of K when ``n_components=None``
DEFAULT_CANDIDATES: tuple[int, ...] = (2, 4, 6, 8, 10, 12)
LIKELIHOODS: tuple[str, ...] = ("zinb", "nb", "poisson")


@dataclass(frozen=True)
class GMVAEConfig(VAEConfig):
    """The construction options of a :class:`GMVAE` (a :class:`VAEConfig` and the mixture).

    Attributes
    ----------
    n_components
        Number of mixture components; None: chosen by validation ELBO over ``candidates``.
    candidates
        Values of ``K`` tried when ``n_components`` is None.
    likelihood
        ``"zinb"``, ``"nb"`` or ``"poisson"``.
    """

    n_components: int | None = None
    candidates: tuple[int, ...] | None = None
    likelihood: Literal["zinb", "nb", "poisson"] = "zinb"

    def __post_init__(self) -> None:
        super().__post_init__()
        k = checks.optional_positive_int("n_components", self.n_components)
        object.__setattr__(self, "n_components", k)
        if self.candidates is not None:
            values = [self.candidates] if np.ndim(self.candidates) == 0 else self.candidates
            cands = tuple(checks.positive_int("candidates", c) for c in values)
            if not cands:
                raise ValueError("candidates is empty; give values of K, or None.")
            object.__setattr__(self, "candidates", tuple(sorted(set(cands))))
        checks.choice("likelihood", self.likelihood, LIKELIHOODS)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        d = super().to_dict()
        d["candidates"] = None if self.candidates is None else list(self.candidates)
        return d

    def module_options(self) -> dict[str, Any]:
        """The options :class:`~scvae.module.vae.VAEModule` takes."""
        d = super().module_options()
        for name in ("n_components", "candidates", "likelihood"):
            d.pop(name)
        return d


class GMVAE(VAEModel):
    """Count VAE with a Gaussian-mixture prior on the latent: it clusters the cells itself.

    ``y ~ Cat(pi)``; ``z | y ~ N(mu_y, diag sigma_y^2)`` (learned); ``l ~ LogNormal`` with the
    per-batch empirical prior; ``x ~ ZINB/NB/Poisson(l * rho(z, s), ...)`` as in
    :class:`ZINBVAE`. ``q(z | x, s)`` is the encoder and ``q(y | x)`` the closed-form optimum
    given it, ``softmax_y(log pi_y - KL(q(z|x) || N(mu_y, sigma_y^2)))``, so the KL to the
    mixture is exact over ``y`` (``docs/math.md``).

    Fitting has two phases: the VAE is pretrained with the ``N(0, I)`` prior (by default for
    three quarters of the epochs), a diagonal GMM on the training cells' latent means
    initializes ``pi, mu, sigma`` (VaDE), and the whole model is then trained with the mixture
    prior. ``n_init`` restarts (GMM seeds) and, with
    ``n_components=None``, every value of ``candidates`` are each trained from the same
    pretrained network; the one with the best validation ELBO is kept
    (:attr:`selection` lists them all).

    Parameters
    ----------
    adata
        Cells x genes AnnData with raw counts (sparse or dense, float or integer).
    n_components
        Number of clusters ``K`` (a positive integer, at most the number of cells); None:
        chosen by validation ELBO over ``candidates``.
    candidates
        Values of ``K`` tried when ``n_components`` is None; None: 2, 4, ..., 12 (those not
        above the number of training cells).
    likelihood
        ``"zinb"`` (default), ``"nb"`` or ``"poisson"``.
    layer
        Layer with the raw counts; None uses ``adata.X``.
    batch_key
        ``obs`` column of batches to correct for (one-hot covariate in encoder and decoder).
    categorical_covariate_keys, continuous_covariate_keys, encode_covariates
        Covariates beyond the batch, as in :class:`ZINBVAE` (``q(y | x)`` follows from
        ``q(z | x, s)``, so with ``encode_covariates`` the clusters see them too).
    n_latent, n_hidden, n_layers, dropout_rate
        Latent dimension and network sizes.
    dispersion
        ``"gene"`` (default), ``"gene-batch"`` or ``"gene-cell"``.
    library
        ``"latent"`` (default) or ``"observed"``.

    Examples
    --------
    >>> model = scvae.GMVAE(adata, n_components=8, batch_key="batch")
    >>> model.fit()
    >>> model.write_clusters(adata)  # obs["gmvae"], obsm["gmvae_proba"], uns["gmvae"]
    >>> model.write_latent(adata)  # obsm["X_gmvae"]
    """

    default_key = "gmvae"
    _config_class = GMVAEConfig

    def __init__(
        self,
        adata: AnnData,
        *,
        n_components: int | None = None,
        candidates: Sequence[int] | None = None,
        likelihood: Literal["zinb", "nb", "poisson"] = "zinb",
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
        config = GMVAEConfig(
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            dispersion=dispersion,
            library=library,
            encode_covariates=encode_covariates,
            n_components=n_components,
            candidates=None if candidates is None else tuple(np.atleast_1d(candidates).tolist()),
            likelihood=likelihood,
        )
        n_cells = adata.n_obs
        if config.n_components is not None and config.n_components > n_cells:
            raise ValueError(
                f"n_components must be at most the number of cells ({n_cells}), got "
                f"{config.n_components}."
            )
        if config.candidates is not None and min(config.candidates) > n_cells:
            raise ValueError(
                f"candidates must include a K of at most the number of cells ({n_cells}), got "
                f"{list(config.candidates)}."
            )
        self._setup_from(
            adata,
            layer=layer,
            batch_key=batch_key,
            config=config,
            categorical_covariate_keys=categorical_covariate_keys,
            continuous_covariate_keys=continuous_covariate_keys,
        )

    def _init_state(self, setup: DataSetup, config: VAEConfig, *, data: Any) -> None:
        super()._init_state(setup, config, data=data)
        self.likelihood = config.likelihood  # an instance attribute: the user's choice
        self.selection = pd.DataFrame()
        self._n_components: int | None = config.n_components
        self._pending: GMVAEModule | None = None

    def _build_module(self, log_mean: torch.Tensor, log_var: torch.Tensor) -> GMVAEModule:
        if self._pending is not None:  # a pretrained module, its mixture initialized
            module, self._pending = self._pending, None
            return module.train()  # trained modules come back in eval mode
        k = self._n_components or self.training.get("n_components") or 1
        return GMVAEModule(
            self.setup.n_genes,
            self.setup.n_batch,
            log_mean,
            log_var,
            n_components=int(k),
            likelihood=self.likelihood,
            **self._module_options(),
        )

    @property
    def n_components(self) -> int | None:
        """Number of components of the trained model (None before fitting with ``K=None``)."""
        if self.module is not None:
            return self.module.n_components
        return self.config.n_components

    def __repr__(self) -> str:
        state = "trained" if self.is_trained else "not trained"
        keys = self.setup.covariates.keys
        covariates = f"covariates {list(keys)}, " if keys else ""
        return (
            f"GMVAE({self.setup.n_genes} genes, {self.setup.n_batch} batches, {covariates}"
            f"n_components={self.n_components}, likelihood={self.likelihood!r}, "
            f"n_latent={self.config.n_latent}; {state})"
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
        n_init: int = 1,
        n_epochs_pretrain: int | None = None,
        callbacks: Sequence[Any] = (),
    ) -> GMVAE:
        """Pretrain with the ``N(0, I)`` prior, initialize the mixture by a GMM, train it.

        Every option of :meth:`ZINBVAE.fit` means the same here; the KL warm-up happens in the
        pretraining (the mixture phase starts at KL weight 1), ``max_epochs`` applies to each
        mixture phase, and early stopping to the pretraining and to each mixture phase.

        Parameters
        ----------
        max_epochs
            Epochs of each mixture phase; None: a quarter of ``min(400, 400 * 20000 /
            n_cells)``, so that with the default pretraining (three times as long) a fit has
            the epochs of a default :meth:`ZINBVAE.fit` in all.
        batch_size, lr, weight_decay, train_size, early_stopping, patience
            As :meth:`ZINBVAE.fit` (``train_size < 1`` is needed to choose K or restarts).
        n_steps_kl_warmup
            Warm-up steps of the pretraining; None: a tenth of its steps.
        seed
            Seeds the split, the networks, the minibatches and (``seed + i``) the GMM of the
            ``i``-th restart.
        accelerator, devices, num_nodes, strategy, precision, progress_bar
            Lightning's (``strategy="ddp"``: each phase trains data-parallel, as
            :meth:`ZINBVAE.fit`), and whether to show progress.
        checkpoint_dir
            Each phase checkpoints in a subdirectory of it (``pretrain``, ``K<k>_init<i>``).
        n_init
            Restarts per value of K (GMM seeds); the best validation ELBO is kept.
        n_epochs_pretrain
            Epochs of the pretraining at most; None: three times ``max_epochs`` (three
            quarters of the epochs in all). With ``early_stopping`` the pretraining stops as
            a :meth:`ZINBVAE.fit` does (``patience`` epochs after the warm-up without a better
            validation ELBO) and keeps its best epoch. The mixture starts from a GMM on this
            latent, so a
            pretraining too short to separate the cell types is not repaired later (of 100
            epochs in all on cellbench, ``docs/benchmarks.md``: 25 of pretraining gave ARI
            0.64, 75 gave 1.00); raise it when clusters look split by batch.
        callbacks
            Extra Lightning callbacks, given to every phase.

        Returns
        -------
        The fitted model (``self``); :attr:`selection` has one row per trial (K, restart,
        best validation ELBO, occupied components).
        """
        from scvae.train import default_max_epochs, split_cells

        data = self._require_training_data()
        n_init = checks.positive_int("n_init", n_init)
        n_epochs_pretrain = checks.optional_positive_int("n_epochs_pretrain", n_epochs_pretrain)
        seed = checks.resolve_seed(seed)
        checks.fraction("train_size", train_size, low=0.0, include_low=False)
        n_cells = data.X.shape[0]
        n_train = len(split_cells(n_cells, float(train_size), seed)[0])
        if self.config.n_components is not None:
            ks = [self.config.n_components]
        else:
            ks = [k for k in (self.config.candidates or DEFAULT_CANDIDATES) if k <= n_train]
            if not ks:
                raise ValueError(
                    f"candidates has no K of at most the {n_train} training cells: "
                    f"{list(self.config.candidates or DEFAULT_CANDIDATES)}."
                )
        if ks[-1] > n_train:
            raise ValueError(
                f"n_components must be at most the number of training cells ({n_train}), got "
                f"{ks[-1]}."
            )
        epochs = max_epochs or max(1, default_max_epochs(n_cells) // 4)
        pre_epochs = n_epochs_pretrain or 3 * epochs
        options = {
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "train_size": train_size,
            "seed": seed,
            "accelerator": accelerator,
            "devices": devices,
            "num_nodes": num_nodes,
            "strategy": strategy,
            "precision": precision,
            "progress_bar": progress_bar,
            "callbacks": callbacks,
        }

        def sub(name: str) -> str | None:
            return None if checkpoint_dir is None else os.path.join(checkpoint_dir, name)

        # phase 1: the network with the N(0, I) prior, stopped early as a ZINBVAE fit is (a
        # long default pretraining would otherwise go on past its best validation ELBO)
        self._n_components = ks[0]
        self._pending = None
        super().fit(
            max_epochs=pre_epochs,
            early_stopping=early_stopping,
            patience=patience,
            n_steps_kl_warmup=n_steps_kl_warmup,
            checkpoint_dir=sub("pretrain"),
            **options,
        )
        pretrained, pre_history = self.module, self.history
        pre_training = dict(self.training)
        train_idx = self.train_indices
        latent, latent_var = self._latent_of(pretrained, data, train_idx)  # (n_train, L)

        # phase 2: for each K and restart, the mixture from a GMM on the pretrained latent
        trials, best = [], None
        for k in ks:
            for i in range(n_init):
                gmm = fit_gmm(
                    latent, k, covariance_type="diag", seed=seed + i, reg_covar=1e-3, tol=1e-4
                )
                module = self._copy_with_components(pretrained, k)
                module.set_mixture(*_moment_matched(gmm, latent, latent_var))
                self._pending, self._n_components = module, k
                super().fit(
                    max_epochs=epochs,
                    early_stopping=early_stopping,
                    patience=patience,
                    n_steps_kl_warmup=0,
                    checkpoint_dir=sub(f"K{k}_init{i}"),
                    **options,
                )
                score = self._validation_score()
                occupancy = self._occupancy(data, train_idx)
                trials.append(
                    {
                        "n_components": k,
                        "restart": i,
                        "validation_elbo": score,
                        "n_occupied": int((occupancy > 0).sum()),
                        "min_occupancy": int(occupancy.min()),
                        "gmm_occupied": int(
                            (np.bincount(gmm_labels(gmm, latent), minlength=k) > 0).sum()
                        ),
                    }
                )
                state = (self.module, self.history, dict(self.training), score)
                if best is None or score > best[3]:
                    best = state
        module, history, training, _ = best
        self.module, self._n_components = module, module.n_components
        offset = len(pre_history)
        history = history.copy()
        history.index = history.index + offset
        if training.get("best_epoch") is not None:
            training["best_epoch"] = int(training["best_epoch"]) + offset
        self.history = pd.concat(
            [pre_history.assign(phase="pretrain"), history.assign(phase="mixture")]
        )
        self.selection = pd.DataFrame(trials)
        chosen = self.selection.loc[self.selection["validation_elbo"].idxmax()]
        self.training = {
            **training,
            "n_components": int(module.n_components),
            "n_init": n_init,
            "n_epochs_pretrain": int(pre_training["n_epochs_trained"]),
            "n_steps_kl_warmup": pre_training.get("n_steps_kl_warmup"),
            "n_occupied": int(chosen["n_occupied"]),
        }
        if int(chosen["n_occupied"]) < module.n_components:
            _LOG.info(
                "GMVAE: %d of %d components hold no training cell (their weight went to 0).",
                module.n_components - int(chosen["n_occupied"]),
                module.n_components,
            )
        return self

    def _copy_with_components(self, pretrained: GMVAEModule, k: int) -> GMVAEModule:
        if pretrained.n_components == k:
            return copy.deepcopy(pretrained)
        log_mean, log_var = pretrained.library_log_mean, pretrained.library_log_var
        module = GMVAEModule(
            self.setup.n_genes,
            self.setup.n_batch,
            log_mean,
            log_var,
            n_components=k,
            likelihood=self.likelihood,
            **self._module_options(),
        ).to(log_mean.device)
        state = {
            name: value
            for name, value in pretrained.state_dict().items()
            if not name.startswith("prior_")
        }
        module.load_state_dict(state, strict=False)
        return module

    def _validation_score(self) -> float:
        """Mean validation ELBO of the kept weights (best epoch, or last), -inf if none."""
        h = self.history
        if h.empty or "validation_elbo" not in h or h["validation_elbo"].isna().all():
            train = h["train_elbo"] if "train_elbo" in h else pd.Series([-math.inf])
            return float(train.iloc[-1])
        best = self.training.get("best_epoch")
        if best is not None and best in h.index:
            return float(h.loc[best, "validation_elbo"])
        return float(h["validation_elbo"].iloc[-1])

    @torch.inference_mode()
    def _latent_of(
        self, module: GMVAEModule, data: Any, idx: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and variances of ``q(z | x, s)`` of the cells ``idx``: (len(idx), L) float64."""
        self.module = module
        means, variances = [], []
        for batch in self._minibatches(data, 1024):
            qz = module.encode(batch)[0]
            means.append(qz.loc.double().cpu())
            variances.append(qz.scale.square().double().cpu())
        rows = torch.as_tensor(idx)
        return torch.cat(means)[rows], torch.cat(variances)[rows]

    @torch.inference_mode()
    def _occupancy(self, data: Any, idx: np.ndarray) -> np.ndarray:
        labels = self._proba(data).argmax(axis=1)[idx]
        return np.bincount(labels, minlength=self.module.n_components)

    # ------------------------------------------------------------------------------ clusters
    @torch.inference_mode()
    def _proba(self, data: Any, batch_size: int = 1024) -> np.ndarray:
        module = self._trained_module()
        chunks = []
        for batch in self._minibatches(data, batch_size):
            qz, _ = module.encode(batch)
            chunks.append(torch.exp(module.responsibilities(qz)).double().cpu())
        proba = torch.cat(chunks).numpy()
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(
        self, adata: AnnData | None = None, *, soft: bool = False, batch_size: int = 1024
    ) -> np.ndarray | pd.DataFrame:
        """The cluster of each cell: ``argmax_y q(y | x)``, or with ``soft`` all of ``q(y | x)``.

        Parameters
        ----------
        adata
            Cells (same genes, known batches). None: the training data.
        soft
            Return the membership probabilities instead of the labels.
        batch_size
            Cells per forward pass.

        Returns
        -------
        np.ndarray or pandas.DataFrame
            (n_cells,) int64 labels; or (``soft=True``) a cells x components DataFrame of
            float64 probabilities (rows sum to 1) indexed by ``obs_names``, columns ``"0"``,
            ``"1"``, ...
        """
        soft = checks.boolean("soft", soft)
        proba = self._proba(self._cells(adata), batch_size)
        if not soft:
            return proba.argmax(axis=1).astype(np.int64)
        obs_names = adata.obs_names if adata is not None else self._obs_names
        columns = pd.Index([str(k) for k in range(proba.shape[1])], name="component")
        return pd.DataFrame(proba, index=pd.Index(obs_names), columns=columns)

    def write_clusters(self, adata: AnnData, *, key_added: str | None = None) -> None:
        """Write ``obs[key]`` (categorical labels), ``obsm[key + "_proba"]`` and ``uns[key]``.

        ``key`` is ``key_added`` or ``"gmvae"`` (:func:`scvae.data.cluster_slots`). ``uns[key]``
        holds ``params`` (as :meth:`write_latent`) and the prior: ``weights`` (K,), ``means``
        and ``variances`` (K, n_latent). Nothing is written if an error is raised.

        Parameters
        ----------
        adata
            The cells to cluster and write into (same genes, known batches; not a view).
        key_added
            Name of the result; None: ``"gmvae"``.
        """
        check_writable(adata)
        obs_key, proba_key, uns_key = cluster_slots(key_added, self.default_key)
        proba = np.ascontiguousarray(self._proba(self._cells(adata)))
        categories = [str(k) for k in range(proba.shape[1])]
        labels = pd.Categorical.from_codes(proba.argmax(axis=1), categories=categories)
        record = {"params": self.uns_params(), **self._prior_record()}
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
        """Write the embedding ``obsm["X_<key>"]`` and the record ``uns[<key>]``.

        As :meth:`ZINBVAE.write_latent`; ``uns[<key>]`` is the same record that
        :meth:`write_clusters` writes (``params`` and the mixture prior), so the two writers
        can be called in either order with the same key.

        Parameters
        ----------
        adata
            The cells to embed and write into (same genes, known batches; not a view).
        key_added
            Name of the result; None: ``"gmvae"``.
        give_mean
            Posterior mean (default) or one draw from ``q(z | x, s)``.
        """
        check_writable(adata)
        obsm_key, uns_key = latent_slots(key_added, self.default_key)
        latent = self.get_latent(adata, give_mean=give_mean)
        record = {"params": self.uns_params(), **self._prior_record()}
        adata.obsm[obsm_key] = latent
        adata.uns[uns_key] = record

    def _prior_record(self) -> dict[str, Any]:
        log_pi, mu, var = (t.detach().cpu().double().numpy() for t in self.module.mixture())
        record: dict[str, Any] = {"weights": np.exp(log_pi), "means": mu, "variances": var}
        if not self.selection.empty:
            record["selection"] = {c: self.selection[c].to_numpy() for c in self.selection.columns}
        return record

    def _config_record(self) -> dict[str, Any]:
        d = super()._config_record()
        d.pop("likelihood")
        if d["candidates"] is None:
            d.pop("candidates")
        if d["n_components"] is None:
            d.pop("n_components")  # the resolved K is in the fit record
        return d

    # --------------------------------------------------------------------------- persistence
    def _save_meta(self) -> dict[str, Any]:
        meta = super()._save_meta()
        meta["selection"] = self.selection.to_dict(orient="list")
        return meta

    @classmethod
    def _restore(
        cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], adata: AnnData | None
    ) -> GMVAE:
        model = super()._restore(meta, tensors, adata)
        model.selection = pd.DataFrame(meta.get("selection") or {})
        return model


def gmm_labels(gmm: Any, latent: torch.Tensor) -> np.ndarray:
    """Hard GMM labels of ``latent`` (for the occupancy of the initialization)."""
    from scvae.module.gmm import predict

    return predict(gmm, latent).cpu().numpy()


def _moment_matched(
    gmm: Any, means: torch.Tensor, variances: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``pi``, ``mu``, ``sigma^2`` of the mixture prior from a GMM on the posterior means.

    The GMM sees the means of ``q(z | x)`` only; the prior component must also cover the
    posterior spread of its cells, so each variance gets the responsibility-weighted mean
    posterior variance added (the second moment of the aggregate posterior). Without it, a
    cluster that the pretraining packed tightly gets a component narrower than its cells'
    posteriors, ``KL(q(z|x) || N(mu_y, sigma_y^2))`` is large for every cell and the
    component ends up empty.
    """
    from scvae.module.gmm import predict_proba

    resp = predict_proba(gmm, means)  # (N, K)
    mass = resp.sum(0).clamp_min(1e-12)  # (K,)
    spread = (resp.T @ variances) / mass.unsqueeze(-1)  # (K, L)
    return gmm.weights, gmm.means, gmm.covariances + spread
