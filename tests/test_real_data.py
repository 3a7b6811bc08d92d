"""Real data: the bundled PBMC 3k counts (slow: real training on 2 CPU cores)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

import scvae
from scvae.cli import main


def test_pbmc3k_loads_without_network() -> None:
    adata = scvae.datasets.pbmc3k()
    assert adata.shape == (2638, 16579)
    assert adata.obs["cell_type"].nunique() == 9
    assert float(adata.X.data.min()) >= 1 and np.all(adata.X.data == np.round(adata.X.data))


def test_pbmc_3chemistries_loads_without_network() -> None:
    adata = scvae.datasets.pbmc_3chemistries()
    assert adata.shape == (1200, 1767)
    assert adata.obs["batch"].value_counts().to_dict() == {"3pv2": 480, "5p": 430, "3pv1": 290}
    assert adata.obs["cell_type"].nunique() == 9
    assert float(adata.X.data.min()) >= 1 and np.all(adata.X.data == np.round(adata.X.data))


@pytest.mark.slow
def test_latent_separates_pbmc_cell_types() -> None:
    adata = scvae.datasets.pbmc3k()
    top = np.argsort(-np.asarray(adata.X.power(2).mean(0) - np.square(adata.X.mean(0))).ravel())
    adata = adata[:, np.sort(top[:1000])].copy()
    model = scvae.ZINBVAE(adata, batch_key="batch")
    model.fit(max_epochs=40, progress_bar=False, early_stopping=False, seed=0)
    latent = model.get_latent()
    labels = adata.obs["cell_type"].to_numpy()
    accuracy = cross_val_score(KNeighborsClassifier(15), latent, labels, cv=5).mean()
    assert accuracy > 0.85, accuracy
    heldout = adata[model.validation_indices]
    elbo = model.elbo(heldout).mean()
    iwae = model.marginal_log_likelihood(heldout, n_samples=50).mean()
    assert np.isfinite(iwae) and elbo <= iwae


@pytest.mark.slow
def test_demo_end_to_end(tmp_path) -> None:
    out = tmp_path / "demo.h5ad"
    code = main(["demo", "-o", str(out), "--max-epochs", "3", "--n-top-genes", "500", "--quiet"])
    assert code == 0
    result = ad.read_h5ad(out)
    assert result.obsm["X_zinbvae"].shape == (2638, 10) and "X_umap" in result.obsm
    assert (tmp_path / "demo.png").stat().st_size > 10_000
