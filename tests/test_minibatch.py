"""The named minibatch and the CSR loader: same counts, every cell, one shape everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anndata import AnnData

import scvae
from scvae.data import read_training_data
from scvae.distributions import NonZeros
from scvae.minibatch import CSRMinibatches, Minibatch


@pytest.fixture
def small() -> AnnData:
    return scvae.datasets.simulate(n_cells=60, n_genes=30, n_batches=2, seed=3)


def test_minibatches_match_the_matrix_and_cover_every_cell(small: AnnData) -> None:
    _, data = read_training_data(small, layer=None, batch_key="batch")
    loader = CSRMinibatches(data, np.arange(small.n_obs), batch_size=16, shuffle=False)
    batches = list(loader)
    assert all(isinstance(b, Minibatch) for b in batches)
    np.testing.assert_array_equal(torch.cat([b.x for b in batches]).numpy(), small.X.toarray())
    np.testing.assert_array_equal(
        torch.cat([b.batch_index for b in batches]).numpy(), data.batch_index
    )
    shuffled = CSRMinibatches(data, np.arange(small.n_obs), batch_size=16, shuffle=True, seed=1)
    totals = torch.cat([b.x.sum(1) for b in shuffled]).sort().values.numpy()
    np.testing.assert_allclose(totals, np.sort(np.asarray(small.X.sum(1)).ravel()))
    for b in shuffled:
        torch.testing.assert_close(b.nz.log_x_factorial, torch.lgamma(b.x + 1).sum(1))
        assert b.labels is None and b.covariates is None
        assert b.n_cells == b.x.shape[0]


def test_to_moves_every_tensor_and_keeps_the_fields(small: AnnData) -> None:
    x = torch.as_tensor(small.X[:5].toarray())
    batch = Minibatch.from_dense(x, torch.zeros(5, dtype=torch.int64))
    batch.labels = torch.arange(5)
    moved = batch.to("cpu")
    torch.testing.assert_close(moved.x, x)
    torch.testing.assert_close(moved.labels, batch.labels)
    torch.testing.assert_close(moved.nz.offsets, NonZeros.from_dense(x).offsets)
    assert moved.device.type == "cpu"
    dense_only = Minibatch.from_dense(x, torch.zeros(5, dtype=torch.int64), nonzeros=False)
    assert dense_only.to("cpu").nz is None


@pytest.mark.parametrize(("n_cells", "batch_size"), [(3, 2), (129, 128), (5, 4), (10, 3)])
def test_a_last_minibatch_of_one_cell_is_dropped_in_training(
    small: AnnData, n_cells: int, batch_size: int
) -> None:
    """BatchNorm cannot train on one cell: such a remainder is dropped, never served."""
    _, data = read_training_data(small, layer=None, batch_key="batch")
    cells = np.arange(n_cells) % small.n_obs
    loader = CSRMinibatches(data, cells, batch_size=batch_size, shuffle=True, drop_last=True)
    sizes = [b.n_cells for b in loader]
    assert min(sizes) >= 2
    assert len(sizes) == len(loader)
    assert sum(sizes) == loader.n_cells_per_epoch


def test_a_minibatch_of_one_cell_trains_without_batchnorm_errors() -> None:
    """3 training cells with batch_size=2 used to leave a one-cell minibatch."""
    adata = scvae.datasets.simulate(n_cells=4, n_genes=10, seed=0)
    model = scvae.ZINBVAE(adata, n_hidden=8, n_latent=2)
    model.fit(max_epochs=2, batch_size=2, train_size=0.75, progress_bar=False)
    assert np.isfinite(model.get_latent()).all()


def test_loaders_share_the_counts_and_log_factorials(small: AnnData) -> None:
    """Loaders reuse the validated CSR's memory and one per-cell ``sum lgamma(x + 1)``."""
    _, data = read_training_data(small, layer=None, batch_key="batch")
    a = CSRMinibatches(data, np.arange(10), batch_size=4, shuffle=False)
    b = CSRMinibatches(data, np.arange(10, 20), batch_size=4, shuffle=False)
    assert a.val.data_ptr() == b.val.data_ptr() == data.X.data.ctypes.data
    expected = NonZeros.from_dense(torch.from_numpy(data.X.toarray())).log_x_factorial
    torch.testing.assert_close(a.log_x_factorial, expected, rtol=1e-5, atol=1e-3)
