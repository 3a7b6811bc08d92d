"""Memory at atlas size (issue 14): canonical float32 CSR counts are shared, not copied, and
never written; other inputs are copied once; the checks and sums over the non-zeros work in
chunks and give what one pass over all of them gives."""

from __future__ import annotations

import itertools
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData
from helpers import assert_adata_unchanged, snapshot
from scipy.special import gammaln

import scvae
import scvae.data as data_module
from scvae.data import CellData, _to_csr, read_training_data


def _canonical(X) -> sp.csr_matrix:
    csr = sp.csr_matrix(X, dtype=np.float32, copy=True)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.sort_indices()
    return csr


@pytest.fixture()
def counts() -> AnnData:
    """60 cells x 15 genes of canonical float32 CSR counts, 3 batches."""
    adata = scvae.datasets.simulate(n_cells=60, n_genes=15, n_batches=3, seed=5)
    adata.X = _canonical(adata.X)
    return adata


def _fit(adata: AnnData) -> scvae.ZINBVAE:
    model = scvae.ZINBVAE(adata, batch_key="batch", n_latent=2, n_hidden=8)
    model.fit(max_epochs=1, batch_size=16, progress_bar=False, seed=0)
    model.get_latent(adata)
    return model


def _shares(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.shares_memory(a, b))


@pytest.mark.parametrize("kind", [sp.csr_matrix, sp.csr_array])
def test_canonical_float32_counts_are_shared_and_left_unchanged(kind, counts: AnnData) -> None:
    counts.X = kind(counts.X)
    X = counts.X
    before = snapshot(counts)
    model = _fit(counts)
    shared = model._data.X
    assert _shares(shared.data, X.data) and _shares(shared.indices, X.indices)
    assert _shares(shared.indptr, X.indptr)
    assert counts.X is X
    assert "_has_canonical_format" not in vars(X) or X.has_canonical_format
    assert_adata_unchanged(before, counts)


def _unsorted(X: sp.csr_matrix) -> sp.csr_matrix:
    out = X.copy()
    for i in range(out.shape[0]):
        lo, hi = out.indptr[i], out.indptr[i + 1]
        out.indices[lo:hi] = out.indices[lo:hi][::-1].copy()
        out.data[lo:hi] = out.data[lo:hi][::-1].copy()
    out.has_sorted_indices = False
    return out


def _explicit_zero(X: sp.csr_matrix) -> sp.csr_matrix:
    out = X.copy()
    out.data[0] = 0.0
    return out


def _flagged_sorted(X: sp.csr_matrix) -> sp.csr_matrix:
    """Unsorted indices whose matrix claims to be canonical (a stale flag)."""
    out = _unsorted(X)
    out.has_canonical_format = True
    return out


def _read_only(X: sp.csr_matrix) -> sp.csr_matrix:
    out = X.copy()
    for part in (out.data, out.indices, out.indptr):
        part.flags.writeable = False
    return out


NOT_CANONICAL = {
    "unsorted": _unsorted,
    "stale-canonical-flag": _flagged_sorted,
    "explicit-zero": _explicit_zero,
    "read-only": _read_only,
}


@pytest.mark.parametrize("name", sorted(NOT_CANONICAL))
def test_other_csr_counts_are_copied_and_left_unchanged(name: str, counts: AnnData) -> None:
    reference = read_training_data(counts, layer=None, batch_key="batch")[1]
    counts.X = NOT_CANONICAL[name](counts.X)
    X = counts.X
    before = snapshot(counts)
    model = _fit(counts)
    copied = model._data.X
    assert not _shares(copied.data, X.data) and not _shares(copied.indices, X.indices)
    assert copied.has_canonical_format
    if name != "explicit-zero":
        np.testing.assert_array_equal(copied.toarray(), reference.X.toarray())
    assert_adata_unchanged(before, counts)


def test_integer_values_copy_the_values_only(counts: AnnData) -> None:
    X = counts.X.astype(np.int64)
    csr = _to_csr(X)
    assert csr.dtype == np.float32 and not _shares(csr.data, X.data)
    assert _shares(csr.indices, X.indices) and _shares(csr.indptr, X.indptr)
    np.testing.assert_array_equal(csr.toarray(), counts.X.toarray())


def test_int64_indices_copy_the_indices_only(counts: AnnData) -> None:
    X = counts.X.copy()
    X.indices, X.indptr = X.indices.astype(np.int64), X.indptr.astype(np.int64)
    csr = _to_csr(X)
    assert csr.indices.dtype == np.int32 == csr.indptr.dtype
    assert _shares(csr.data, X.data)
    np.testing.assert_array_equal(csr.toarray(), counts.X.toarray())


def test_float64_values_that_underflow_float32_are_dropped(counts: AnnData) -> None:
    X = counts.X.astype(np.float64)
    X.data[0] = 1e-60  # non-zero in float64, zero in float32: dropped, as by the copy
    csr = _to_csr(X)
    assert csr.nnz == X.nnz - 1 and np.count_nonzero(csr.data == 0) == 0


@pytest.fixture()
def small_chunks(monkeypatch):
    monkeypatch.setattr(data_module, "_CHUNK", 4)


def test_log_x_factorial_in_row_blocks_equals_one_pass(small_chunks) -> None:
    rng = np.random.default_rng(0)
    dense = rng.poisson(2.0, size=(40, 12)).astype(np.float32)
    dense[3] = 0  # an empty cell
    dense[7] = rng.poisson(20.0, size=12) + 1  # a cell longer than a block
    X = _canonical(dense)
    blocks = list(data_module._row_blocks(X.indptr))
    assert len(blocks) > 5 and blocks[0][0] == 0 and blocks[-1][1] == X.shape[0]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))
    cells = CellData(X, np.zeros(40, dtype=np.int64), dense.sum(1))
    one_pass = gammaln(dense + 1).sum(1)
    np.testing.assert_allclose(cells.log_x_factorial, one_pass, rtol=1e-6)
    assert cells.log_x_factorial[3] == 0


@pytest.mark.parametrize(
    "values, counts, match",
    [
        ([1.0, np.nan, 2.0, 3.0, 4.0, np.inf, 1.0, 2.0, 3.0], True, "contains 2 NaN or infinite"),
        ([1.0, 2.0, 3.0, 4.0, 5.0, -1.0, 2.0, 3.0, -7.0], True, r"3 negative.*minimum -7"),
        ([1.0, 2.0, 3.0, 4.0, 5.0, 0.5, 2.0, 3.0, 1.25], True, r"2 non-integer.*e\.g\. 0\.5"),
        ([1.0, 2.0, 3.0, 4.0, 5.0, 0.5, 2.0, 3.0, 1.25], False, None),
    ],
)
def test_value_checks_in_chunks_count_every_chunk(small_chunks, values, counts, match) -> None:
    values = np.asarray(values, dtype=np.float32)
    if match and "negative" in match:
        values[2] = -3.0
    X = sp.csr_matrix((values, np.arange(9) % 3, np.arange(0, 10, 3)), shape=(3, 3))
    check = data_module._check_values
    if match is None:
        check(X, where="adata.X", counts=counts, nonnegative=False)
        return
    with pytest.raises(ValueError, match=match):
        check(X, where="adata.X", counts=counts, nonnegative=True)


# ------------------------------------------------------------------------- heap reuse in fits
_FAULTS = """
import resource, torch
from scvae.train._heap import reuse_freed_memory
def step():  # a training step's temporaries: ten 8 MiB tensors made and freed
    tensors = [torch.ones(128, 16384) for _ in range(10)]
    del tensors
with reuse_freed_memory() as active:
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    print(int(active), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(tuning: str) -> tuple[bool, int]:
    env = {**os.environ, "SCVAE_MALLOC_TUNING": tuning}
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return bool(int(out[0])), int(out[1])


def test_training_reuses_freed_memory_instead_of_faulting_pages_in():
    """On glibc the fit keeps freed blocks in the heap: the same steps fault in a fraction of
    the pages (measured 2,048 against 22,470 minor faults); SCVAE_MALLOC_TUNING=0 turns it
    off, and elsewhere nothing is changed."""
    active, tuned = _page_faults("1")
    inactive, untuned = _page_faults("0")
    assert not inactive
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert active == glibc
    if glibc:
        assert tuned < untuned / 4, (tuned, untuned)
