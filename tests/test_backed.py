"""AnnData backed on disk: validation in blocks, the block-shuffling loader, fit and getters."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData

import scvae
from scvae.backed import (
    BackedCellData,
    BackedCounts,
    BlockMinibatches,
    minibatches,
    read_backed_counts,
)
from scvae.data import read_training_data
from scvae.minibatch import CSRMinibatches


@pytest.fixture(scope="module")
def sim_path(sim: AnnData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("backed") / "sim.h5ad"
    sim.write_h5ad(path)
    return path


@pytest.fixture
def backed(sim_path: Path) -> AnnData:
    adata = ad.read_h5ad(sim_path, backed="r")
    yield adata
    adata.file.close()


@pytest.fixture
def backed_data(backed: AnnData) -> BackedCellData:
    return read_training_data(backed, layer=None, batch_key="batch", backed=True)[1]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "scvae-block-reader"]


def _same(a, b) -> bool:
    return (
        torch.equal(a.x, b.x)
        and torch.equal(a.batch_index, b.batch_index)
        and torch.equal(a.nz.row, b.nz.row)
        and torch.equal(a.nz.col, b.nz.col)
        and torch.equal(a.nz.x, b.nz.x)
        and torch.equal(a.nz.log_x_factorial, b.nz.log_x_factorial)
    )


def test_reading_backed_equals_in_memory(sim: AnnData, backed: AnnData) -> None:
    setup, data = read_training_data(sim, layer=None, batch_key="batch")
    backed_setup, backed_data = read_training_data(
        backed, layer=None, batch_key="batch", backed=True
    )
    assert isinstance(backed_data, BackedCellData)
    assert isinstance(backed_data.X, BackedCounts)
    assert backed_setup == setup
    assert backed_data.X.shape == data.X.shape and backed_data.X.nnz == data.X.nnz
    np.testing.assert_array_equal(backed_data.library_size, data.library_size)
    np.testing.assert_array_equal(backed_data.log_x_factorial, data.log_x_factorial)
    np.testing.assert_array_equal(backed_data.batch_index, data.batch_index)
    with pytest.raises(AttributeError, match=r"stay on disk.*to_memory"):
        backed_data.X.toarray()


def test_backed_refused_unless_asked(backed: AnnData) -> None:
    with pytest.raises(ValueError, match="backed on disk"):
        read_training_data(backed, layer=None, batch_key="batch")
    with pytest.raises(ValueError, match="backed on disk"):
        scvae.PPCA(backed, n_latent=2)


def test_in_order_loader_is_the_in_memory_one(sim: AnnData, backed_data: BackedCellData) -> None:
    data = read_training_data(sim, layer=None, batch_key="batch")[1]
    cells = np.sort(np.random.default_rng(0).choice(400, 300, replace=False))  # with gaps
    memory = list(CSRMinibatches(data, cells, batch_size=32, shuffle=False))
    loader = minibatches(
        backed_data, cells, batch_size=32, shuffle=False, block_size=40, buffer_blocks=2
    )
    assert isinstance(loader, BlockMinibatches)
    disk = list(loader)
    assert len(disk) == len(memory) == len(loader)
    assert all(_same(a, b) for a, b in zip(memory, disk, strict=True))
    assert loader.n_cells_per_epoch == 300


def test_seeded_shuffle_reproducible_and_serves_every_cell_once(
    backed_data: BackedCellData,
) -> None:
    cells = np.arange(0, 400, 2)  # every other cell
    labels = np.arange(400)  # each cell's own position: which cells a minibatch holds

    def epochs(seed: int, n: int = 2) -> list[list[np.ndarray]]:
        loader = BlockMinibatches(
            backed_data, cells, batch_size=16, shuffle=True, seed=seed, labels=labels,
            block_size=25, buffer_blocks=3,
        )  # fmt: skip
        return [[b.labels.numpy() for b in loader] for _ in range(n)]

    first, again, other = epochs(1), epochs(1), epochs(2)
    for epoch in first:
        served = np.concatenate(epoch)
        assert len(served) == len(cells)
        np.testing.assert_array_equal(np.sort(served), cells)
    assert all(
        np.array_equal(a, b)
        for e, f in zip(first, again, strict=True)
        for a, b in zip(e, f, strict=True)
    )
    assert not np.array_equal(np.concatenate(first[0]), np.concatenate(first[1]))
    assert not np.array_equal(np.concatenate(first[0]), np.concatenate(other[0]))
    assert not np.array_equal(np.concatenate(first[0]), cells)  # shuffled across blocks


def test_drop_last_as_in_memory(sim: AnnData, backed_data: BackedCellData) -> None:
    cells = np.arange(130)  # 130 = 2 x 64 + 2: the 2-cell remainder is dropped
    data = read_training_data(sim, layer=None, batch_key="batch")[1]
    memory = CSRMinibatches(data, cells, batch_size=64, shuffle=True, drop_last=True)
    loader = BlockMinibatches(backed_data, cells, batch_size=64, shuffle=True, drop_last=True)
    assert (len(loader), loader.n_cells_per_epoch) == (len(memory), memory.n_cells_per_epoch)
    assert [b.n_cells for b in loader] == [64, 64]


@pytest.mark.parametrize("shuffle", [True, False])
def test_shards_disjoint_and_covering(backed_data: BackedCellData, shuffle: bool) -> None:
    cells = np.arange(5, 398)  # 393 cells over 4 ranks: shards of 99, 98, 98, 98
    labels = np.arange(400)
    world = 4
    served, lengths = [], set()
    for rank in range(world):
        loader = BlockMinibatches(
            backed_data, cells, batch_size=16, shuffle=shuffle, seed=3, labels=labels,
            block_size=20, buffer_blocks=2,
        ).shard(rank, world)  # fmt: skip
        mine = np.array_split(cells, world)[rank]  # a contiguous run of the cells
        np.testing.assert_array_equal(loader.indices, mine)
        assert loader.generator.initial_seed() == 3 + rank
        ids = np.concatenate([b.labels.numpy() for b in loader])
        lengths.add(len(loader))
        if shuffle:  # every rank the same number of cells: len(cells) // world
            assert len(ids) == loader.n_cells_per_epoch == len(cells) // world
            assert set(ids) <= set(mine)
        else:  # every cell of the shard, in the same number of minibatches on every rank
            np.testing.assert_array_equal(ids, mine)
        served.append(set(mine))
    assert len(lengths) == 1
    assert set.union(*served) == set(cells)
    assert sum(len(s) for s in served) == len(cells)


def test_buffer_bounds_memory(backed_data: BackedCellData) -> None:
    loader = BlockMinibatches(
        backed_data, np.arange(400), batch_size=16, shuffle=True, block_size=30, buffer_blocks=2
    )
    for _ in loader:
        pass
    per = loader.cells_per_buffer
    assert per == 48  # 2 blocks of 30 cells, rounded down to whole minibatches
    assert 0 < loader.peak_buffer_cells <= per
    largest = np.sort(backed_data.X.row_nnz)[::-1][:per].sum()  # the most any buffer can hold
    assert 0 < loader.peak_buffer_nnz <= largest < backed_data.X.nnz / 4


def test_reader_exception_surfaces_and_thread_stops(
    backed_data: BackedCellData, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    read = backed_data.X.read

    def failing(start: int, stop: int) -> sp.csr_matrix:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk gone")
        return read(start, stop)

    monkeypatch.setattr(backed_data.X, "read", failing)
    loader = BlockMinibatches(
        backed_data, np.arange(400), batch_size=10, shuffle=False, block_size=20, buffer_blocks=1
    )
    with pytest.raises(OSError, match="disk gone"):
        for _ in loader:
            pass
    assert not _readers()


def test_abandoned_iteration_stops_the_reader(backed_data: BackedCellData) -> None:
    loader = BlockMinibatches(
        backed_data, np.arange(400), batch_size=10, shuffle=True, block_size=20, buffer_blocks=1
    )
    iterator = iter(loader)
    next(iterator)
    assert _readers()
    iterator.close()
    assert not _readers()


def test_fit_on_backed(backed: AnnData, sim_path: Path) -> None:
    before = _digest(sim_path)
    model = scvae.ZINBVAE(backed, batch_key="batch", n_latent=4, n_hidden=32)
    model.fit(max_epochs=3, batch_size=64, progress_bar=False, early_stopping=False)
    assert np.isfinite(model.history["train_elbo"]).all()
    assert np.isfinite(model.history["validation_elbo"]).all()
    assert np.isfinite(model.get_latent()).all()
    assert backed.isbacked
    assert _digest(sim_path) == before


def test_getters_on_backed_equal_in_memory(
    trained: scvae.ZINBVAE, sim: AnnData, backed: AnnData
) -> None:
    np.testing.assert_allclose(trained.get_latent(backed), trained.get_latent(sim), atol=1e-6)
    np.testing.assert_allclose(
        trained.elbo(backed, n_samples=2), trained.elbo(sim, n_samples=2), rtol=1e-6
    )
    np.testing.assert_allclose(
        trained.get_normalized_expression(backed, batch_size=100).to_numpy(),
        trained.get_normalized_expression(sim, batch_size=100).to_numpy(),
        rtol=1e-5,
    )


def test_write_latent_on_backed_writes_obsm_only(
    trained: scvae.ZINBVAE, sim: AnnData, backed: AnnData, sim_path: Path
) -> None:
    before = _digest(sim_path)
    trained.write_latent(backed)
    np.testing.assert_allclose(backed.obsm["X_zinbvae"], trained.get_latent(sim), atol=1e-6)
    assert "params" in backed.uns["zinbvae"]
    assert backed.isbacked and isinstance(backed.X, ad.abc.CSRDataset)
    assert _digest(sim_path) == before


@pytest.mark.parametrize(
    ("value", "message"),
    [(0.5, "non-integer"), (-2.0, "negative"), (np.nan, "NaN or infinite")],
)
def test_bad_counts_in_a_late_block_same_error(
    sim: AnnData, tmp_path: Path, value: float, message: str
) -> None:
    adata = sim.copy()
    X = adata.X.tolil()
    X[395, 3] = value
    X[396, 7] = value
    adata.X = sp.csr_matrix(X)
    path = tmp_path / "bad.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(ValueError, match=message) as in_memory:
        read_training_data(adata, layer=None, batch_key="batch")
    backed = ad.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match=message) as on_disk:
        read_backed_counts(backed, None, counts=True, nonnegative=True, rows_per_read=50)
    assert str(on_disk.value) == str(in_memory.value)
    with pytest.raises(ValueError, match=message) as fitted:
        scvae.ZINBVAE(backed, batch_key="batch")
    assert str(fitted.value) == str(in_memory.value)
    backed.file.close()


def test_empty_cell_same_error(sim: AnnData, tmp_path: Path) -> None:
    adata = sim.copy()
    X = adata.X.tolil()
    X[390, :] = 0
    adata.X = sp.csr_matrix(X)
    path = tmp_path / "empty.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(ValueError, match="zero total counts") as in_memory:
        read_training_data(adata, layer=None, batch_key="batch")
    backed = ad.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match="zero total counts") as on_disk:
        read_training_data(backed, layer=None, batch_key="batch", backed=True)
    assert str(on_disk.value) == str(in_memory.value)
    backed.file.close()


def test_dense_backed_counts(sim: AnnData, tmp_path: Path) -> None:
    dense = AnnData(X=sim.X.toarray(), obs=sim.obs[["batch"]], var=sim.var)
    path = tmp_path / "dense.h5ad"
    dense.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    data = read_training_data(backed, layer=None, batch_key="batch", backed=True)[1]
    memory = read_training_data(sim, layer=None, batch_key="batch")[1]
    a = list(CSRMinibatches(memory, np.arange(400), batch_size=50, shuffle=False))
    b = list(minibatches(data, np.arange(400), batch_size=50, shuffle=False, block_size=64))
    assert all(_same(x, y) for x, y in zip(a, b, strict=True))
    backed.file.close()


def test_unsupported_on_backed_refused(trained: scvae.ZINBVAE, backed: AnnData) -> None:
    with pytest.raises(ValueError, match="backed on disk"):
        trained.differential_expression(backed, groupby="cluster")
    with pytest.raises(ValueError, match="backed on disk"):
        scvae.GaussianVAE(backed)
    with pytest.raises(ValueError, match="backed"):
        backed_view = backed[:10]
        scvae.ZINBVAE(backed_view)


def test_getters_survive_anndata_closing_the_file(tmp_path: Path) -> None:
    # anndata closes the file of the whole AnnData when a view of it is loaded
    path = tmp_path / "cells.h5ad"
    scvae.datasets.simulate(n_cells=120, n_genes=30, n_batches=2, seed=0).write_h5ad(path)
    adata = ad.read_h5ad(path, backed="r")
    model = scvae.NBVAE(adata, n_latent=2, n_hidden=8)
    model.fit(max_epochs=2, progress_bar=False)
    before = model.get_latent()
    adata[np.arange(10)].to_memory()
    assert not adata.file.is_open
    np.testing.assert_array_equal(model.get_latent(), before)


def test_mixture_and_semi_supervised_vaes_train_on_a_backed_anndata(
    sim_path: Path, backed: AnnData
) -> None:
    """GMVAE and SSVAE read a backed file as the count VAEs do: they fit, predict and write
    their slots in memory, and the file is not written."""
    before = _digest(sim_path)
    gmvae = scvae.GMVAE(backed, n_components=3, batch_key="batch", n_latent=2, n_hidden=8)
    gmvae.fit(max_epochs=2, n_epochs_pretrain=1, batch_size=64, progress_bar=False, seed=0)
    clusters = gmvae.predict()
    assert clusters.shape == (backed.n_obs,) and set(np.unique(clusters)) <= {0, 1, 2}
    labels = backed.obs["cluster"].astype(str).to_numpy().copy()
    labels[::2] = "Unknown"  # half the cells unlabelled
    backed.obs["label"] = pd.Categorical(labels)
    ssvae = scvae.SSVAE(backed, labels_key="label", batch_key="batch", n_latent=2, n_hidden=8)
    ssvae.fit(max_epochs=2, batch_size=64, progress_bar=False, seed=0)
    predicted = ssvae.predict()
    assert predicted.shape == (backed.n_obs,)
    assert set(predicted) <= set(backed.obs["cluster"].astype(str))
    ssvae.write_latent(backed)
    assert backed.obsm["X_ssvae"].shape == (backed.n_obs, 2)
    assert _digest(sim_path) == before
