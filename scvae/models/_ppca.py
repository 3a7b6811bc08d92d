"""Probabilistic PCA (Tipping & Bishop) with the same user-facing API as the VAEs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from anndata import AnnData

from scvae.data import CellData, DataSetup, read_query_data, read_training_data
from scvae.data import log_normalize as log_normalize_cells
from scvae.models._io import META_FILE, prepare_directory, read_meta
from scvae.module import ppca as ppca_core

__all__ = ["PPCA"]

_PARAMS_FILE = "ppca.npz"


def _device(accelerator: str) -> torch.device:
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"accelerator={accelerator!r} but no CUDA device is available.")
        return torch.device("cuda")
    if accelerator == "cpu":
        return torch.device("cpu")
    raise ValueError(f"accelerator={accelerator!r} is not one of 'auto', 'cpu', 'gpu'.")


class PPCA:
    """Probabilistic PCA, fitted in closed form by maximum likelihood.

    ``z ~ N(0, I_L)``, ``x | z ~ N(W z + mu, sigma^2 I)``; ``mu`` is the sample mean,
    ``sigma^2`` the mean of the discarded eigenvalues of the sample covariance and
    ``W = U_L (Lambda_L - sigma^2 I)^(1/2)``. The embedding is the posterior mean
    ``E[z | x] = M^-1 W^T (x - mu)`` with ``M = W^T W + sigma^2 I``, and every cell gets an exact
    log-likelihood under ``N(mu, W W^T + sigma^2 I)`` (Woodbury identity; nothing genes x genes
    is inverted). Sparse counts are never densified as a whole.

    Parameters
    ----------
    adata
        Cells x genes AnnData.
    layer
        Layer with raw counts (``log_normalize=True``), or the data to model as it is.
    n_latent
        Number of components ``L``.
    log_normalize
        Model ``log1p(normalize_total(counts, 1e4))``, computed inside (default, as for
        :class:`GaussianVAE`); False: the layer's values as they are.
    ddof
        Divisor of the sample covariance is ``n - ddof``. The default 0 is the maximum-likelihood
        estimate of Tipping & Bishop, which maximizes the very log-likelihood the model reports;
        ``ddof=1`` reproduces :class:`sklearn.decomposition.PCA`'s ``score_samples`` when there
        are more cells than genes. With fewer cells than genes sklearn averages the discarded
        eigenvalues over ``min(n, G) - L`` instead of ``G - L``: a different noise variance,
        not the maximum-likelihood one.

    Examples
    --------
    >>> model = scvae.PPCA(adata, n_latent=20).fit()
    >>> model.write_latent(adata)  # adata.obsm["X_ppca"], adata.uns["ppca"]
    >>> model.marginal_log_likelihood(heldout)  # exact log p(x) per cell
    """

    default_key: ClassVar[str] = "ppca"

    def __init__(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        n_latent: int = 10,
        log_normalize: bool = True,
        ddof: int = 0,
    ) -> None:
        if not isinstance(n_latent, int | np.integer) or n_latent < 1:
            raise ValueError(f"n_latent must be a positive integer, got {n_latent!r}.")
        if adata.n_vars <= n_latent:
            raise ValueError(
                f"n_latent={n_latent} must be smaller than the number of genes ({adata.n_vars})."
            )
        if ddof not in (0, 1):
            raise ValueError(f"ddof must be 0 (maximum likelihood) or 1, got {ddof!r}.")
        self.config = {
            "n_latent": int(n_latent),
            "log_normalize": bool(log_normalize),
            "ddof": ddof,
        }
        counts = self.config["log_normalize"]
        setup, data = read_training_data(
            adata, layer=layer, batch_key=None, counts=counts, nonnegative=counts
        )
        self.setup = setup
        self.adata = adata
        self._data: CellData | None = log_normalize_cells(data) if counts else data
        self.params_: ppca_core.PPCAParams | None = None
        self.device = torch.device("cpu")

    def __repr__(self) -> str:
        state = "fitted" if self.params_ is not None else "not fitted"
        return f"PPCA({self.setup.n_genes} genes, n_latent={self.config['n_latent']}; {state})"

    # ------------------------------------------------------------------------------- fitting
    def fit(self, *, seed: int = 0, accelerator: str = "auto") -> PPCA:
        """Fit the closed-form maximum-likelihood parameters.

        Parameters
        ----------
        seed
            Seeds the randomized eigensolver used for many genes (exact ``eigh`` otherwise).
        accelerator
            ``"auto"`` (GPU when present), ``"cpu"`` or ``"gpu"``.
        """
        if self._data is None:
            raise ValueError("This model was loaded without its training AnnData; pass adata.")
        self.device = _device(accelerator)
        X = ppca_core._as_matrix(self._data.X).to(self.device)
        self.params_ = ppca_core.fit_ppca(
            X, self.config["n_latent"], ddof=self.config["ddof"], seed=seed
        )
        return self

    def _check_fitted(self) -> ppca_core.PPCAParams:
        if self.params_ is None:
            raise RuntimeError("PPCA is not fitted yet: call model.fit() first.")
        return self.params_

    def _cells(self, adata: AnnData | None) -> CellData:
        if adata is None:
            if self._data is None:
                raise ValueError("This model was loaded without its training AnnData; pass adata.")
            return self._data
        counts = self.config["log_normalize"]
        data = read_query_data(adata, self.setup, counts=counts, nonnegative=counts)
        return log_normalize_cells(data) if counts else data

    def _matrix(self, adata: AnnData | None) -> torch.Tensor:
        return ppca_core._as_matrix(self._cells(adata).X).to(self.device)

    # ----------------------------------------------------------------------------- inference
    def get_latent(self, adata: AnnData | None = None) -> np.ndarray:
        """Posterior means ``E[z | x]``, (n_cells, n_latent) float32."""
        mean, _ = ppca_core.posterior(self._check_fitted(), self._matrix(adata))
        return mean.float().cpu().numpy()

    @property
    def posterior_covariance(self) -> np.ndarray:
        """``Cov[z | x] = sigma^2 M^-1``, the same for every cell: (n_latent, n_latent)."""
        params = self._check_fitted()
        L = params.n_components
        M = params.W.T @ params.W + params.sigma2 * torch.eye(
            L, dtype=params.W.dtype, device=params.W.device
        )
        return (params.sigma2 * torch.linalg.inv(M)).cpu().numpy()

    def marginal_log_likelihood(self, adata: AnnData | None = None) -> np.ndarray:
        """Exact ``log N(x; mu, W W^T + sigma^2 I)`` per cell (nats, float64)."""
        return ppca_core.log_likelihood(self._check_fitted(), self._matrix(adata)).cpu().numpy()

    def params(self) -> dict[str, Any]:
        """Options and fitted scalars as an h5ad-serialisable dict."""
        from scvae import __version__

        fitted = self._check_fitted()
        return {
            "model": "PPCA",
            **self.config,
            "layer": self.setup.layer,
            "sigma2": float(fitted.sigma2),
            "explained_variance_ratio": (fitted.eigenvalues / fitted.total_variance).cpu().numpy(),
            "n_cells_fitted": fitted.n_samples,
            "scvae_version": __version__,
        }

    def write_latent(self, adata: AnnData, *, key_added: str | None = None) -> None:
        """Write ``obsm["X_<key>"]`` (posterior means) and ``uns[<key>]["params"]``; nothing else.

        ``<key>`` is ``key_added`` or ``"ppca"``. Nothing is written if an error is raised.
        """
        if adata.is_view:
            raise ValueError(
                "adata is a view; writing to it would silently copy it. Write to the full "
                "AnnData, or make the view a real object first: adata = adata.copy()."
            )
        key = key_added or self.default_key
        latent = self.get_latent(adata)
        params = {k: v for k, v in self.params().items() if v is not None}
        adata.obsm[f"X_{key}"] = latent
        adata.uns[key] = {"params": params}

    # --------------------------------------------------------------------------- persistence
    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Save the parameters (``ppca.npz``) and options (``model.json``) into a directory."""
        fitted = self._check_fitted()
        path = prepare_directory(path, overwrite=overwrite)
        np.savez(
            path / _PARAMS_FILE,
            mean=fitted.mean.cpu().numpy(),
            W=fitted.W.cpu().numpy(),
            sigma2=fitted.sigma2.cpu().numpy(),
            eigenvalues=fitted.eigenvalues.cpu().numpy(),
            total_variance=fitted.total_variance.cpu().numpy(),
        )
        meta = {
            "class": "PPCA",
            "config": self.config,
            "setup": self.setup.to_dict(),
            "n_samples": fitted.n_samples,
        }
        (path / META_FILE).write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: str | Path, adata: AnnData | None = None) -> PPCA:
        """Load a model written by :meth:`save`; ``adata`` becomes the default for getters."""
        path, meta = read_meta(path)
        if meta["class"] != "PPCA":
            raise ValueError(f"{path} holds a {meta['class']}, not a PPCA.")
        model = cls.__new__(cls)
        model.config = meta["config"]
        model.setup = DataSetup.from_dict(meta["setup"])
        model.adata = adata
        model.device = torch.device("cpu")
        model._data = None
        with np.load(path / _PARAMS_FILE) as arrays:
            tensors = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
        model.params_ = ppca_core.PPCAParams(
            **tensors, n_samples=meta["n_samples"], ddof=meta["config"]["ddof"]
        )
        if adata is not None:
            model._data = model._cells(adata)
        return model
