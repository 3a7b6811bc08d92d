"""Factor analysis (EM from PPCA's solution) with the same user-facing API as PPCA."""

from __future__ import annotations

import math
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
from scvae.module import fa as fa_core
from scvae.module.fa import DEFAULT_PSI_FLOOR, FAEstimate
from scvae.module.ppca import _as_matrix

__all__ = ["FactorAnalysis", "FactorAnalysisConfig"]

_TENSORS = ("mean", "W", "psi", "psi_min", "log_likelihood")


@dataclass(frozen=True)
class FactorAnalysisConfig:
    """The construction options of a :class:`FactorAnalysis` (see there); validated, JSON-safe.

    Attributes
    ----------
    n_latent
        Number of factors ``L``.
    log_normalize
        Model ``log1p(normalize_total(counts, 1e4))`` instead of the values as they are.
    psi_floor
        Floor of the noise variances, relative to the mean gene variance.
    max_iter
        Maximum number of EM iterations.
    tol
        EM stops when the mean log-likelihood per cell improves by less than this (nats).
    """

    n_latent: int = 10
    log_normalize: bool = True
    psi_floor: float = DEFAULT_PSI_FLOOR
    max_iter: int = 1000
    tol: float = 1e-4

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("n_latent", checks.positive_int("n_latent", self.n_latent))
        put("log_normalize", checks.boolean("log_normalize", self.log_normalize))
        put(
            "psi_floor",
            checks.fraction(
                "psi_floor",
                self.psi_floor,
                low=0.0,
                high=math.inf,
                include_low=False,
                include_high=False,
            ),
        )
        put("max_iter", checks.positive_int("max_iter", self.max_iter))
        put("tol", checks.fraction("tol", self.tol, low=0.0, high=math.inf, include_high=False))

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-safe dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FactorAnalysisConfig:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


class FactorAnalysis(SavedModel):
    """Factor analysis, fitted by EM from probabilistic PCA's closed-form solution.

    ``z ~ N(0, I_L)``, ``x | z ~ N(W z + mu, Psi)`` with ``Psi`` diagonal: a noise variance per
    gene, where :class:`PPCA` has one for all. ``mu`` is the sample mean; ``W`` and ``Psi``
    maximize the likelihood by EM (it never decreases; the iterations are in
    ``estimate.log_likelihood``), on the GPU when one is present, in float64. The embedding is
    the posterior mean ``E[z | x] = M^-1 W^T Psi^-1 (x - mu)`` with
    ``M = I + W^T Psi^-1 W``, and every cell gets an exact log-likelihood under
    ``N(mu, W W^T + Psi)`` (Woodbury identity and determinant lemma; nothing genes x genes is
    formed). Sparse counts are never densified as a whole.

    Parameters
    ----------
    adata
        Cells x genes AnnData.
    layer
        Layer with raw counts (``log_normalize=True``), or the data to model as it is.
    n_latent
        Number of factors ``L`` (fewer than the genes).
    log_normalize
        Model ``log1p(normalize_total(counts, 1e4))``, computed inside (default, as for
        :class:`PPCA`); False: the layer's values as they are.
    psi_floor
        Floor of each gene's noise variance, relative to the mean gene variance:
        ``psi_g >= psi_floor * mean_g Var(x_g)``. A gene with no count in any training cell
        has variance 0, and without a floor a held-out cell with a count there would score
        about ``-x^2 / (2 psi_g)``, i.e. minus infinity. The default 1e-2 is 1 % of the mean
        gene variance; on the shared data it changes the held-out log-likelihood by less than
        any smaller floor tried does (see ``docs/benchmarks.md``), and the training genes of a
        fit that reaches it are counted in ``uns_params()["n_genes_at_floor"]``.
    max_iter
        Maximum number of EM iterations (a ``RuntimeWarning`` if reached before ``tol``).
    tol
        EM stops when an iteration improves the mean log-likelihood per cell by less than
        ``tol`` nats.

    Examples
    --------
    >>> model = scvae.FactorAnalysis(adata, n_latent=10).fit()
    >>> model.write_latent(adata)  # obsm["X_fa"], varm["FA_loadings"], uns["fa"]
    >>> model.marginal_log_likelihood(heldout)  # exact log p(x) per cell

    Attributes
    ----------
    config
        The construction options (:class:`FactorAnalysisConfig`).
    estimate
        The fitted parameters (:class:`scvae.module.fa.FAEstimate`); None before :meth:`fit`.
    setup
        What the model read from its training AnnData (layer, genes).
    seed
        The seed of the last fit (the one drawn when ``seed=None``); None before.
    """

    default_key: ClassVar[str] = "fa"

    def __init__(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        n_latent: int = 10,
        log_normalize: bool = True,
        psi_floor: float = DEFAULT_PSI_FLOOR,
        max_iter: int = 1000,
        tol: float = 1e-4,
    ) -> None:
        config = FactorAnalysisConfig(
            n_latent=n_latent,
            log_normalize=log_normalize,
            psi_floor=psi_floor,
            max_iter=max_iter,
            tol=tol,
        )
        if isinstance(adata, AnnData) and adata.n_vars <= config.n_latent:
            raise ValueError(
                f"n_latent={config.n_latent} must be smaller than the number of genes "
                f"({adata.n_vars})."
            )
        counts = config.log_normalize
        setup, data = read_training_data(
            adata, layer=layer, batch_key=None, counts=counts, nonnegative=counts
        )
        if data.X.shape[0] < 2:
            raise ValueError(f"Factor analysis needs at least 2 cells, got {data.X.shape[0]}.")
        self.config = config
        self.setup = setup
        self._data: CellData | None = log_normalize_cells(data) if counts else data
        self.estimate: FAEstimate | None = None
        self.seed: int | None = None
        self.device = torch.device("cpu")

    def __repr__(self) -> str:
        state = "fitted" if self.estimate is not None else "not fitted"
        return (
            f"FactorAnalysis({self.setup.n_genes} genes, n_latent={self.config.n_latent}; {state})"
        )

    # ------------------------------------------------------------------------------- fitting
    def fit(
        self,
        *,
        seed: int | None = 0,
        accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto",
    ) -> FactorAnalysis:
        """Fit by EM from PPCA's solution until ``tol`` or ``max_iter``.

        Parameters
        ----------
        seed
            Seeds PPCA's randomized eigensolver (used for the initialization with many genes;
            exact ``eigh`` otherwise); None draws one (kept in :attr:`seed`).
        accelerator
            ``"auto"`` (GPU when present), ``"cpu"`` or ``"gpu"``.

        Returns
        -------
        FactorAnalysis
            ``self``, fitted.
        """
        seed = checks.resolve_seed(seed)
        device = checks.accelerator_device(accelerator)
        if self._data is None:
            raise ValueError("This model was loaded without its training AnnData; pass adata.")
        X = _as_matrix(self._data.X).to(device)
        estimate = fa_core.fit_fa(
            X,
            self.config.n_latent,
            psi_floor=self.config.psi_floor,
            max_iter=self.config.max_iter,
            tol=self.config.tol,
            seed=seed,
        )
        self.device = device
        self.estimate = estimate
        self.seed = seed
        return self

    def _check_fitted(self) -> FAEstimate:
        if self.estimate is None:
            raise RuntimeError("FactorAnalysis is not fitted yet: call model.fit() first.")
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
        return _as_matrix(self._cells(adata).X).to(self.device)

    # ----------------------------------------------------------------------------- inference
    def get_latent(self, adata: AnnData | None = None) -> np.ndarray:
        """Posterior means ``E[z | x]``.

        Parameters
        ----------
        adata
            Cells with the training genes; None: the training cells.

        Returns
        -------
        numpy.ndarray
            (n_cells, n_latent) float32.
        """
        mean, _ = fa_core.posterior(self._check_fitted(), self._matrix(adata))
        return mean.float().cpu().numpy()

    @property
    def posterior_covariance(self) -> np.ndarray:
        """``Cov[z | x] = (I + W^T Psi^-1 W)^-1``, the same for every cell: (n_latent, n_latent)."""
        params = self._check_fitted()
        V = params.W / params.psi[:, None]
        M = torch.eye(params.n_components, dtype=V.dtype, device=V.device) + params.W.T @ V
        return torch.linalg.inv(M).cpu().numpy()

    @property
    def loadings(self) -> np.ndarray:
        """The loading matrix ``W``, (n_genes, n_latent) float64."""
        return self._check_fitted().W.cpu().numpy()

    @property
    def noise_variance(self) -> np.ndarray:
        """The per-gene noise variances ``diag(Psi)``, (n_genes,) float64."""
        return self._check_fitted().psi.cpu().numpy()

    def marginal_log_likelihood(self, adata: AnnData | None = None) -> np.ndarray:
        """Exact ``log N(x; mu, W W^T + Psi)`` per cell.

        Parameters
        ----------
        adata
            Cells with the training genes; None: the training cells.

        Returns
        -------
        numpy.ndarray
            (n_cells,) float64, nats.
        """
        return fa_core.log_likelihood(self._check_fitted(), self._matrix(adata)).cpu().numpy()

    def uns_params(self) -> dict[str, Any]:
        """Options and fitted scalars as the flat, h5ad-safe dict of ``uns[key]["params"]``.

        Returns
        -------
        dict
            The options, layer, seed, EM iterations and convergence, the final mean training
            log-likelihood, the absolute floor and how many genes sit on it, and the per-gene
            noise variances.
        """
        from scvae import __version__

        fitted = self._check_fitted()
        psi = fitted.psi.cpu()
        floor = float(fitted.psi_min)
        record = {
            "model": "FactorAnalysis",
            **self.config.to_dict(),
            "layer": self.setup.layer,
            "seed": self.seed,
            "n_iter": fitted.n_iter,
            "converged": bool(fitted.converged),
            "log_likelihood": float(fitted.log_likelihood[-1]),
            "psi_min": floor,
            "n_genes_at_floor": int((psi <= floor * (1 + 1e-12)).sum()),
            "noise_variance": psi.numpy(),
            "n_cells_fitted": fitted.n_samples,
            "scvae_version": __version__,
        }
        return {k: v for k, v in record.items() if v is not None}

    def _varm_key(self, key_added: str | None) -> str:
        _, uns_key = latent_slots(key_added, self.default_key)
        return "FA_loadings" if key_added is None else f"{uns_key}_loadings"

    def write_latent(self, adata: AnnData, *, key_added: str | None = None) -> None:
        """Write ``obsm["X_<key>"]``, ``varm`` loadings and ``uns[<key>]["params"]``; nothing else.

        ``<key>`` is ``key_added`` or ``"fa"`` (``key_added="X_f"`` writes ``obsm["X_f"]`` and
        ``uns["f"]``, see :func:`scvae.data.latent_slots`). The loadings ``W`` (n_genes x
        n_latent) go to ``varm["FA_loadings"]`` by default and to ``varm["<key>_loadings"]``
        with a ``key_added``. Nothing is written if an error is raised.

        Parameters
        ----------
        adata
            The cells to embed and write into (the training genes; not a view).
        key_added
            Name of the result; None: ``"fa"``.
        """
        check_writable(adata)
        obsm_key, uns_key = latent_slots(key_added, self.default_key)
        varm_key = self._varm_key(key_added)
        latent = self.get_latent(adata)
        params = self.uns_params()
        loadings = self.loadings.astype(np.float32)
        adata.obsm[obsm_key] = latent
        adata.varm[varm_key] = loadings
        adata.uns[uns_key] = {"params": params}

    # --------------------------------------------------------------------------- persistence
    def _save_meta(self) -> dict[str, Any]:
        fitted = self._check_fitted()
        return {
            "config": self.config.to_dict(),
            "setup": self.setup.to_dict(),
            "n_samples": fitted.n_samples,
            "converged": bool(fitted.converged),
            "seed": self.seed,
        }

    def _save_tensors(self) -> dict[str, torch.Tensor]:
        fitted = self._check_fitted()
        return {name: torch.as_tensor(getattr(fitted, name)).cpu() for name in _TENSORS}

    @classmethod
    def _restore(
        cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], adata: AnnData | None
    ) -> FactorAnalysis:
        missing = [name for name in _TENSORS if name not in tensors]
        if missing:
            raise ValueError(
                f"The saved weights lack {missing}: not a FactorAnalysis's; save it again."
            )
        model = cls.__new__(cls)
        model.config = FactorAnalysisConfig.from_dict(meta["config"])
        model.setup = DataSetup.from_dict(meta["setup"])
        model.device = torch.device("cpu")
        model.seed = meta.get("seed")
        model._data = None
        model.estimate = FAEstimate(
            **{name: tensors[name] for name in _TENSORS},
            n_samples=meta["n_samples"],
            converged=bool(meta.get("converged", True)),
        )
        if adata is not None:
            model._data = model._cells(adata)
        return model
