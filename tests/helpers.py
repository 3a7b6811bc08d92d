"""Test helpers shared by the test files (``tests/`` is on ``sys.path`` under pytest).

``from helpers import assert_adata_unchanged, snapshot``: take a deep snapshot of an AnnData
before calling the code under test, and compare after, slot by slot, down to the stored
structure of sparse matrices (a tool that canonicalised the user's CSR in place, dropping its
stored zeros, changes nothing numerically but is caught here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

__all__ = ["assert_adata_unchanged", "assert_same_value", "snapshot"]


def snapshot(adata: AnnData) -> AnnData:
    """A deep, independent copy of ``adata`` (of a view: the data it shows) to compare later."""
    return adata.copy()


def _sparse_parts(x: Any) -> tuple:
    if x.format in ("csr", "csc", "bsr"):
        return x.format, x.data, x.indices, x.indptr
    coo = x.tocoo() if x.format != "coo" else x
    return "coo", coo.data, coo.row, coo.col


def assert_same_value(a: Any, b: Any, where: str) -> None:
    """Deep equality of two slot values: arrays (NaN equal to NaN), sparse matrices (same
    format, stored entries and index arrays), DataFrames, dicts, lists and scalars."""
    if sp.issparse(a) or sp.issparse(b):
        assert sp.issparse(a) and sp.issparse(b), f"{where}: sparse vs dense"
        assert a.shape == b.shape and a.dtype == b.dtype, f"{where}: shape or dtype changed"
        pa, pb = _sparse_parts(a), _sparse_parts(b)
        assert pa[0] == pb[0], f"{where}: sparse format changed {pa[0]} -> {pb[0]}"
        for name, x, y in zip(("data", "indices", "indptr"), pa[1:], pb[1:], strict=True):
            np.testing.assert_array_equal(x, y, err_msg=f"{where}: sparse {name} changed")
    elif isinstance(a, pd.DataFrame | pd.Series):
        assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
        if isinstance(a, pd.DataFrame):
            pd.testing.assert_frame_equal(a, b, obj=where)
        else:
            pd.testing.assert_series_equal(a, b, obj=where)
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, (
            f"{where}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
        )
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping), f"{where}: a dict became {type(b).__name__}"
        assert list(a.keys()) == list(b.keys()), f"{where}: keys {list(a)} vs {list(b)}"
        for k in a:
            assert_same_value(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_value(x, y, f"{where}[{i}]")
    else:
        same = a == b or (a != a and b != b)  # NaN equals NaN here
        assert type(a) is type(b) and same, f"{where}: {a!r} vs {b!r}"


def _assert_mapping(a: Mapping, b: Mapping, where: str) -> None:
    assert list(a.keys()) == list(b.keys()), f"{where} keys: {list(a)} vs {list(b)}"
    for k in a:
        assert_same_value(a[k], b[k], f"{where}[{k!r}]")


def assert_adata_unchanged(before: AnnData, after: AnnData) -> None:
    """Assert that ``after`` holds exactly what the snapshot ``before`` held.

    Compares the shape, cell and gene names, ``X`` (same type, dtype and, for sparse
    matrices, the same stored entries), every layer, ``obs``, ``var`` (values, dtypes,
    column order), ``obsm``, ``varm``, ``obsp``, ``varp``, ``uns`` (deeply) and ``raw``.

    Parameters
    ----------
    before
        A :func:`snapshot` (or ``adata.copy()``) taken before the call under test.
    after
        The AnnData after the call.
    """
    assert before.shape == after.shape, f"shape {before.shape} -> {after.shape}"
    pd.testing.assert_index_equal(before.obs_names, after.obs_names, obj="obs_names")
    pd.testing.assert_index_equal(before.var_names, after.var_names, obj="var_names")
    if before.X is None or after.X is None:
        assert before.X is None and after.X is None, "X appeared or disappeared"
    else:
        assert_same_value(before.X, after.X, "X")
    _assert_mapping(before.layers, after.layers, "layers")
    assert_same_value(before.obs, after.obs, "obs")
    assert_same_value(before.var, after.var, "var")
    for slot in ("obsm", "varm", "obsp", "varp"):
        _assert_mapping(getattr(before, slot), getattr(after, slot), slot)
    _assert_mapping(before.uns, after.uns, "uns")
    assert (before.raw is None) == (after.raw is None), "raw appeared or disappeared"
    if before.raw is not None:
        assert_same_value(before.raw.X, after.raw.X, "raw.X")
        assert_same_value(before.raw.var, after.raw.var, "raw.var")
