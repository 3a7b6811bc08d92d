"""Gaussian mixture models fitted by expectation–maximisation, as pure functions of tensors.

The model is ``p(x) = sum_k w_k N(x; m_k, Sigma_k)`` with ``"full"`` or ``"diag"``
covariances. As in :class:`sklearn.mixture.GaussianMixture`, densities are evaluated through
the Cholesky factor ``P_k`` of the precision (``Sigma_k^{-1} = P_k P_k^T``)::

    log N(x; m_k, Sigma_k) = -1/2 (D log 2 pi + ||(x - m_k)^T P_k||^2) + sum_d log (P_k)_dd

and ``reg_covar`` is added to the diagonal of every covariance estimate.

Memory: the E- and M-steps walk over chunks of cells (each chunk holds ``chunk x K x D``
floats, about 4 MiB) and keep only the ``N x K`` responsibilities, so 10^6 cells x 30 dims x
20 components needs the float64 data (0.24 GB) and responsibilities (0.16 GB, twice during the
initialisation); a whole such fit peaked at 1.1 GB resident memory, torch included. The
M-step is exact (centred on each component mean, as sklearn), not the one-pass
``E[x x^T] - m m^T`` that loses digits when the clusters are far from the origin.

Everything runs in float64 by default, on the device of the input (a CUDA tensor gives a CUDA
fit; the random initialisation is drawn on the CPU and moved, so results do not depend on the
device's random number generator). float32 can be requested with ``dtype=torch.float32``,
which is faster on GPUs; the log-likelihood history is then monotone only up to float32
rounding, and ``reg_covar`` should be raised to about ``1e-4``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from scvae.module.kmeans import assign, kmeans_plusplus, lloyd, row_slices

__all__ = [
    "ConvergenceWarning",
    "GMMEstimate",
    "aic",
    "bic",
    "default_candidates",
    "fit_gmm",
    "n_parameters",
    "predict",
    "predict_proba",
    "score_samples",
    "select_n_components",
]

CovarianceType = Literal["full", "diag"]
InitMethod = Literal["kmeans", "k-means++"]
ArrayLike = torch.Tensor | np.ndarray

#: Chunks of cells hold about this many ``chunk x K x D`` floats (4 MiB in float64): small
#: enough to stay in cache, which is faster than one big chunk.
_CHUNK_ELEMENTS = 1 << 19
_LOG_2PI = math.log(2.0 * math.pi)


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the log-likelihood changed by less than ``tol``."""


@dataclass
class GMMEstimate:
    """Parameters and fit diagnostics of a Gaussian mixture.

    Attributes
    ----------
    weights
        ``(K,)`` mixing weights, summing to one.
    means
        ``(K, D)`` component means.
    covariances
        ``(K, D, D)`` for ``"full"`` or ``(K, D)`` for ``"diag"`` (the diagonals).
    precisions_cholesky
        Same shape as ``covariances``: ``P_k`` with ``Sigma_k^{-1} = P_k P_k^T`` (``"full"``)
        or ``1 / sqrt(diag Sigma_k)`` (``"diag"``).
    covariance_type
        ``"full"`` or ``"diag"``.
    log_likelihood_history
        Mean per-cell log-likelihood of the parameters after each EM iteration; entry 0 is
        the initialisation, entry ``i`` follows the ``i``-th M-step, the last entry belongs to
        the returned parameters. Non-decreasing up to rounding and the tiny ``reg_covar``.
    converged
        Whether EM stopped because the mean log-likelihood changed by less than ``tol``
        between two consecutive iterations (one more M-step is then taken, as in sklearn).
    n_iter
        Number of EM iterations (M-steps) run.
    lower_bound
        Mean per-cell log-likelihood of the returned parameters on the training data
        (``log_likelihood_history[-1]``).
    model_selection
        When the number of components was chosen by BIC: ``{"n_components": [...],
        "bic": [...]}`` over all candidates; otherwise ``None``.
    """

    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor
    precisions_cholesky: torch.Tensor
    covariance_type: str
    log_likelihood_history: list[float] = field(default_factory=list)
    converged: bool = False
    n_iter: int = 0
    lower_bound: float = float("-inf")
    model_selection: dict[str, list] | None = None

    @property
    def n_components(self) -> int:
        """Number of mixture components ``K``."""
        return self.means.shape[0]

    @property
    def n_features(self) -> int:
        """Dimension ``D`` of the data."""
        return self.means.shape[1]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _as_data(X: ArrayLike, dtype: torch.dtype) -> torch.Tensor:
    """Return ``X`` as a dense 2-D tensor of ``dtype`` on its own device, checked finite."""
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(np.ascontiguousarray(X))
    elif not isinstance(X, torch.Tensor):
        raise TypeError(f"X must be a torch.Tensor or numpy array, got {type(X).__name__}.")
    if X.layout != torch.strided:
        raise TypeError("X must be dense; a mixture model is fitted on a low-dim embedding.")
    if X.dim() != 2:
        raise ValueError(f"X must be 2-D (cells x dims), got shape {tuple(X.shape)}.")
    X = X.to(dtype)
    if not bool(torch.isfinite(X).all()):
        raise ValueError("X contains NaN or infinite values; remove or impute them first.")
    return X


def _chunk_size(n_components: int, n_features: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, n_components * n_features))


def _check_covariance_type(covariance_type: str) -> None:
    if covariance_type not in ("full", "diag"):
        raise ValueError(f"covariance_type must be 'full' or 'diag', got {covariance_type!r}.")


def _precision_cholesky_from_covariances(
    covariances: torch.Tensor, covariance_type: str
) -> torch.Tensor:
    """``P_k = (chol Sigma_k)^{-T}`` (full) or ``1 / sqrt(Sigma_k)`` (diag)."""
    message = (
        "Fitting the mixture model failed: a covariance matrix is not positive definite "
        "(a component collapsed onto too few cells or duplicated points). Increase "
        "reg_covar, reduce n_components, or check the embedding for duplicated cells."
    )
    if covariance_type == "diag":
        if bool((covariances <= 0).any()):
            raise ValueError(message)
        return covariances.rsqrt()  # (K, D)
    chol, info = torch.linalg.cholesky_ex(covariances)  # (K, D, D) lower
    if bool((info != 0).any()):
        raise ValueError(message)
    eye = torch.eye(covariances.shape[-1], dtype=covariances.dtype, device=covariances.device)
    eye = eye.expand_as(covariances)  # (K, D, D)
    return torch.linalg.solve_triangular(chol, eye, upper=False).mT  # (K, D, D) upper


def _log_det_precision_cholesky(
    precisions_cholesky: torch.Tensor, covariance_type: str
) -> torch.Tensor:
    """``sum_d log (P_k)_dd`` ``(K,)``, i.e. ``-1/2 log det Sigma_k``."""
    if covariance_type == "diag":
        return torch.log(precisions_cholesky).sum(dim=-1)  # (K,)
    return torch.log(torch.diagonal(precisions_cholesky, dim1=-2, dim2=-1)).sum(dim=-1)  # (K,)


def _component_terms(
    means: torch.Tensor, precisions_cholesky: torch.Tensor, covariance_type: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-component constants of the log-density, computed once per E-step.

    Returns ``(P, shift, log_det)`` such that ``y = x P - shift`` holds the whitened residuals
    of all components side by side: for ``"full"`` ``P = [P_1 ... P_K]`` ``(D, K*D)`` and
    ``shift = [m_1 P_1 ... m_K P_K]`` ``(K*D,)``; for ``"diag"`` ``P`` ``(K, D)`` is the
    precision square root and ``shift = m * P`` ``(K, D)``. ``log_det`` is ``(K,)``.
    """
    log_det = _log_det_precision_cholesky(precisions_cholesky, covariance_type)  # (K,)
    if covariance_type == "diag":
        return precisions_cholesky, means * precisions_cholesky, log_det  # (K, D) x2
    K, D = means.shape
    P_cat = precisions_cholesky.permute(1, 0, 2).reshape(D, K * D)  # (D, K*D)
    shift = torch.einsum("kd,kde->ke", means, precisions_cholesky).reshape(K * D)  # (K*D,)
    return P_cat, shift, log_det


def _estimate_log_gaussian_prob(
    X: torch.Tensor,
    terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    covariance_type: str,
) -> torch.Tensor:
    """``log N(x_n; m_k, Sigma_k)`` for one chunk of cells, ``(n, K)``."""
    P, shift, log_det = terms
    n, D = X.shape
    K = log_det.shape[0]
    if covariance_type == "diag":
        y = X.unsqueeze(1) * P - shift  # (n, K, D)
    else:
        # one GEMM for all components, the mean folded in: X (n, D) @ (D, K*D) - shift
        y = torch.addmm(shift, X, P, alpha=1.0, beta=-1.0).view(n, K, D)  # (n, K, D)
    mahalanobis = torch.linalg.vector_norm(y, dim=-1).square()  # (n, K)
    return -0.5 * (D * _LOG_2PI + mahalanobis) + log_det  # (n, K)


def _weighted_log_prob_chunks(
    X: torch.Tensor, params: GMMEstimate, *, chunk_size: int
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(start, stop, log w_k + log N(x_n; m_k, Sigma_k))`` ``(n, K)`` per chunk."""
    terms = _component_terms(params.means, params.precisions_cholesky, params.covariance_type)
    log_weights = torch.log(params.weights)  # (K,)
    for start, stop in row_slices(X.shape[0], chunk_size):
        log_prob = _estimate_log_gaussian_prob(X[start:stop], terms, params.covariance_type)
        yield start, stop, log_prob + log_weights  # (n, K)


def _e_step(X: torch.Tensor, params: GMMEstimate, *, chunk_size: int) -> tuple[float, torch.Tensor]:
    """Mean log-likelihood ``()`` and responsibilities ``(N, K)`` of ``params`` on ``X``."""
    N = X.shape[0]
    resp = torch.empty(N, params.n_components, dtype=X.dtype, device=X.device)  # (N, K)
    total = torch.zeros((), dtype=torch.float64, device=X.device)
    for start, stop, weighted in _weighted_log_prob_chunks(X, params, chunk_size=chunk_size):
        log_norm = torch.logsumexp(weighted, dim=1)  # (n,)
        torch.exp(weighted - log_norm.unsqueeze(1), out=resp[start:stop])
        total += log_norm.sum(dtype=torch.float64)
    return float(total) / N, resp


def _m_step(
    X: torch.Tensor,
    resp: torch.Tensor,
    *,
    covariance_type: str,
    reg_covar: float,
    chunk_size: int,
) -> GMMEstimate:
    """Weights, means and (regularised) covariances maximising the expected log-likelihood."""
    N, D = X.shape
    nk = resp.sum(dim=0) + 10 * torch.finfo(resp.dtype).eps  # (K,)
    means = (resp.mT @ X) / nk.unsqueeze(1)  # (K, D)
    K = means.shape[0]
    if covariance_type == "full":
        covariances = torch.zeros(K, D, D, dtype=X.dtype, device=X.device)  # (K, D, D)
    else:
        covariances = torch.zeros(K, D, dtype=X.dtype, device=X.device)  # (K, D)
    for start, stop in row_slices(N, chunk_size):
        diff = X[start:stop].unsqueeze(0) - means.unsqueeze(1)  # (K, n, D)
        weighted = diff * resp[start:stop].mT.unsqueeze(2)  # (K, n, D)
        if covariance_type == "full":
            covariances += weighted.mT @ diff  # (K, D, D)
        else:
            covariances += (weighted * diff).sum(dim=1)  # (K, D)
    if covariance_type == "full":
        covariances = covariances / nk.view(K, 1, 1)
        covariances.diagonal(dim1=-2, dim2=-1).add_(reg_covar)
    else:
        covariances = covariances / nk.unsqueeze(1) + reg_covar
    return GMMEstimate(
        weights=nk / N,
        means=means,
        covariances=covariances,
        precisions_cholesky=_precision_cholesky_from_covariances(covariances, covariance_type),
        covariance_type=covariance_type,
    )


def _initial_params(
    X: torch.Tensor,
    n_components: int,
    *,
    covariance_type: str,
    reg_covar: float,
    init: str,
    generator: torch.Generator,
    chunk_size: int,
) -> GMMEstimate:
    """Hard-assignment initialisation: k-means (or k-means++ seeds), then one M-step."""
    if init == "kmeans":
        labels = lloyd(X, n_components, generator=generator, max_iter=100, chunk_size=chunk_size)
    else:
        centers = kmeans_plusplus(X, n_components, generator=generator)  # (K, D)
        labels = assign(X, centers, chunk_size=chunk_size)  # (N,)
    resp = torch.zeros(X.shape[0], n_components, dtype=X.dtype, device=X.device)  # (N, K)
    resp[torch.arange(X.shape[0], device=X.device), labels] = 1.0
    return _m_step(
        X, resp, covariance_type=covariance_type, reg_covar=reg_covar, chunk_size=chunk_size
    )


def _params_from_dict(
    X: torch.Tensor,
    init_params: Mapping[str, ArrayLike],
    *,
    n_components: int | None,
    covariance_type: str,
    reg_covar: float,
    chunk_size: int,
) -> GMMEstimate:
    """Initial parameters from user-given ``means`` (+ optional weights / precisions)."""
    allowed = {"weights", "means", "covariances", "precisions", "precisions_cholesky"}
    unknown = set(init_params) - allowed
    if unknown or "means" not in init_params:
        raise ValueError(
            f"init_params needs 'means' and may contain {sorted(allowed)}; "
            f"got keys {sorted(init_params)}."
        )
    if sum(k in init_params for k in ("covariances", "precisions", "precisions_cholesky")) > 1:
        raise ValueError("Give at most one of covariances, precisions, precisions_cholesky.")

    def tensor(name: str) -> torch.Tensor:
        value = init_params[name]
        if not isinstance(value, torch.Tensor):
            value = torch.from_numpy(np.array(value))
        return value.to(dtype=X.dtype, device=X.device)

    means = tensor("means")  # (K, D)
    K, D = means.shape
    if D != X.shape[1]:
        raise ValueError(f"init_params['means'] has {D} dims but X has {X.shape[1]}.")
    if n_components is not None and K != n_components:
        raise ValueError(f"init_params['means'] has {K} rows but n_components={n_components}.")
    full_shape = (K, D, D) if covariance_type == "full" else (K, D)
    given = [k for k in ("covariances", "precisions", "precisions_cholesky") if k in init_params]
    if given:
        name = given[0]
        value = tensor(name)
        if tuple(value.shape) != full_shape:
            raise ValueError(f"init_params[{name!r}] must have shape {full_shape}.")
        if name == "covariances":
            covariances = value
            prec_chol = _precision_cholesky_from_covariances(covariances, covariance_type)
        else:
            if name == "precisions" and covariance_type == "diag":
                prec_chol = value.sqrt()  # (K, D)
            elif name == "precisions":
                prec_chol = torch.linalg.cholesky(value)  # (K, D, D) lower, precision = P P^T
            else:
                prec_chol = value
            if covariance_type == "diag":
                covariances = prec_chol.square().reciprocal()  # (K, D)
            else:
                precision = prec_chol @ prec_chol.mT  # (K, D, D)
                covariances = torch.linalg.inv(precision)  # (K, D, D)
                covariances = 0.5 * (covariances + covariances.mT)
    else:
        # covariances from hard assignment of the cells to the nearest given mean
        labels = assign(X, means, chunk_size=chunk_size)
        resp = torch.zeros(X.shape[0], K, dtype=X.dtype, device=X.device)  # (N, K)
        resp[torch.arange(X.shape[0], device=X.device), labels] = 1.0
        hard = _m_step(
            X, resp, covariance_type=covariance_type, reg_covar=reg_covar, chunk_size=chunk_size
        )
        covariances, prec_chol = hard.covariances, hard.precisions_cholesky
    if "weights" in init_params:
        weights = tensor("weights")  # (K,)
        if weights.shape != (K,) or bool((weights <= 0).any()):
            raise ValueError(f"init_params['weights'] must be {K} positive numbers.")
        weights = weights / weights.sum()
    else:
        weights = torch.full((K,), 1.0 / K, dtype=X.dtype, device=X.device)  # (K,)
    return GMMEstimate(
        weights=weights,
        means=means,
        covariances=covariances,
        precisions_cholesky=prec_chol,
        covariance_type=covariance_type,
    )


def _run_em(
    X: torch.Tensor,
    params: GMMEstimate,
    *,
    max_iter: int,
    tol: float,
    reg_covar: float,
    chunk_size: int,
) -> GMMEstimate:
    """EM iterations from ``params``; returns new params with history filled in.

    The stopping rule is sklearn's: iteration ``t`` evaluates ``log L(theta_{t-1})`` in its
    E-step, then always does its M-step, and stops if that value changed by less than
    ``tol`` from the previous one. From the same initialisation both therefore return the same
    ``theta_t``. A last E-step gives ``log L`` of the returned parameters.
    """
    history: list[float] = []
    converged = False
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        mean_ll, resp = _e_step(X, params, chunk_size=chunk_size)  # log L(theta_{t-1})
        history.append(mean_ll)
        params = _m_step(
            X,
            resp,
            covariance_type=params.covariance_type,
            reg_covar=reg_covar,
            chunk_size=chunk_size,
        )
        if len(history) > 1 and abs(history[-1] - history[-2]) < tol:
            converged = True
            break
    history.append(_e_step(X, params, chunk_size=chunk_size)[0])  # log L(returned params)
    params.log_likelihood_history = history
    params.converged = converged
    params.n_iter = n_iter
    params.lower_bound = history[-1]
    return params


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def fit_gmm(
    X: ArrayLike,
    n_components: int | None,
    *,
    covariance_type: CovarianceType = "full",
    n_init: int = 1,
    max_iter: int = 200,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    seed: int = 0,
    init: InitMethod = "kmeans",
    init_params: Mapping[str, ArrayLike] | None = None,
    candidates: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float64,
    chunk_size: int | None = None,
) -> GMMEstimate:
    """Fit a Gaussian mixture by EM.

    Parameters
    ----------
    X
        ``(N, D)`` dense data (cells x embedding dims), tensor or array; the fit runs on the
        tensor's device.
    n_components
        Number of components ``K``. ``None`` chooses ``K`` by BIC over ``candidates`` (see
        :func:`select_n_components`); the BIC curve is kept in ``model_selection``.
    covariance_type
        ``"full"`` (one ``D x D`` covariance per component) or ``"diag"``.
    n_init
        Number of initialisations (restarts); the fit with the highest final mean
        log-likelihood is kept. Ignored when ``init_params`` is given.
    max_iter
        Maximum number of EM iterations per initialisation.
    tol
        EM stops when the mean per-cell log-likelihood changes by less than ``tol`` between
        two iterations (after one last M-step; the same rule as sklearn).
    reg_covar
        Non-negative constant added to the diagonal of every covariance.
    seed
        Seed of the ``torch.Generator`` driving the k-means++ seeding of all restarts.
    init
        ``"kmeans"`` (default): k-means++ seeding refined by Lloyd's k-means (as sklearn);
        ``"k-means++"``: the seeds only. Cells are then hard-assigned and one M-step gives
        the initial parameters.
    init_params
        Explicit initial parameters instead: ``"means"`` ``(K, D)`` (required), optionally
        ``"weights"`` ``(K,)`` (default uniform) and one of ``"covariances"``,
        ``"precisions"`` or ``"precisions_cholesky"`` (shapes as in :class:`GMMEstimate`;
        default: from the hard assignment of cells to the nearest mean).
    candidates
        Values of ``K`` tried when ``n_components`` is None (default
        :func:`default_candidates`).
    dtype
        Floating dtype of the computation (default float64).
    chunk_size
        Cells per E-/M-step chunk; default keeps each ``chunk x K x D`` block near 4 MiB.

    Returns
    -------
    GMMEstimate
        Parameters on the device of ``X``, with the log-likelihood history.

    Raises
    ------
    ValueError
        On non-finite data, ``K`` outside ``[1, N]``, bad options, or a covariance that is
        not positive definite during EM (increase ``reg_covar``).
    """
    _check_covariance_type(covariance_type)
    if n_components is None and init_params is not None and "means" in init_params:
        n_components = len(init_params["means"])
    if n_components is None:
        best, _ = select_n_components(
            X,
            candidates,
            covariance_type=covariance_type,
            n_init=n_init,
            max_iter=max_iter,
            tol=tol,
            reg_covar=reg_covar,
            seed=seed,
            init=init,
            dtype=dtype,
            chunk_size=chunk_size,
        )
        return best
    X = _as_data(X, dtype)
    N, D = X.shape
    if isinstance(n_components, bool) or not isinstance(n_components, int | np.integer):
        raise TypeError(f"n_components must be an int or None, got {n_components!r}.")
    if not 1 <= n_components <= N:
        raise ValueError(
            f"n_components must be between 1 and the number of cells ({N}), got {n_components}."
        )
    if n_init < 1 or max_iter < 0 or tol < 0 or reg_covar < 0:
        raise ValueError(
            f"Need n_init >= 1, max_iter >= 0, tol >= 0, reg_covar >= 0; got n_init={n_init}, "
            f"max_iter={max_iter}, tol={tol}, reg_covar={reg_covar}."
        )
    if init not in ("kmeans", "k-means++"):
        raise ValueError(f"init must be 'kmeans' or 'k-means++', got {init!r}.")
    K = int(n_components)
    chunk = chunk_size if chunk_size is not None else _chunk_size(K, D)
    generator = torch.Generator().manual_seed(seed)

    best: GMMEstimate | None = None
    for _ in range(1 if init_params is not None else n_init):
        if init_params is not None:
            start = _params_from_dict(
                X,
                init_params,
                n_components=K,
                covariance_type=covariance_type,
                reg_covar=reg_covar,
                chunk_size=chunk,
            )
        else:
            start = _initial_params(
                X,
                K,
                covariance_type=covariance_type,
                reg_covar=reg_covar,
                init=init,
                generator=generator,
                chunk_size=chunk,
            )
        fitted = _run_em(
            X, start, max_iter=max_iter, tol=tol, reg_covar=reg_covar, chunk_size=chunk
        )
        if best is None or fitted.lower_bound > best.lower_bound:
            best = fitted
    assert best is not None
    if not best.converged and max_iter > 0:
        change = best.log_likelihood_history[-1] - best.log_likelihood_history[-2]
        warnings.warn(
            f"EM did not converge in max_iter={max_iter} iterations (last change of the mean "
            f"log-likelihood {change:.3g} >= tol={tol}); increase max_iter or tol.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return best


def score_samples(
    params: GMMEstimate, X: ArrayLike, *, chunk_size: int | None = None
) -> torch.Tensor:
    """Per-cell log-likelihood ``log p(x_n)`` ``(N,)`` under the mixture."""
    X = _as_data(X, params.means.dtype).to(params.means.device)
    chunk = chunk_size or _chunk_size(params.n_components, params.n_features)
    out = torch.empty(X.shape[0], dtype=X.dtype, device=X.device)  # (N,)
    for start, stop, weighted in _weighted_log_prob_chunks(X, params, chunk_size=chunk):
        out[start:stop] = torch.logsumexp(weighted, dim=1)
    return out


def predict_proba(
    params: GMMEstimate, X: ArrayLike, *, chunk_size: int | None = None
) -> torch.Tensor:
    """Responsibilities ``p(k | x_n)`` ``(N, K)``; rows sum to one."""
    X = _as_data(X, params.means.dtype).to(params.means.device)
    chunk = chunk_size or _chunk_size(params.n_components, params.n_features)
    return _e_step(X, params, chunk_size=chunk)[1]


def predict(params: GMMEstimate, X: ArrayLike, *, chunk_size: int | None = None) -> torch.Tensor:
    """Most probable component of each cell ``(N,)``."""
    return predict_proba(params, X, chunk_size=chunk_size).argmax(dim=1)


def n_parameters(params: GMMEstimate) -> int:
    """Number of free parameters: ``K - 1`` weights, ``K D`` means and the covariances."""
    K, D = params.n_components, params.n_features
    per_covariance = D * (D + 1) // 2 if params.covariance_type == "full" else D
    return (K - 1) + K * D + K * per_covariance


def bic(params: GMMEstimate, X: ArrayLike) -> float:
    """Bayesian information criterion ``-2 log L + p log N`` (lower is better)."""
    log_lik = score_samples(params, X)  # (N,)
    return float(-2.0 * log_lik.sum() + n_parameters(params) * math.log(log_lik.shape[0]))


def aic(params: GMMEstimate, X: ArrayLike) -> float:
    """Akaike information criterion ``-2 log L + 2 p`` (lower is better)."""
    log_lik = score_samples(params, X)  # (N,)
    return float(-2.0 * log_lik.sum() + 2.0 * n_parameters(params))


def default_candidates(n_samples: int) -> list[int]:
    """Default values of ``K`` for BIC selection: ``2 .. min(20, N - 1)`` (``[N]`` if N < 3)."""
    if n_samples < 3:
        return [max(1, n_samples)]
    return list(range(2, min(20, n_samples - 1) + 1))


def select_n_components(
    X: ArrayLike,
    candidates: Sequence[int] | None = None,
    *,
    covariance_type: CovarianceType = "full",
    n_init: int = 1,
    max_iter: int = 200,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    seed: int = 0,
    init: InitMethod = "kmeans",
    dtype: torch.dtype = torch.float64,
    chunk_size: int | None = None,
) -> tuple[GMMEstimate, dict[str, list]]:
    """Fit one mixture per candidate ``K`` and keep the one with the lowest BIC.

    Parameters
    ----------
    X
        ``(N, D)`` dense data.
    candidates
        Values of ``K`` to try (default :func:`default_candidates`, ``2 .. min(20, N - 1)``).
    covariance_type, n_init, max_iter, tol, reg_covar, seed, init, dtype, chunk_size
        As in :func:`fit_gmm`; every candidate uses the same ``seed``.

    Returns
    -------
    best
        Parameters of the BIC-optimal fit, with ``model_selection`` set to the curve.
    curve
        ``{"n_components": [...], "bic": [...]}`` for every candidate, in the given order.
    """
    X = _as_data(X, dtype)
    N = X.shape[0]
    ks = default_candidates(N) if candidates is None else [int(k) for k in candidates]
    if not ks:
        raise ValueError("candidates is empty; give at least one number of components.")
    if any(k < 1 or k > N for k in ks):
        raise ValueError(
            f"Every candidate must be between 1 and the number of cells ({N}); got {ks}."
        )
    best: GMMEstimate | None = None
    best_bic = math.inf
    bics: list[float] = []
    for k in ks:
        fitted = fit_gmm(
            X,
            k,
            covariance_type=covariance_type,
            n_init=n_init,
            max_iter=max_iter,
            tol=tol,
            reg_covar=reg_covar,
            seed=seed,
            init=init,
            dtype=dtype,
            chunk_size=chunk_size,
        )
        value = -2.0 * N * fitted.lower_bound + n_parameters(fitted) * math.log(N)
        bics.append(value)
        if value < best_bic:
            best, best_bic = fitted, value
    assert best is not None
    curve = {"n_components": ks, "bic": bics}
    best.model_selection = {key: list(values) for key, values in curve.items()}
    return best, curve
