"""Shared fixtures: small seeded simulated data and one trained model per session."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
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


def assert_adata_equal(a: AnnData, b: AnnData) -> None:
    """Deep equality of everything a model could touch: X, layers, obs, var, obsm, uns keys."""
    assert a.shape == b.shape
    for x, y in [(a.X, b.X)] + [(a.layers[k], b.layers[k]) for k in b.layers]:
        x = x.toarray() if sp.issparse(x) else np.asarray(x)
        y = y.toarray() if sp.issparse(y) else np.asarray(y)
        np.testing.assert_array_equal(x, y)
    assert list(a.layers.keys()) == list(b.layers.keys())
    assert a.obs.equals(b.obs) and list(a.obs.columns) == list(b.obs.columns)
    assert a.var.equals(b.var)
    assert list(a.obsm.keys()) == list(b.obsm.keys())
    assert list(a.uns.keys()) == list(b.uns.keys())
