"""Probabilistic PCA (Tipping & Bishop) with the same user-facing API as the VAEs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from anndata import AnnData

from scvae import checks
from scvae.data import (
    CellData,
    DataSetup,
    check_writable,
    latent_slots,
    read_query_data,
    read_training_data,
)
from scvae.data import log_normalize as log_normalize_cells
from scvae.models._io import SavedModel
from scvae.module import ppca as ppca_core
from scvae.module.ppca import PPCAEstimate

__all__ = ["PPCA", "PPCAConfig"]

_TENSORS = ("mean", "W", "sigma2", "eigenvalues", "total_variance")


@dataclass(frozen=True)
class PPCAConfig:
    """The construction options of a :class:`PPCA` (see there); validated, JSON-safe.

    Attributes
    ----------
    n_latent
        Number of components ``L``.
    log_normalize
        Model ``log1p(normalize_total(counts, 1e4))`` instead of the values as they are.
    ddof
        Divisor of the sample covariance is ``n - ddof``.
    """

    n_latent: int = 10
    log_normalize: bool = True
    ddof: Literal[0, 1] = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_latent", checks.positive_int("n_latent", self.n_latent))
        object.__setattr__(
            self, "log_normalize", checks.boolean("log_normalize", self.log_normalize)
        )
        ddof = checks.positive_int("ddof", self.ddof, minimum=0)
        if ddof not in (0, 1):
            raise ValueError(f"ddof must be 0 (maximum likelihood) or 1, got {ddof!r}.")
        object.__setattr__(self, "ddof", ddof)

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-safe dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PPCAConfig:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


class PPCA(SavedModel):
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

    Attributes
    ----------
    config
        The construction options (:class:`PPCAConfig`).
    estimate
        The fitted parameters (:class:`scvae.module.ppca.PPCAEstimate`); None before
        :meth:`fit`.
    setup
        What the model read from its training AnnData (layer, genes).
    seed
        The seed of the last fit (the one drawn when ``seed=None``); None before.
    """

    default_key: ClassVar[str] = "ppca"

    def __init__(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        n_latent: int = 10,
        log_normalize: bool = True,
        ddof: Literal[0, 1] = 0,
    ) -> None:
        config = PPCAConfig(n_latent=n_latent, log_normalize=log_normalize, ddof=ddof)
        if isinstance(adata, AnnData) and adata.n_vars <= config.n_latent:
            raise ValueError(
                f"n_latent={config.n_latent} must be smaller than the number of genes "
                f"({adata.n_vars})."
            )
        counts = config.log_normalize
        setup, data = read_training_data(
            adata, layer=layer, batch_key=None, counts=counts, nonnegative=counts
        )
        self.config = config
        self.setup = setup
        self._data: CellData | None = log_normalize_cells(data) if counts else data
        self.estimate: PPCAEstimate | None = None
        self.seed: int | None = None
        self.device = torch.device("cpu")

    def __repr__(self) -> str:
        state = "fitted" if self.estimate is not None else "not fitted"
        return f"PPCA({self.setup.n_genes} genes, n_latent={self.config.n_latent}; {state})"

    # ------------------------------------------------------------------------------- fitting
    def fit(
        self,
        *,
        seed: int | None = 0,
        accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto",
    ) -> PPCA:
        """Fit the closed-form maximum-likelihood parameters.

        Parameters
        ----------
        seed
            Seeds the randomized eigensolver used for many genes (exact ``eigh`` otherwise);
            None draws one (kept in :attr:`seed`).
        accelerator
            ``"auto"`` (GPU when present), ``"cpu"`` or ``"gpu"``.
        """
        seed = checks.resolve_seed(seed)
        device = checks.accelerator_device(accelerator)
        if self._data is None:
            raise ValueError("This model was loaded without its training AnnData; pass adata.")
        self.device = device
        X = ppca_core._as_matrix(self._data.X).to(self.device)
        self.estimate = ppca_core.fit_ppca(
            X, self.config.n_latent, ddof=self.config.ddof, seed=seed
        )
        self.seed = seed
        return self

    def _check_fitted(self) -> PPCAEstimate:
        if self.estimate is None:
            raise RuntimeError("PPCA is not fitted yet: call model.fit() first.")
        return self.estimate

    def _cells(self, adata: AnnData | None) -> CellData:
        if adata is None:
            if self._data is None:
                raise ValueError("This model was loaded without its training AnnData; pass adata.")
            return self._data
        counts = self.config.log_normalize
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

    def uns_params(self) -> dict[str, Any]:
        """Options and fitted scalars as the flat, h5ad-safe dict of ``uns[key]["params"]``."""
        from scvae import __version__

        fitted = self._check_fitted()
        record = {
            "model": "PPCA",
            **self.config.to_dict(),
            "layer": self.setup.layer,
            "seed": self.seed,
            "sigma2": float(fitted.sigma2),
            "explained_variance_ratio": (fitted.eigenvalues / fitted.total_variance).cpu().numpy(),
            "n_cells_fitted": fitted.n_samples,
            "scvae_version": __version__,
        }
        return {k: v for k, v in record.items() if v is not None}

    def write_latent(self, adata: AnnData, *, key_added: str | None = None) -> None:
        """Write ``obsm["X_<key>"]`` (posterior means) and ``uns[<key>]["params"]``; nothing else.

        ``<key>`` is ``key_added`` or ``"ppca"`` (``key_added="X_pc"`` writes ``obsm["X_pc"]``
        and ``uns["pc"]``, see :func:`scvae.data.latent_slots`). Nothing is written if an
        error is raised.

        Parameters
        ----------
        adata
            The cells to embed and write into (the training genes; not a view).
        key_added
            Name of the result; None: ``"ppca"``.
        """
        check_writable(adata)
        obsm_key, uns_key = latent_slots(key_added, self.default_key)
        latent = self.get_latent(adata)
        params = self.uns_params()
        adata.obsm[obsm_key] = latent
        adata.uns[uns_key] = {"params": params}

    # --------------------------------------------------------------------------- persistence
    def _save_meta(self) -> dict[str, Any]:
        fitted = self._check_fitted()
        return {
            "config": self.config.to_dict(),
            "setup": self.setup.to_dict(),
            "n_samples": fitted.n_samples,
            "seed": self.seed,
        }

    def _save_tensors(self) -> dict[str, torch.Tensor]:
        fitted = self._check_fitted()
        return {name: getattr(fitted, name) for name in _TENSORS}

    @classmethod
    def _restore(
        cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], adata: AnnData | None
    ) -> PPCA:
        missing = [name for name in _TENSORS if name not in tensors]
        if missing:
            raise ValueError(f"The saved weights lack {missing}: not a PPCA's; save it again.")
        model = cls.__new__(cls)
        model.config = PPCAConfig.from_dict(meta["config"])
        model.setup = DataSetup.from_dict(meta["setup"])
        model.device = torch.device("cpu")
        model.seed = meta.get("seed")
        model._data = None
        model.estimate = PPCAEstimate(
            **{name: tensors[name] for name in _TENSORS},
            n_samples=meta["n_samples"],
            ddof=model.config.ddof,
        )
        if adata is not None:
            model._data = model._cells(adata)
        return model
