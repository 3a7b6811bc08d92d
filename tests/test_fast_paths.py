"""The speed paths compute the same function as the plain ones: sparse encoder input, minibatches
without dense counts, the automatic choice between them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anndata import AnnData

import scvae
from scvae.distributions import NonZeros
from scvae.minibatch import (
    SPARSE_INPUT_MAX_DENSITY,
    SPARSE_INPUT_MIN_GENES,
    CSRMinibatches,
    Minibatch,
    sparse_input_pays,
)
from scvae.module.vae import VAEModule
from scvae.nn import CovariateLinear, SparseInput


def _sparse_counts(n_cells: int = 24, n_genes: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(n_cells, n_genes, generator=g) * 3)
    x[torch.rand(n_cells, n_genes, generator=g) < 0.8] = 0
    x[:, 0] += 1  # no empty cell
    return x


def test_covariate_linear_sparse_input_equals_dense_product() -> None:
    torch.manual_seed(0)
    x = torch.log1p(_sparse_counts())
    batch = torch.randint(3, (x.shape[0],))
    layer = CovariateLinear(x.shape[1], 16, n_batch=3)
    nn_init = torch.nn.Linear(x.shape[1], 16)  # same initial scale as nn.Linear
    assert layer.weight.abs().max() <= nn_init.weight.abs().max() * 1.5
    nz = NonZeros.from_dense(x)
    dense = layer(x, batch)
    grad_dense = torch.autograd.grad(dense.square().sum(), layer.weight)[0]
    sparse = layer(SparseInput(nz.x, nz.col, nz.offsets), batch)
    grad_sparse = torch.autograd.grad(sparse.square().sum(), layer.weight)[0]
    torch.testing.assert_close(sparse, dense)
    torch.testing.assert_close(grad_sparse, grad_dense)


@pytest.mark.parametrize("likelihood", ["zinb", "nb", "poisson", "gaussian"])
@pytest.mark.parametrize("library", ["latent", "observed"])
def test_module_loss_same_with_sparse_encoder_input(likelihood: str, library: str) -> None:
    x = _sparse_counts()
    batch = torch.randint(2, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    module = VAEModule(
        x.shape[1], 2, torch.zeros(2), torch.ones(2), likelihood=likelihood, library=library
    ).eval()
    nz = NonZeros.from_dense(x)
    losses, grads = [], []
    for sparse, x_in in [(False, x), (True, x), (True, None)]:
        module.sparse_input = sparse
        torch.manual_seed(3)  # the same posterior draw
        loss = module.loss(Minibatch(x_in, batch, nz)).loss
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, list(module.parameters()), allow_unused=True))
    for other, other_grads in zip(losses[1:], grads[1:], strict=True):
        torch.testing.assert_close(other, losses[0])
        for a, b in zip(other_grads, grads[0], strict=True):
            if b is not None:
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_loader_without_dense_counts_serves_the_same_non_zeros(sim: AnnData) -> None:
    model = scvae.ZINBVAE(sim)
    cells = np.arange(50)
    dense = CSRMinibatches(model._data, cells, batch_size=16, shuffle=False)
    lean = CSRMinibatches(model._data, cells, batch_size=16, shuffle=False, dense=False)
    for full, part in zip(dense, lean, strict=True):
        x, b = full.x, full.batch_index
        x_lean, b_lean, nz_lean = part.x, part.batch_index, part.nz
        assert x_lean is None
        torch.testing.assert_close(b_lean, b)
        rebuilt = torch.zeros_like(x)
        rebuilt[nz_lean.row, nz_lean.col] = nz_lean.x
        torch.testing.assert_close(rebuilt, x)
        torch.testing.assert_close(nz_lean.offsets, NonZeros.from_dense(x).offsets)


def test_sparse_input_is_chosen_for_sparse_data_on_the_cpu_only(sim: AnnData) -> None:
    model = scvae.ZINBVAE(sim)
    density = model._data.X.nnz / np.prod(model._data.X.shape)
    n_genes = model._data.X.shape[1]
    expected = bool(density <= SPARSE_INPUT_MAX_DENSITY and n_genes >= SPARSE_INPUT_MIN_GENES)
    assert sparse_input_pays(model._data, torch.device("cpu")) is expected
    assert sparse_input_pays(model._data, torch.device("cuda")) is False


def test_fit_with_sparse_input_is_seeded_and_matches_dense(
    sim: AnnData, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same seed gives the same fit; forcing either path gives the same ELBO within noise."""
    import scvae.minibatch as vae_models

    results = {}
    monkeypatch.setattr(vae_models, "SPARSE_INPUT_MIN_GENES", 1)
    for threshold in (1.0, 1.0, 0.0):  # sparse, sparse again, dense
        monkeypatch.setattr(vae_models, "SPARSE_INPUT_MAX_DENSITY", threshold)
        model = scvae.ZINBVAE(sim, batch_key="batch", n_latent=4, n_hidden=32)
        model.fit(max_epochs=5, batch_size=64, seed=0, progress_bar=False, early_stopping=False)
        assert model.module.sparse_input is (threshold == 1.0)
        results.setdefault(threshold, []).append(model.history["train_elbo"].to_numpy())
    np.testing.assert_array_equal(results[1.0][0], results[1.0][1])
    np.testing.assert_allclose(results[0.0][0], results[1.0][0], rtol=1e-3)
