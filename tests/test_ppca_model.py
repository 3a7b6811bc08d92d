"""The PPCA model class through the AnnData API: sklearn agreement, persistence, tl, errors."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
from helpers import assert_adata_unchanged
from sklearn.decomposition import PCA

import scvae


def _log_normalized(adata) -> np.ndarray:
    """The log-normalized counts in float64: sklearn fitted on float32 agrees only to ~1e-5."""
    return (
        sc.pp.log1p(sc.pp.normalize_total(adata, target_sum=1e4, copy=True), copy=True)
        .X.toarray()
        .astype(np.float64)
    )


def test_matches_sklearn_pca_on_log_normalized_counts(sim) -> None:
    X = _log_normalized(sim)
    model = scvae.PPCA(sim, n_latent=5, ddof=1).fit()
    reference = PCA(n_components=5).fit(X)
    np.testing.assert_allclose(
        model.marginal_log_likelihood(), reference.score_samples(X), rtol=1e-6
    )
    # same subspace: projecting sklearn's components on ours loses nothing
    W = model.estimate.W.numpy()
    Q, _ = np.linalg.qr(W)
    residual = reference.components_.T - Q @ (Q.T @ reference.components_.T)
    assert np.abs(residual).max() < 1e-6


def test_ml_default_scores_higher_on_training_cells(sim) -> None:
    ml = scvae.PPCA(sim, n_latent=5).fit().marginal_log_likelihood().mean()
    unbiased = scvae.PPCA(sim, n_latent=5, ddof=1).fit().marginal_log_likelihood().mean()
    assert ml >= unbiased


def test_write_save_load_and_tl(sim, tmp_path) -> None:
    adata = sim.copy()
    model = scvae.tl.ppca(adata, n_latent=4, return_model=True)
    assert adata.obsm["X_ppca"].shape == (adata.n_obs, 4)
    params = adata.uns["ppca"]["params"]
    assert params["ddof"] == 0 and params["sigma2"] > 0
    assert set(adata.obsm) - set(sim.obsm) == {"X_ppca"} and set(adata.uns) - set(sim.uns) == {
        "ppca"
    }
    model.save(tmp_path / "p")
    loaded = scvae.PPCA.load(tmp_path / "p", adata=sim)
    np.testing.assert_allclose(loaded.get_latent(), model.get_latent(), rtol=1e-6)
    np.testing.assert_allclose(
        loaded.marginal_log_likelihood(sim[:30]), model.marginal_log_likelihood(sim[:30])
    )
    assert model.posterior_covariance.shape == (4, 4)


def test_bad_input_changes_nothing(sim) -> None:
    bad = sim.copy()
    bad.X = bad.X.log1p()
    reference = bad.copy()
    with pytest.raises(ValueError, match="non-integer"):
        scvae.tl.ppca(bad)
    assert_adata_unchanged(reference, bad)
    with pytest.raises(ValueError, match="smaller than the number of genes"):
        scvae.PPCA(sim, n_latent=500)
    with pytest.raises(RuntimeError, match="not fitted"):
        scvae.PPCA(sim).get_latent()
