"""Hostile inputs at the boundary: the representation of the data never changes a result,
options are refused by name, results land in the slots scanpy would use, and writers refuse
views and backed data with one wording (issue 11, the boundary and option classes)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData
from helpers import assert_adata_unchanged, snapshot

import scvae
from scvae import checks
from scvae.data import (
    CellData,
    _to_csr,
    check_writable,
    cluster_slots,
    latent_slots,
    read_embedding,
    read_obs_column,
    read_query_data,
    read_training_data,
)


@pytest.fixture(scope="module")
def counts() -> AnnData:
    """60 cells x 15 genes of integer counts, every cell non-empty, 3 batches."""
    adata = scvae.datasets.simulate(n_cells=60, n_genes=15, n_batches=3, seed=5)
    adata.X = sp.csr_matrix(adata.X)
    return adata


def _assert_same_cells(a: CellData, b: CellData) -> None:
    for name in ("data", "indices", "indptr"):
        x, y = getattr(a.X, name), getattr(b.X, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert a.X.dtype == b.X.dtype == np.float32 and a.X.has_sorted_indices
    np.testing.assert_array_equal(a.batch_index, b.batch_index)
    np.testing.assert_array_equal(a.library_size, b.library_size)
    np.testing.assert_array_equal(a.log_x_factorial, b.log_x_factorial)


# --------------------------------------------------------------- representation of counts
def _with_explicit_zeros(X: sp.csr_matrix) -> sp.csr_matrix:
    """The same values with every row's first missing gene stored as an explicit 0."""
    dense = X.toarray()
    rows, cols = np.nonzero(dense == 0)
    first = np.unique(rows, return_index=True)[1]
    coo = X.tocoo()
    out = sp.csr_matrix(
        (
            np.r_[coo.data, np.zeros(first.size)],
            (np.r_[coo.row, rows[first]], np.r_[coo.col, cols[first]]),
        ),
        shape=X.shape,
    )
    assert out.nnz == X.nnz + first.size  # the zeros really are stored
    return out


def _with_duplicates(X: sp.csr_matrix) -> sp.coo_matrix:
    """The same values, every stored entry split into two halves of a COO matrix."""
    coo = X.tocoo()
    return sp.coo_matrix(
        (np.r_[coo.data / 2, coo.data / 2], (np.r_[coo.row, coo.row], np.r_[coo.col, coo.col])),
        shape=X.shape,
    )


def _unsorted(X: sp.csr_matrix) -> sp.csr_matrix:
    out = X.copy()
    for i in range(out.shape[0]):
        lo, hi = out.indptr[i], out.indptr[i + 1]
        out.indices[lo:hi] = out.indices[lo:hi][::-1].copy()
        out.data[lo:hi] = out.data[lo:hi][::-1].copy()
    out.has_sorted_indices = False
    return out


def _int64_indices(X: sp.csr_matrix) -> sp.csr_matrix:
    out = X.copy()
    out.indices, out.indptr = out.indices.astype(np.int64), out.indptr.astype(np.int64)
    return out


REPRESENTATIONS = {
    "explicit-zeros": _with_explicit_zeros,
    "explicit-zeros-csc": lambda X: _with_explicit_zeros(X).tocsc(),
    "duplicates-coo": _with_duplicates,
    "unsorted-indices": _unsorted,
    "int64-indices": _int64_indices,
    "csc": lambda X: X.tocsc(),
    "coo": lambda X: X.tocoo(),
    "csr-array": sp.csr_array,
    "dense-float32": lambda X: X.toarray(),
    "dense-float64": lambda X: X.toarray().astype(np.float64),
    "dense-int64": lambda X: X.toarray().astype(np.int64),
    "dense-uint16": lambda X: X.toarray().astype(np.uint16),
    "dense-fortran": lambda X: np.asfortranarray(X.toarray()),
    "csr-int32": lambda X: X.astype(np.int32),
    "csr-float64": lambda X: X.astype(np.float64),
    "negative-zero": lambda X: _negative_zeros(X),
}


def _negative_zeros(X: sp.csr_matrix) -> sp.csr_matrix:
    out = _with_explicit_zeros(X)
    out.data[out.data == 0] = -0.0
    return out


@pytest.mark.parametrize("name", sorted(REPRESENTATIONS))
def test_the_representation_of_the_counts_changes_nothing(name: str, counts: AnnData) -> None:
    setup, reference = read_training_data(counts, layer=None, batch_key="batch")
    X = REPRESENTATIONS[name](counts.X)
    if sp.issparse(X) and X.format == "coo":  # anndata keeps no COO matrix: read it directly
        kept = (X.data.copy(), X.row.copy(), X.col.copy())
        canonical = _to_csr(X)
        _assert_same_cells(
            CellData(canonical, reference.batch_index, reference.library_size), reference
        )
        for before_part, after_part in zip(kept, (X.data, X.row, X.col), strict=True):
            np.testing.assert_array_equal(before_part, after_part)
        return
    other = counts.copy()
    other.X = X
    before = snapshot(other)
    other_setup, cells = read_training_data(other, layer=None, batch_key="batch")
    assert other_setup == setup
    _assert_same_cells(cells, reference)
    _assert_same_cells(read_query_data(other, setup), reference)
    assert_adata_unchanged(before, other)  # the user's matrix keeps its stored zeros


def test_explicit_zeros_do_not_change_a_score(counts: AnnData) -> None:
    """The issue's example: ``X[X < 2] = 0`` on a CSR keeps the entries as stored zeros."""
    clean = counts.copy()
    clean.X = clean.X.copy()
    clean.X.data[clean.X.data < 2] = 0
    clean.X.eliminate_zeros()
    clean = clean[np.asarray(clean.X.sum(axis=1)).ravel() > 0].copy()
    zeros = clean.copy()
    zeros.X = counts[clean.obs_names].X.copy()
    zeros.X.data[zeros.X.data < 2] = 0  # stored, not removed
    assert zeros.X.nnz > clean.X.nnz
    before = snapshot(zeros)

    model = scvae.PPCA(clean, n_latent=2).fit()
    np.testing.assert_array_equal(
        model.marginal_log_likelihood(zeros), model.marginal_log_likelihood(clean)
    )
    vae = scvae.ZINBVAE(clean, n_latent=2, n_hidden=8)
    vae.fit(max_epochs=1, progress_bar=False, seed=0)
    np.testing.assert_allclose(
        vae.elbo(zeros, n_samples=2), vae.elbo(clean, n_samples=2), rtol=1e-6
    )
    assert_adata_unchanged(before, zeros)


def test_non_numeric_counts_are_refused_by_type(counts: AnnData) -> None:
    bad = AnnData(np.full((3, 2), "1", dtype=object))
    with pytest.raises(TypeError, match="numeric"):
        read_training_data(bad, layer=None, batch_key=None)


# ------------------------------------------------------------- representation of batches
def _labels(n: int) -> np.ndarray:
    return np.array([1, 2, 10, 2, 1, 10] * (n // 6))  # 10 sorts between 1 and 2 as a string


BATCH_COLUMNS = {
    "int": lambda v: v,
    "int8": lambda v: v.astype(np.int8),
    "float": lambda v: v.astype(np.float64),
    "str": lambda v: v.astype(str),
    "object": lambda v: v.astype(str).astype(object),
    "categorical-str": lambda v: pd.Categorical(v.astype(str)),
    "categorical-int": pd.Categorical,
    "categorical-reordered": lambda v: pd.Categorical(v.astype(str), categories=["2", "10", "1"]),
    "categorical-unused": lambda v: pd.Categorical(v, categories=[10, 7, 2, 1]),
    "pandas-string": lambda v: pd.array(v.astype(str), dtype="string"),
}


@pytest.mark.parametrize("name", sorted(BATCH_COLUMNS))
def test_the_type_of_the_batch_column_changes_nothing(name: str, counts: AnnData) -> None:
    reference = counts.copy()
    reference.obs["b"] = _labels(counts.n_obs).astype(str)
    setup, cells = read_training_data(reference, layer=None, batch_key="b")
    assert setup.batch_categories == ("1", "10", "2")
    other = counts.copy()
    other.obs["b"] = BATCH_COLUMNS[name](_labels(counts.n_obs))
    other_setup, other_cells = read_training_data(other, layer=None, batch_key="b")
    assert other_setup == setup
    _assert_same_cells(other_cells, cells)
    # a query whose column has another type reads the same codes too
    _assert_same_cells(read_query_data(other, setup), cells)
    np.testing.assert_array_equal(
        read_obs_column(other, "b", what="batch_key"), reference.obs["b"].to_numpy()
    )


@pytest.mark.parametrize("label", [2, np.int64(2), np.int8(2), "2", 2.0, np.float32(2.0)])
def test_a_batch_is_named_by_its_label_of_any_type(label, counts: AnnData) -> None:
    adata = counts.copy()
    adata.obs["b"] = _labels(counts.n_obs)
    setup, _ = read_training_data(adata, layer=None, batch_key="b")
    assert setup.batch_code(label) == setup.batch_categories.index("2") == 2
    with pytest.raises(ValueError, match=r"Unknown batch 3.*'1', '10', '2'"):
        setup.batch_code(3)


def test_float_batch_names_saved_by_older_versions_still_match(counts: AnnData) -> None:
    """Before, a float column was read as "1.0", "2.0": such saved models keep working."""
    from scvae.data import DataSetup

    adata = counts.copy()
    adata.obs["b"] = np.array([1, 2] * (counts.n_obs // 2))
    setup, cells = read_training_data(adata, layer=None, batch_key="b")
    old = DataSetup(
        layer=None, batch_key="b", batch_categories=("1.0", "2.0"), var_names=setup.var_names
    )
    assert old.batch_code(2) == old.batch_code("2.0") == 1
    np.testing.assert_array_equal(read_query_data(adata, old).batch_index, cells.batch_index)


def test_obs_names_of_another_dtype_read_the_same(counts: AnnData) -> None:
    _, cells = read_training_data(counts, layer=None, batch_key="batch")
    other = counts.copy()
    other.obs_names = pd.Index(np.arange(counts.n_obs)).astype(str).astype(object)
    _assert_same_cells(read_training_data(other, layer=None, batch_key="batch")[1], cells)


# ---------------------------------------------------------------------- embeddings, obs
def test_embeddings_of_any_container_read_the_same(counts: AnnData) -> None:
    adata = counts.copy()
    values = np.random.default_rng(0).integers(0, 5, size=(counts.n_obs, 3))
    adata.obsm["int"] = values
    adata.obsm["f32"] = values.astype(np.float32)
    adata.obsm["sparse"] = sp.csr_matrix(values)
    adata.obsm["frame"] = pd.DataFrame(values, index=adata.obs_names)
    before = snapshot(adata)
    for key in ("int", "f32", "sparse", "frame"):
        rep = read_embedding(adata, key)
        assert rep.dtype == np.float64
        np.testing.assert_array_equal(rep, values)
        rep[0, 0] = -1.0  # a copy: the user's embedding is untouched
    assert_adata_unchanged(before, adata)
    adata.obsm["bool"] = values > 2
    with pytest.raises(ValueError, match="must be numeric"):
        read_embedding(adata, "bool")
    with pytest.raises(KeyError, match=r"use_rep='X_umap' is not in adata\.obsm.*'int'"):
        read_embedding(adata, "X_umap")


def test_obs_columns_name_the_argument(counts: AnnData) -> None:
    with pytest.raises(KeyError, match="label_key='cell_type' is not a column"):
        read_obs_column(counts, "cell_type", what="label_key")
    adata = counts.copy()
    adata.obs["t"] = pd.Series([None] * 3 + ["a"] * (counts.n_obs - 3), index=adata.obs_names)
    with pytest.raises(ValueError, match="3 missing values; every cell needs a label"):
        read_obs_column(adata, "t", what="label_key")


# ----------------------------------------------------------------------------- slot names
@pytest.mark.parametrize(
    ("key_added", "expected"),
    [
        (None, ("X_ppca", "ppca")),
        ("scvi", ("X_scvi", "scvi")),
        ("X_scvi", ("X_scvi", "scvi")),
        ("X_X_odd", ("X_X_odd", "X_odd")),
    ],
)
def test_latent_slots_follow_scanpy(key_added, expected) -> None:
    assert latent_slots(key_added, "ppca") == expected


@pytest.mark.parametrize("bad", ["", "X_", 3, ["a"]])
def test_bad_keys_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="key_added"):
        latent_slots(bad, "ppca")
    if bad != "X_":
        with pytest.raises(ValueError, match="key_added"):
            cluster_slots(bad)


def test_writers_use_the_slots_and_one_view_message(counts: AnnData) -> None:
    adata = counts.copy()
    scvae.tl.ppca(adata, n_latent=2, key_added="X_pc")
    assert "X_pc" in adata.obsm and "pc" in adata.uns and "X_X_pc" not in adata.obsm
    scvae.tl.gmm(adata, use_rep="X_pc", n_components=2, key_added="cl")
    assert {"cl"} <= set(adata.obs) and "cl_proba" in adata.obsm and "cl" in adata.uns
    model = scvae.PPCA(adata, n_latent=2).fit()
    view = adata[:10]
    messages = set()
    for write in (
        lambda: model.write_latent(view),
        lambda: scvae.GMM(adata, use_rep="X_pc", n_components=2).fit().write_latent(view),
    ):
        with pytest.raises(ValueError, match="adata is a view") as err:
            write()
        messages.add(str(err.value))
    assert len(messages) == 1
    with pytest.raises(ValueError) as err:
        check_writable(view)
    assert messages == {str(err.value)}
    for tool in (
        lambda: scvae.tl.ppca(view, n_latent=2),
        lambda: scvae.tl.gmm(view, use_rep="X_pc", n_components=2),
    ):
        with pytest.raises(ValueError) as err:
            tool()
        assert str(err.value) == next(iter(messages)) + " Or pass copy=True."


def test_backed_data_is_refused_with_one_message(counts: AnnData, tmp_path) -> None:
    """Where backed data are refused (the VAEs read them: tests/test_backed.py)."""
    path = tmp_path / "c.h5ad"
    counts.write_h5ad(path)
    import anndata as ad

    backed = ad.read_h5ad(path, backed="r")
    try:
        for build in (lambda: scvae.PPCA(backed), lambda: scvae.FactorAnalysis(backed)):
            with pytest.raises(ValueError, match=r"backed on disk.*adata\.to_memory\(\)"):
                build()
    finally:
        backed.file.close()


# -------------------------------------------------------------------------------- options
GOOD_INTS = [3, np.int64(3), np.int32(3), np.uint8(3)]
BAD_INTS = [
    (2.5, TypeError, r"n_latent must be an integer, got 2\.5 \(float\)"),
    (2.0, TypeError, r"n_latent must be an integer, got 2\.0 \(float\)"),
    (np.float64(3.0), TypeError, "n_latent must be an integer"),
    ("64", TypeError, r"n_latent must be an integer, got '64' \(str\)"),
    (True, TypeError, r"n_latent must be an integer, got True \(bool\)"),
    (np.bool_(True), TypeError, "n_latent must be an integer"),
    (None, TypeError, "n_latent must be an integer, got None"),
    (0, ValueError, "n_latent must be an integer >= 1, got 0"),
    (np.int64(-2), ValueError, "n_latent must be an integer >= 1, got -2"),
]


@pytest.mark.parametrize("value", GOOD_INTS, ids=lambda v: type(v).__name__)
def test_positive_int_accepts_numpy_integers(value) -> None:
    out = checks.positive_int("n_latent", value)
    assert out == 3 and type(out) is int
    assert checks.optional_positive_int("n", None) is None


@pytest.mark.parametrize(("value", "error", "message"), BAD_INTS, ids=repr)
def test_positive_int_refuses_by_name(value, error, message) -> None:
    with pytest.raises(error, match=message):
        checks.positive_int("n_latent", value)


def test_fraction() -> None:
    assert checks.fraction("train_size", np.float32(0.5)) == 0.5
    assert type(checks.fraction("t", np.int64(1))) is float
    for bad, error in [(True, TypeError), ("0.5", TypeError), (None, TypeError)]:
        with pytest.raises(error, match="train_size must be a number"):
            checks.fraction("train_size", bad)
    with pytest.raises(ValueError, match=r"train_size must be in \(0, 1\], got nan"):
        checks.fraction("train_size", math.nan, include_low=False)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        checks.fraction("train_size", 0.0, include_low=False)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        checks.fraction("p", 1.0, include_high=False)
    assert checks.fraction("p", 0.0) == 0.0


def test_resolve_seed() -> None:
    drawn = {checks.resolve_seed(None) for _ in range(5)}
    assert len(drawn) > 1 and all(type(s) is int and 0 <= s < 2**32 for s in drawn)
    assert checks.resolve_seed(np.int64(7)) == 7 and checks.resolve_seed(0) == 0
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        checks.resolve_seed(-1)
    for bad in (1.5, "1", True):
        with pytest.raises(TypeError, match="seed must be an integer"):
            checks.resolve_seed(bad)


def test_choice_and_boolean() -> None:
    assert checks.choice("covariance_type", "diag", ("full", "diag")) == "diag"
    with pytest.raises(ValueError, match=r"covariance_type must be one of 'full', 'diag'; got"):
        checks.choice("covariance_type", "tied", ("full", "diag"))
    with pytest.raises(ValueError, match="must be one of"):
        checks.choice("backend", ["scvae"], {"scvae"})  # unhashable
    assert checks.boolean("copy", np.bool_(False)) is False
    with pytest.raises(TypeError, match="copy must be True or False, got 1"):
        checks.boolean("copy", 1)


def test_seed_none_is_random_and_recorded(counts: AnnData) -> None:
    adata = counts.copy()
    adata.obsm["X_e"] = np.random.default_rng(1).normal(size=(counts.n_obs, 2))
    scvae.tl.gmm(adata, use_rep="X_e", n_components=3, seed=None)
    seed = adata.uns["gmm"]["params"]["seed"]
    assert isinstance(seed, int)
    again = scvae.tl.gmm(adata, use_rep="X_e", n_components=3, seed=seed, copy=True)
    np.testing.assert_array_equal(again.obsm["gmm_proba"], adata.obsm["gmm_proba"])
    model = scvae.PPCA(counts, n_latent=2).fit(seed=None)
    assert isinstance(model.seed, int) and model.uns_params()["seed"] == model.seed


def test_numpy_options_work_and_bad_ones_are_refused_by_name(counts: AnnData) -> None:
    adata = counts.copy()
    model = scvae.PPCA(adata, n_latent=np.int64(2), ddof=np.int64(1)).fit(seed=np.int64(0))
    assert model.config.n_latent == 2 and type(model.config.ddof) is int
    adata.obsm["X_e"] = model.get_latent()
    gmm = scvae.GMM(
        adata,
        use_rep="X_e",
        n_components=np.int64(2),
        n_init=np.int64(2),
        max_iter=np.int64(20),
        tol=np.float32(1e-3),
    ).fit(seed=np.int64(1))
    assert gmm.config.n_components == 2 and type(gmm.config.max_iter) is int
    cases = [
        (lambda: scvae.PPCA(adata, n_latent=2.5), TypeError, "n_latent"),
        (lambda: scvae.PPCA(adata, n_latent="3"), TypeError, "n_latent"),
        (lambda: scvae.PPCA(adata, ddof=True), TypeError, "ddof"),
        (lambda: scvae.PPCA(adata, log_normalize=1), TypeError, "log_normalize"),
        (lambda: scvae.PPCA(adata).fit(seed=0.5), TypeError, "seed"),
        (lambda: scvae.PPCA(adata).fit(accelerator="tpu"), ValueError, "accelerator"),
        (lambda: scvae.GMM(adata, use_rep="X_e", n_init=2.0), TypeError, "n_init"),
        (lambda: scvae.GMM(adata, use_rep="X_e", n_init=0), ValueError, "n_init"),
        (lambda: scvae.GMM(adata, use_rep="X_e", max_iter="9"), TypeError, "max_iter"),
        (lambda: scvae.GMM(adata, use_rep="X_e", tol=True), TypeError, "tol"),
        (lambda: scvae.GMM(adata, use_rep="X_e", reg_covar=math.nan), ValueError, "reg_covar"),
        (lambda: scvae.GMM(adata, use_rep="X_e", n_components=2.0), TypeError, "n_components"),
        (lambda: scvae.GMM(adata, use_rep="X_e", n_components=True), TypeError, "n_components"),
        (lambda: scvae.GMM(adata, use_rep="X_e", n_components=[2, 0]), ValueError, "n_comp"),
        (lambda: scvae.tl.gmm(adata, use_rep="X_e", copy="no"), TypeError, "copy"),
        (lambda: scvae.tl.ppca(adata, n_latent=2, seed="1"), TypeError, "seed"),
    ]
    before = snapshot(adata)
    for build, error, name in cases:
        with pytest.raises(error, match=name):
            build()
    assert_adata_unchanged(before, adata)


def test_evaluate_options_are_refused_by_name(counts: AnnData) -> None:
    adata = counts.copy()
    adata.obsm["X_e"] = np.random.default_rng(2).normal(size=(counts.n_obs, 2))
    kwargs = {"use_rep": "X_e", "label_key": "cluster"}
    for option, value, error in [
        ("n_neighbors", 15.0, TypeError),
        ("n_neighbors", 1, ValueError),
        ("kbet_n_neighbors", "50", TypeError),
        ("n_samples", 0, ValueError),
        ("gmm_n_components", 2.5, TypeError),
        ("gmm", "yes", TypeError),
        ("resolutions", [1.0, -1.0], ValueError),
        ("backend", "scib", ValueError),
        ("seed", 1.5, TypeError),
    ]:
        with pytest.raises(error, match=option):
            scvae.tl.evaluate(adata, **kwargs, **{option: value})


# ------------------------------------------------------------------------------- the VAEs
@pytest.fixture(scope="module")
def vae() -> scvae.ZINBVAE:
    adata = scvae.datasets.simulate(n_cells=90, n_genes=25, n_batches=2, seed=5)
    return scvae.ZINBVAE(adata, batch_key="batch", n_hidden=8, n_latent=2).fit(
        max_epochs=np.int64(2), batch_size=np.int64(32), progress_bar=False
    )


def test_vae_options_accept_numpy_integers(vae: scvae.ZINBVAE) -> None:
    assert vae.training["max_epochs"] == 2 and type(vae.training["batch_size"]) is int
    model = scvae.NBVAE(_sim(), n_latent=np.int64(3))
    assert type(model.config.n_latent) is int
    assert vae.elbo(n_samples=np.int64(2)).shape == (90,)


def _sim() -> AnnData:
    return scvae.datasets.simulate(n_cells=90, n_genes=25, n_batches=2, seed=5)


@pytest.mark.parametrize(
    ("call", "error", "name"),
    [
        (lambda m: m.elbo(n_samples=0), ValueError, "n_samples"),
        (lambda m: m.elbo(n_samples=-1), ValueError, "n_samples"),
        (lambda m: m.elbo(n_samples=2.5), TypeError, "n_samples"),
        (lambda m: m.marginal_log_likelihood(n_samples=0), ValueError, "n_samples"),
        (lambda m: m.sample(n_samples=True), TypeError, "n_samples"),
        (lambda m: m.get_latent(batch_size=0), ValueError, "batch_size"),
        (lambda m: m.generate(0), ValueError, "n_cells"),
        (lambda m: m.get_normalized_expression(n_samples="3"), TypeError, "n_samples"),
        (lambda m: m.fit(max_epochs=2.5), TypeError, "max_epochs"),
        (lambda m: m.fit(max_epochs="64"), TypeError, "max_epochs"),
        (lambda m: m.fit(batch_size=True), TypeError, "batch_size"),
        (lambda m: m.fit(batch_size=1), ValueError, "batch_size"),
        (lambda m: m.fit(patience=0), ValueError, "patience"),
        (lambda m: m.fit(train_size=0.0), ValueError, "train_size"),
        (lambda m: m.fit(train_size=1.5), ValueError, "train_size"),
        (lambda m: m.fit(lr=-1.0), ValueError, "lr"),
        (lambda m: m.fit(seed=1.5), TypeError, "seed"),
    ],
)
def test_vae_options_are_refused_by_name(vae: scvae.ZINBVAE, call, error, name) -> None:
    weights = {k: v.clone() for k, v in vae.module.state_dict().items()}
    with pytest.raises(error, match=name):
        call(vae)
    for key, value in vae.module.state_dict().items():  # a refused fit changes nothing
        torch.testing.assert_close(value, weights[key])


def test_vae_constructor_options_are_refused_by_name() -> None:
    adata = _sim()
    for kwargs, error, name in [
        ({"n_latent": 2.0}, TypeError, "n_latent"),
        ({"n_hidden": "64"}, TypeError, "n_hidden"),
        ({"n_layers": True}, TypeError, "n_layers"),
        ({"dropout_rate": 1.0}, ValueError, "dropout_rate"),
        ({"dispersion": "cell"}, ValueError, "dispersion"),
    ]:
        with pytest.raises(error, match=name):
            scvae.ZINBVAE(adata, **kwargs)


def test_vae_seed_none_is_random_and_recorded() -> None:
    adata = _sim()
    model = scvae.NBVAE(adata, n_hidden=8, n_latent=2).fit(
        max_epochs=2, seed=None, progress_bar=False
    )
    seed = model.training["seed"]
    assert isinstance(seed, int)
    again = scvae.NBVAE(adata, n_hidden=8, n_latent=2).fit(
        max_epochs=2, seed=seed, progress_bar=False
    )
    np.testing.assert_array_equal(model.get_latent(), again.get_latent())


@pytest.mark.parametrize("kind", ["int", "float", "categorical-int"])
def test_numeric_batch_columns_work_everywhere(kind: str, tmp_path) -> None:
    adata = _sim()
    codes = adata.obs["batch"].cat.codes.to_numpy() + 1  # batches 1 and 2
    adata.obs["batch"] = {
        "int": codes,
        "float": codes.astype(float),
        "categorical-int": pd.Categorical(codes),
    }[kind]
    model = scvae.ZINBVAE(adata, batch_key="batch", n_hidden=8, n_latent=2)
    model.fit(max_epochs=2, progress_bar=False)
    generated = model.generate(5, batch=2)
    assert list(generated.obs["batch"].astype(str)) == ["2"] * 5
    assert model.generate(3, batch=np.int64(1)).n_obs == 3
    assert model.generate(2, batch=[1, 2.0]).n_obs == 2
    corrected = model.get_normalized_expression(transform_batch=2)
    np.testing.assert_allclose(
        corrected, model.get_normalized_expression(transform_batch="2"), rtol=1e-6
    )
    with pytest.raises(ValueError, match="Unknown batch 3"):
        model.generate(2, batch=3)
    model.save(tmp_path / "m")
    loaded = scvae.ZINBVAE.load(tmp_path / "m", adata)
    np.testing.assert_allclose(loaded.get_latent(), model.get_latent(), rtol=1e-6)


def test_vae_save_with_numpy_options_is_whole(tmp_path) -> None:
    adata = _sim()
    model = scvae.ZINBVAE(adata, n_latent=np.int64(2), n_hidden=np.int64(8))
    model.fit(max_epochs=np.int64(2), lr=np.float32(1e-3), seed=np.int64(3), progress_bar=False)
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.pt"]
    loaded = scvae.models.VAEModel.load(tmp_path / "m", adata)
    assert type(loaded) is scvae.ZINBVAE and loaded.training == model.training
    np.testing.assert_array_equal(loaded.get_latent(), model.get_latent())
