"""Gaussian mixture clustering of an embedding, with the same API as the other models."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from scvae import checks
from scvae.data import check_writable, cluster_slots, read_embedding
from scvae.models._io import SavedModel
from scvae.module.gmm import (
    GMMEstimate,
    default_candidates,
    fit_gmm,
    predict_proba,
    score_samples,
)

__all__ = ["GMM", "GMMConfig"]

_TENSORS = ("weights", "means", "covariances", "precisions_cholesky")


def _check_n_components(
    n_components: int | Sequence[int] | None, n_cells: int
) -> int | list[int] | None:
    if n_components is None:
        return None
    if isinstance(n_components, bool):
        raise TypeError("n_components must be an int, a sequence of ints or None, not a bool.")
    values = [n_components] if isinstance(n_components, int | np.integer) else list(n_components)
    if not values or not all(isinstance(k, int | np.integer) for k in values):
        raise TypeError(
            f"n_components must be an int, a non-empty sequence of ints or None, "
            f"got {n_components!r}."
        )
    for k in values:
        checks.positive_int("n_components", k)
        if k > n_cells:
            raise ValueError(
                f"n_components={int(k)} is larger than the number of cells ({n_cells}); "
                f"use at most {n_cells} components (or n_components=None to choose by BIC)."
            )
    if isinstance(n_components, int | np.integer):
        return int(n_components)
    return [int(k) for k in values]


def _relabel_by_size(params: GMMEstimate, X: torch.Tensor) -> GMMEstimate:
    """Order components by decreasing number of hard-assigned cells (stable on ties)."""
    proba = predict_proba(params, X)  # (N, K)
    sizes = torch.bincount(proba.argmax(dim=1), minlength=params.n_components)  # (K,)
    order = torch.from_numpy(np.argsort(-sizes.cpu().numpy(), kind="stable")).to(X.device)
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        setattr(params, name, getattr(params, name)[order])
    return params


@dataclass(frozen=True)
class GMMConfig:
    """The construction options of a :class:`GMM` (see there); validated, JSON-safe.

    ``n_components`` is an int, a tuple of candidate ints (chosen among by BIC) or None
    (BIC over the default candidates).
    """

    use_rep: str = "X_zinbvae"
    n_components: int | tuple[int, ...] | None = None
    covariance_type: Literal["full", "diag"] = "full"
    n_init: int = 1
    max_iter: int = 200
    tol: float = 1e-3
    reg_covar: float = 1e-6

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if not isinstance(self.use_rep, str):
            raise TypeError(f"use_rep must be a string (an obsm key), got {self.use_rep!r}.")
        if isinstance(self.n_components, list):
            put("n_components", tuple(self.n_components))
        checks.choice("covariance_type", self.covariance_type, ("full", "diag"))
        put("n_init", checks.positive_int("n_init", self.n_init))
        put("max_iter", checks.positive_int("max_iter", self.max_iter, minimum=0))
        put("tol", checks.fraction("tol", self.tol, low=0.0, high=math.inf, include_high=False))
        put(
            "reg_covar",
            checks.fraction(
                "reg_covar", self.reg_covar, low=0.0, high=math.inf, include_high=False
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-safe dict (candidate lists as lists)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if isinstance(d["n_components"], tuple):
            d["n_components"] = list(d["n_components"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GMMConfig:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


class GMM(SavedModel):
    """Gaussian mixture model fitted by EM on an embedding in ``adata.obsm``.

    ``k ~ Cat(pi)``, ``x | k ~ N(mu_k, Sigma_k)`` with full or diagonal covariances;
    k-means++ initialisation, ``n_init`` restarts, a log-likelihood that never decreases over
    EM iterations; ``n_components=None`` chooses ``K`` by BIC over ``2 .. min(20, n - 1)`` and
    keeps the curve. Components are labelled ``"0", "1", ...`` by decreasing size.

    Parameters
    ----------
    adata
        AnnData with the embedding in ``adata.obsm[use_rep]``.
    use_rep
        Key of the embedding (``"X_zinbvae"`` after ``model.write_latent``; ``"X_pca"``).
    n_components
        ``K``; None chooses by BIC; a sequence chooses by BIC among its values.
    covariance_type
        ``"full"`` or ``"diag"``.
    n_init, max_iter, tol, reg_covar
        EM settings (restarts, iterations, tolerance on the mean log-likelihood per cell,
        diagonal regularisation). The default ``reg_covar=1e-6`` suits embeddings. On
        high-dimensional, zero-heavy data (genes) a component whose cells are all zero in
        a gene gets a variance of ``reg_covar`` there, and held-out cells with a count in that
        gene score absurdly low: use a larger floor (e.g. 0.1) for such data.

    Attributes
    ----------
    config
        The construction options (:class:`GMMConfig`).
    estimate
        The fitted mixture (:class:`scvae.module.gmm.GMMEstimate`); None before :meth:`fit`.
    seed
        The seed of the last fit (the one drawn when ``seed=None``); None before.
    """

    default_key: ClassVar[str] = "gmm"

    def __init__(
        self,
        adata: AnnData,
        *,
        use_rep: str = "X_zinbvae",
        n_components: int | Sequence[int] | None = None,
        covariance_type: Literal["full", "diag"] = "full",
        n_init: int = 1,
        max_iter: int = 200,
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
    ) -> None:
        if isinstance(n_components, bool) or not (
            n_components is None or isinstance(n_components, int | np.integer | Sequence)
        ):
            raise TypeError(
                "n_components must be an int, a non-empty sequence of ints or None, "
                f"got {n_components!r}."
            )
        if isinstance(n_components, Sequence) and not isinstance(n_components, str):
            n_components = tuple(n_components)
        config = GMMConfig(
            use_rep=use_rep,
            n_components=n_components,
            covariance_type=covariance_type,
            n_init=n_init,
            max_iter=max_iter,
            tol=tol,
            reg_covar=reg_covar,
        )
        X = read_embedding(adata, use_rep)  # (n_cells, n_dims)
        if X.shape[0] < 2:
            raise ValueError(
                f"Need at least 2 cells to fit a mixture model, got {X.shape[0]}; "
                "run gmm on the full data set rather than a subset."
            )
        checked = _check_n_components(config.n_components, X.shape[0])
        if isinstance(checked, list):
            checked = tuple(checked)
        self.config = GMMConfig(**{**config.to_dict(), "n_components": checked})
        self._X: np.ndarray | None = X
        self.estimate: GMMEstimate | None = None
        self.seed: int | None = None

    def __repr__(self) -> str:
        k = self.estimate.n_components if self.estimate is not None else self.config.n_components
        return f"GMM(use_rep={self.config.use_rep!r}, n_components={k})"

    def fit(
        self,
        *,
        seed: int | None = 0,
        accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "cpu",
    ) -> GMM:
        """Fit by EM (choosing K by BIC when asked).

        Parameters
        ----------
        seed
            Seed of the k-means++ initialisation; None draws one (kept in :attr:`seed`).
        accelerator
            ``"cpu"`` (default), ``"gpu"`` (EM on CUDA) or ``"auto"``.
        """
        seed = checks.resolve_seed(seed)
        device = checks.accelerator_device(accelerator)
        if self._X is None:
            raise ValueError("This model was loaded without data; pass adata to fit.")
        X = torch.from_numpy(self._X).to(device)  # (N, D) float64
        config = self.config
        options = {
            "covariance_type": config.covariance_type,
            "n_init": config.n_init,
            "max_iter": config.max_iter,
            "tol": config.tol,
            "reg_covar": config.reg_covar,
        }
        k = config.n_components
        if isinstance(k, int):
            params = fit_gmm(X, k, seed=seed, **options)
        else:
            candidates = default_candidates(X.shape[0]) if k is None else list(k)
            params = fit_gmm(X, None, candidates=candidates, seed=seed, **options)
        self.estimate = _relabel_by_size(params, X)
        self.seed = seed
        return self

    def _check_fitted(self) -> GMMEstimate:
        if self.estimate is None:
            raise RuntimeError("GMM is not fitted yet: call model.fit() first.")
        return self.estimate

    def _data(self, adata: AnnData | None) -> torch.Tensor:
        params = self._check_fitted()
        if adata is None:
            if self._X is None:
                raise ValueError("This model was loaded without data; pass adata.")
            X = self._X
        else:
            X = read_embedding(adata, self.config.use_rep)
            if X.shape[1] != params.n_features:
                raise ValueError(
                    f"adata.obsm[{self.config.use_rep!r}] has {X.shape[1]} dimensions; the "
                    f"mixture was fitted on {params.n_features}."
                )
        return torch.from_numpy(X).to(params.means.device)

    def get_latent(self, adata: AnnData | None = None) -> np.ndarray:
        """Responsibilities ``p(k | x)``: (n_cells, K), rows sum to one."""
        return predict_proba(self._check_fitted(), self._data(adata)).cpu().numpy()

    predict_proba = get_latent

    def predict(self, adata: AnnData | None = None) -> np.ndarray:
        """Most probable component of each cell, (n_cells,) int."""
        return self.get_latent(adata).argmax(axis=1)

    def marginal_log_likelihood(self, adata: AnnData | None = None) -> np.ndarray:
        """Exact ``log p(x) = log sum_k pi_k N(x; mu_k, Sigma_k)`` per cell (nats, float64)."""
        return score_samples(self._check_fitted(), self._data(adata)).cpu().numpy()

    @property
    def bic_curve(self) -> pd.DataFrame | None:
        """BIC per candidate K when K was chosen by BIC, else None."""
        selection = self._check_fitted().model_selection
        return None if selection is None else pd.DataFrame(selection)

    def uns_params(self) -> dict[str, Any]:
        """The options of the fit, the flat h5ad-safe dict of ``uns[key]["params"]``.

        ``n_components`` is as given (None: chosen by BIC, the curve in ``uns[key]["bic"]``).
        """
        self._check_fitted()
        return {**self.config.to_dict(), "seed": self.seed}

    def _uns_record(self) -> dict[str, Any]:
        """What ``write_latent`` stores in ``uns[key]``: options, parameters, BIC curve."""
        params = self._check_fitted()
        record: dict[str, Any] = {
            "params": self.uns_params(),
            "weights": params.weights.cpu().numpy(),
            "means": params.means.cpu().numpy(),
            "covariances": params.covariances.cpu().numpy(),
            "log_likelihood": float(params.lower_bound),
        }
        if params.model_selection is not None:
            record["bic"] = {
                "n_components": np.asarray(params.model_selection["n_components"], dtype=np.int64),
                "bic": np.asarray(params.model_selection["bic"], dtype=np.float64),
            }
        return record

    def write_latent(self, adata: AnnData, *, key_added: str | None = None) -> None:
        """Write ``obs[key]`` (categorical labels), ``obsm[key + "_proba"]`` and ``uns[key]``.

        ``key`` is ``key_added`` or ``"gmm"`` (:func:`scvae.data.cluster_slots`). Nothing else
        is written, and nothing at all if an error is raised.

        Parameters
        ----------
        adata
            The cells to cluster and write into (with the embedding ``use_rep``; not a view).
        key_added
            Name of the result; None: ``"gmm"``.
        """
        check_writable(adata)
        obs_key, proba_key, uns_key = cluster_slots(key_added, self.default_key)
        proba = np.ascontiguousarray(self.get_latent(adata))  # (n_cells, K)
        categories = [str(k) for k in range(proba.shape[1])]
        labels = pd.Categorical.from_codes(proba.argmax(axis=1), categories=categories)
        record = self._uns_record()
        adata.obs[obs_key] = pd.Series(labels, index=adata.obs_names)
        adata.obsm[proba_key] = proba
        adata.uns[uns_key] = record

    # --------------------------------------------------------------------------- persistence
    def _save_meta(self) -> dict[str, Any]:
        params = self._check_fitted()
        return {
            "config": self.config.to_dict(),
            "seed": self.seed,
            "covariance_type": params.covariance_type,
            "log_likelihood_history": params.log_likelihood_history,
            "converged": params.converged,
            "n_iter": params.n_iter,
            "lower_bound": params.lower_bound,
            "model_selection": params.model_selection,
        }

    def _save_tensors(self) -> dict[str, torch.Tensor]:
        params = self._check_fitted()
        return {name: getattr(params, name) for name in _TENSORS}

    @classmethod
    def _restore(
        cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], adata: AnnData | None
    ) -> GMM:
        missing = [name for name in _TENSORS if name not in tensors]
        if missing:
            raise ValueError(f"The saved weights lack {missing}: not a GMM's; save it again.")
        model = cls.__new__(cls)
        model.config = GMMConfig.from_dict(meta["config"])
        model.seed = meta["seed"]
        model.estimate = GMMEstimate(
            **{name: tensors[name] for name in _TENSORS},
            covariance_type=meta["covariance_type"],
            log_likelihood_history=meta["log_likelihood_history"],
            converged=meta["converged"],
            n_iter=meta["n_iter"],
            lower_bound=meta["lower_bound"],
            model_selection=meta["model_selection"],
        )
        model._X = None if adata is None else read_embedding(adata, model.config.use_rep)
        return model
