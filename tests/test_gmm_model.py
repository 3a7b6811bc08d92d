"""The GMM model class: API parity with the other models (scoring, persistence)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

import scvae


@pytest.fixture(scope="module")
def embedded():
    adata = scvae.datasets.simulate(n_cells=300, n_genes=50, n_clusters=3, seed=4)
    adata.obsm["X_true"] = adata.obsm["X_true_latent"].astype(np.float64)
    return adata


def test_gmm_class_scores_predicts_and_roundtrips(embedded, tmp_path) -> None:
    model = scvae.GMM(embedded, use_rep="X_true", n_components=3).fit(seed=0)
    proba = model.get_latent()
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert adjusted_rand_score(embedded.obs["cluster"], model.predict()) > 0.95
    ll = model.marginal_log_likelihood(embedded[:50])
    assert ll.shape == (50,) and np.all(np.isfinite(ll))
    sizes = np.bincount(model.predict(), minlength=3)
    assert list(sizes) == sorted(sizes, reverse=True)  # labels ordered by size
    model.save(tmp_path / "g")
    loaded = scvae.GMM.load(tmp_path / "g", adata=embedded)
    np.testing.assert_allclose(loaded.get_latent(), proba)
    np.testing.assert_allclose(loaded.marginal_log_likelihood(), model.marginal_log_likelihood())


def test_gmm_bic_curve_and_dimension_check(embedded) -> None:
    model = scvae.GMM(embedded, use_rep="X_true", n_components=[2, 3, 4, 5]).fit()
    curve = model.bic_curve
    assert list(curve["n_components"]) == [2, 3, 4, 5]
    assert model.estimate.n_components == int(curve.loc[curve["bic"].idxmin(), "n_components"])
    other = embedded.copy()
    other.obsm["X_true"] = np.zeros((other.n_obs, 5))
    with pytest.raises(ValueError, match="has 5 dimensions; the mixture was fitted on 2"):
        model.get_latent(other)
