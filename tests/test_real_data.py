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


@pytest.mark.slow
def test_tutorial_runs_top_to_bottom(tmp_path) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "tutorials" / "pbmc3k.py"
    env = {**os.environ, "SCVAE_TUTORIAL_EPOCHS": "3", "SCVAE_TUTORIAL_FIGURES": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ARI of GMM clusters" in proc.stdout
    assert (tmp_path / "pbmc3k_umap.png").stat().st_size > 10_000
