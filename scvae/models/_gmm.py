"""Gaussian mixture clustering of an embedding, with the same API as the other models."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import scipy.sparse
import torch
from anndata import AnnData

from scvae.models._io import META_FILE, prepare_directory, read_meta
from scvae.module.gmm import GMMParams, default_candidates, fit_gmm, predict_proba, score_samples

__all__ = ["GMM"]

_PARAMS_FILE = "gmm.npz"


def _embedding(adata: AnnData, use_rep: str) -> np.ndarray:
    """``adata.obsm[use_rep]`` as a finite float64 ``(n_cells, n_dims)`` array, or raise."""
    if use_rep not in adata.obsm:
        available = ", ".join(repr(k) for k in adata.obsm) or "none"
        raise KeyError(
            f"use_rep={use_rep!r} is not in adata.obsm (available keys: {available}). "
            "Write an embedding first, e.g. with a fitted model's "
            "model.write_latent(adata) (-> 'X_zinbvae') or sc.pp.pca(adata) (-> 'X_pca'), "
            "or pass use_rep=<one of the available keys>."
        )
    rep = adata.obsm[use_rep]
    if scipy.sparse.issparse(rep):
        rep = rep.toarray()
    rep = np.asarray(rep)
    if rep.ndim != 2 or rep.shape[1] == 0:
        raise ValueError(
            f"adata.obsm[{use_rep!r}] must be a 2-D (n_cells, n_dims) array with n_dims >= 1, "
            f"got shape {rep.shape}."
        )
    if not (np.issubdtype(rep.dtype, np.floating) or np.issubdtype(rep.dtype, np.integer)):
        raise ValueError(f"adata.obsm[{use_rep!r}] must be numeric, got dtype {rep.dtype}.")
    rep = rep.astype(np.float64)
    finite = np.isfinite(rep).all(axis=1)  # (n_cells,)
    if not finite.all():
        bad = adata.obs_names[~finite]
        raise ValueError(
            f"adata.obsm[{use_rep!r}] has NaN or infinite values in {bad.size} of "
            f"{rep.shape[0]} cells (e.g. {list(bad[:5])}). Recompute the embedding (a diverged "
            "model gives NaN latents) or subset the AnnData to the finite cells first."
        )
    return rep


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
        if k < 1:
            raise ValueError(f"n_components must be >= 1, got {int(k)}.")
        if k > n_cells:
            raise ValueError(
                f"n_components={int(k)} is larger than the number of cells ({n_cells}); "
                f"use at most {n_cells} components (or n_components=None to choose by BIC)."
            )
    if isinstance(n_components, int | np.integer):
        return int(n_components)
    return [int(k) for k in values]


def _relabel_by_size(params: GMMParams, X: torch.Tensor) -> GMMParams:
    """Order components by decreasing number of hard-assigned cells (stable on ties)."""
    proba = predict_proba(params, X)  # (N, K)
    sizes = torch.bincount(proba.argmax(dim=1), minlength=params.n_components)  # (K,)
    order = torch.from_numpy(np.argsort(-sizes.cpu().numpy(), kind="stable")).to(X.device)
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        setattr(params, name, getattr(params, name)[order])
    return params


class GMM:
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
        if not isinstance(adata, AnnData):
            raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
        if covariance_type not in ("full", "diag"):
            raise ValueError(f"covariance_type must be 'full' or 'diag', got {covariance_type!r}.")
        X = _embedding(adata, use_rep)  # (n_cells, n_dims)
        if X.shape[0] < 2:
            raise ValueError(
                f"Need at least 2 cells to fit a mixture model, got {X.shape[0]}; "
                "run gmm on the full data set rather than a subset."
            )
        checked_k = _check_n_components(n_components, X.shape[0])
        self.config: dict[str, Any] = {
            "use_rep": use_rep,
            "n_components": checked_k,
            "covariance_type": covariance_type,
            "n_init": n_init,
            "max_iter": max_iter,
            "tol": tol,
            "reg_covar": reg_covar,
        }
        self.adata = adata
        self._X: np.ndarray | None = X
        self.params_: GMMParams | None = None
        self.seed: int | None = None

    def __repr__(self) -> str:
        k = self.params_.n_components if self.params_ is not None else self.config["n_components"]
        return f"GMM(use_rep={self.config['use_rep']!r}, n_components={k})"

    def fit(self, *, seed: int = 0, accelerator: str = "cpu") -> GMM:
        """Fit by EM (choosing K by BIC when asked); ``accelerator="gpu"`` runs EM on CUDA."""
        if self._X is None:
            raise ValueError("This model was loaded without data; pass adata to fit.")
        device = torch.device("cuda" if accelerator in ("gpu", "cuda") else "cpu")
        if accelerator == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        X = torch.from_numpy(self._X).to(device)  # (N, D) float64
        options = {
            k: self.config[k] for k in ("covariance_type", "n_init", "max_iter", "tol", "reg_covar")
        }
        k = self.config["n_components"]
        if isinstance(k, int):
            params = fit_gmm(X, k, seed=seed, **options)
        else:
            candidates = default_candidates(X.shape[0]) if k is None else k
            params = fit_gmm(X, None, candidates=candidates, seed=seed, **options)
        self.params_ = _relabel_by_size(params, X)
        self.seed = seed
        return self

    def _check_fitted(self) -> GMMParams:
        if self.params_ is None:
            raise RuntimeError("GMM is not fitted yet: call model.fit() first.")
        return self.params_

    def _data(self, adata: AnnData | None) -> torch.Tensor:
        params = self._check_fitted()
        if adata is None:
            if self._X is None:
                raise ValueError("This model was loaded without data; pass adata.")
            X = self._X
        else:
            X = _embedding(adata, self.config["use_rep"])
            if X.shape[1] != params.n_features:
                raise ValueError(
                    f"adata.obsm[{self.config['use_rep']!r}] has {X.shape[1]} dimensions; the "
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

    def uns_record(self) -> dict[str, Any]:
        """What ``write_latent`` stores in ``uns[key]``: options, parameters, BIC curve."""
        params = self._check_fitted()
        record: dict[str, Any] = {
            "params": {
                **self.config,  # n_components None: chosen by BIC (curve in "bic")
                "seed": self.seed,
            },
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

        Nothing else is written, and nothing at all if an error is raised.
        """
        if adata.is_view:
            raise ValueError(
                "adata is a view; results cannot be written into it (anndata would silently "
                "turn it into a copy). Pass adata = adata.copy() first."
            )
        key = key_added or self.default_key
        if not isinstance(key, str) or not key:
            raise ValueError(f"key_added must be a non-empty string, got {key!r}.")
        proba = np.ascontiguousarray(self.get_latent(adata))  # (n_cells, K)
        categories = [str(k) for k in range(proba.shape[1])]
        labels = pd.Categorical.from_codes(proba.argmax(axis=1), categories=categories)
        record = self.uns_record()
        adata.obs[key] = pd.Series(labels, index=adata.obs_names)
        adata.obsm[f"{key}_proba"] = proba
        adata.uns[key] = record

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Save the parameters (``gmm.npz``) and options (``model.json``) into a directory."""
        params = self._check_fitted()
        path = prepare_directory(path, overwrite=overwrite)
        np.savez(
            path / _PARAMS_FILE,
            **{
                k: getattr(params, k).cpu().numpy()
                for k in ("weights", "means", "covariances", "precisions_cholesky")
            },
        )
        meta = {
            "class": "GMM",
            "config": self.config,
            "seed": self.seed,
            "covariance_type": params.covariance_type,
            "log_likelihood_history": params.log_likelihood_history,
            "converged": params.converged,
            "n_iter": params.n_iter,
            "lower_bound": params.lower_bound,
            "model_selection": params.model_selection,
        }
        (path / META_FILE).write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: str | Path, adata: AnnData | None = None) -> GMM:
        """Load a model written by :meth:`save`; ``adata`` becomes the default for getters."""
        path, meta = read_meta(path)
        if meta["class"] != "GMM":
            raise ValueError(f"{path} holds a {meta['class']}, not a GMM.")
        model = cls.__new__(cls)
        model.config = meta["config"]
        model.seed = meta["seed"]
        model.adata = adata
        with np.load(path / _PARAMS_FILE) as arrays:
            tensors = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
        model.params_ = GMMParams(
            **tensors,
            covariance_type=meta["covariance_type"],
            log_likelihood_history=meta["log_likelihood_history"],
            converged=meta["converged"],
            n_iter=meta["n_iter"],
            lower_bound=meta["lower_bound"],
            model_selection=meta["model_selection"],
        )
        model._X = None if adata is None else _embedding(adata, model.config["use_rep"])
        return model
