"""Held-out log-likelihood of any scvae model: IWAE for the VAEs, exact for PPCA and the GMM."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from anndata import AnnData

__all__ = ["heldout_log_likelihood"]


def heldout_log_likelihood(
    model: Any, adata: AnnData, *, n_samples: int = 100, seed: int = 0
) -> float:
    """Mean per-cell ``log p(x)`` of held-out cells under a fitted model (nats, higher is better).

    * VAEs (:class:`scvae.ZINBVAE`, ``NBVAE``, ``PoissonVAE``, ``GaussianVAE``): the
      importance-weighted (IWAE) estimate with ``n_samples`` posterior draws, a lower bound on
      ``log p(x)`` that tightens as ``n_samples`` grows
      (:meth:`~scvae.ZINBVAE.marginal_log_likelihood`);
    * :class:`scvae.PPCA` and :class:`scvae.GMM`: exact (``n_samples`` and ``seed`` unused).

    Count VAEs score counts, ``GaussianVAE`` and PPCA log-normalized values and a GMM its
    embedding: only compare models that score the same space.

    Parameters
    ----------
    model
        A fitted model with ``marginal_log_likelihood(adata, ...)``.
    adata
        Held-out cells, with what the model reads (the same genes and known batches; for a GMM,
        its ``use_rep`` embedding).
    n_samples
        Importance samples ``K`` of the IWAE estimate (VAEs only).
    seed
        Seeds the importance samples (VAEs only).

    Returns
    -------
    float
        Mean over the held-out cells of the per-cell log-likelihood; per-cell values come
        from ``model.marginal_log_likelihood(adata)``.

    Examples
    --------
    >>> model = scvae.ZINBVAE(train, batch_key="batch").fit()
    >>> scvae.metrics.heldout_log_likelihood(model, heldout, n_samples=100)
    """
    from scvae.models import VAEModel

    if not isinstance(adata, AnnData):
        raise TypeError(f"adata must be an AnnData of held-out cells, got {type(adata).__name__}.")
    scorer = getattr(model, "marginal_log_likelihood", None)
    if scorer is None:
        raise TypeError(
            f"{type(model).__name__} has no marginal_log_likelihood; pass a fitted scvae model "
            "(ZINBVAE, NBVAE, PoissonVAE, GaussianVAE, PPCA or GMM)."
        )
    if isinstance(model, VAEModel):
        if n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples}.")
        values = scorer(adata, n_samples=n_samples, seed=seed)
    else:
        values = scorer(adata)
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        warnings.warn(
            f"{int((~finite).sum())} of {values.size} held-out cells have a non-finite "
            "log-likelihood; the mean is over all cells and is therefore not finite.",
            stacklevel=2,
        )
    return float(values.mean())
