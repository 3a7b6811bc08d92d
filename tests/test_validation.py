"""Bad input at the AnnData boundary: a clear error, and the AnnData left exactly as it was."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from helpers import assert_adata_unchanged

import scvae


@pytest.fixture
def small() -> AnnData:
    return scvae.datasets.simulate(n_cells=60, n_genes=30, n_batches=2, seed=3)


def _with_X(adata: AnnData, X) -> AnnData:
    out = adata.copy()
    out.X = X
    return out


def _set(adata: AnnData, i: int, j: int, value: float) -> AnnData:
    X = adata.X.toarray()
    X[i, j] = value
    return _with_X(adata, sp.csr_matrix(X))


CASES = {
    "negative": (lambda a: _set(a, 0, 0, -1.0), {}, ValueError, "negative values"),
    "nan": (lambda a: _set(a, 1, 2, np.nan), {}, ValueError, "NaN or infinite"),
    "inf": (lambda a: _set(a, 1, 2, np.inf), {}, ValueError, "NaN or infinite"),
    "non-integer": (
        lambda a: _with_X(a, sp.csr_matrix(np.log1p(a.X.toarray()))),
        {},
        ValueError,
        "layer='counts'",
    ),
    "empty cells": (
        lambda a: _with_X(
            a, sp.csr_matrix(np.vstack([np.zeros((2, a.n_vars)), a.X.toarray()[2:]]))
        ),
        {},
        ValueError,
        r"2 cells with zero total counts.*sc.pp.filter_cells",
    ),
    "unknown layer": (lambda a: a.copy(), {"layer": "raw"}, KeyError, "Layers present: 'counts'"),
    "unknown batch_key": (
        lambda a: a.copy(),
        {"batch_key": "sample"},
        KeyError,
        "Columns present: 'cluster', 'batch'",
    ),
    "missing batch labels": (
        lambda a: _obs_nan(a),
        {"batch_key": "batch"},
        ValueError,
        "missing values",
    ),
}


def _obs_nan(a: AnnData) -> AnnData:
    out = a.copy()
    out.obs["batch"] = out.obs["batch"].astype(object)
    out.obs.iloc[0, out.obs.columns.get_loc("batch")] = np.nan
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_bad_training_input_raises_and_changes_nothing(case: str, small: AnnData) -> None:
    make, kwargs, error, message = CASES[case]
    bad = make(small)
    reference = bad.copy()
    with pytest.raises(error, match=message):
        scvae.ZINBVAE(bad, **kwargs)
    assert_adata_unchanged(reference, bad)
    with pytest.raises(error, match=message):
        scvae.tl.zinbvae(bad, max_epochs=1, progress_bar=False, **kwargs)
    assert_adata_unchanged(reference, bad)


@pytest.fixture(scope="module")
def quick_model():
    adata = scvae.datasets.simulate(n_cells=60, n_genes=30, n_batches=2, seed=3)
    model = scvae.ZINBVAE(adata, batch_key="batch", n_hidden=16)
    return model.fit(max_epochs=1, progress_bar=False, early_stopping=False)


def test_query_with_unseen_batch(quick_model, small: AnnData) -> None:
    query = small.copy()
    query.obs["batch"] = pd.Categorical(["batch0"] * 30 + ["batchX"] * 30)
    reference = query.copy()
    with pytest.raises(ValueError, match=r"unseen in training: 'batchX'.*knows 'batch0', 'batch1'"):
        quick_model.get_latent(query)
    with pytest.raises(ValueError, match="unseen in training"):
        quick_model.write_latent(query)
    assert_adata_unchanged(reference, query)


def test_query_with_other_genes(quick_model, small: AnnData) -> None:
    fewer = small[:, 1:].copy()
    with pytest.raises(ValueError, match=r"trained on 30: missing 1 training genes \('gene0'\)"):
        quick_model.get_latent(fewer)
    shuffled = small[:, ::-1].copy()
    with pytest.raises(ValueError, match="same genes in another order"):
        quick_model.get_latent(shuffled)


@pytest.mark.parametrize(
    "convert",
    [
        lambda X: X.tocsr(),
        lambda X: X.tocsc(),
        lambda X: X.toarray(),
        lambda X: X.toarray().astype(np.int64),
        lambda X: sp.csr_matrix(X.toarray().astype(np.int32)),
    ],
    ids=["csr", "csc", "dense-float", "dense-int", "csr-int"],
)
def test_sparse_dense_float_int_all_work(convert, small: AnnData) -> None:
    adata = _with_X(small, convert(small.X))
    reference = adata.copy()
    model = scvae.PoissonVAE(adata, n_hidden=8, n_latent=2)
    model.fit(max_epochs=1, progress_bar=False)
    assert model.get_latent().shape == (60, 2)
    assert_adata_unchanged(reference, adata)
    assert type(adata.X) is type(reference.X)


def test_sparse_input_is_never_densified(small: AnnData, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the count matrix was densified")

    adata = small.copy()
    monkeypatch.setattr(sp.csr_matrix, "toarray", refuse)
    monkeypatch.setattr(sp.csr_matrix, "todense", refuse)
    model = scvae.NBVAE(adata, n_hidden=8)
    model.fit(max_epochs=1, progress_bar=False)
    model.get_latent()


def test_bad_options() -> None:
    adata = scvae.datasets.simulate(n_cells=30, n_genes=10, seed=0)
    with pytest.raises(ValueError, match=r"dispersion must be one of 'gene'.*got 'cell'"):
        scvae.ZINBVAE(adata, dispersion="cell")
    with pytest.raises(ValueError, match=r"library.*'fixed'"):
        scvae.ZINBVAE(adata, library="fixed")
    with pytest.raises(ValueError, match="n_latent must be an integer >= 1"):
        scvae.ZINBVAE(adata, n_latent=0)
    model = scvae.ZINBVAE(adata)
    with pytest.raises(RuntimeError, match="not trained yet"):
        model.get_latent()
    with pytest.raises(TypeError, match="adata must be an AnnData"):
        scvae.ZINBVAE(adata.X)
