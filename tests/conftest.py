"""Shared fixtures: small seeded simulated data and one trained model per session."""

from __future__ import annotations

import pytest
import torch
from anndata import AnnData

import scvae

torch.set_num_threads(1)  # tiny matrices: one thread is fastest and immune to contention


@pytest.fixture(scope="session")
def sim() -> AnnData:
    """400 cells x 120 genes, 3 clusters, 2 batches, ZINB counts."""
    return scvae.datasets.simulate(
        n_cells=400, n_genes=120, n_clusters=3, n_batches=2, n_latent=2, seed=1
    )


@pytest.fixture(scope="session")
def trained(sim: AnnData) -> scvae.ZINBVAE:
    """A ZINBVAE fitted briefly on ``sim`` with a batch covariate."""
    model = scvae.ZINBVAE(sim, batch_key="batch", n_latent=4, n_hidden=64)
    model.fit(max_epochs=40, batch_size=64, seed=0, progress_bar=False, early_stopping=False)
    return model
