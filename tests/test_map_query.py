"""Reference mapping (``map_query``, scArches): a reference on two batches, the third mapped.

The mapped model learns only the new batches' rows (and new categories); the reference is
untouched and its cells' latent is bit for bit the same under the mapped model; genes are
aligned by name, sparsely, with documented overlap thresholds; bad queries fail clearly.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from helpers import assert_adata_unchanged, snapshot

import scvae
from scvae.data import MIN_GENE_OVERLAP, WARN_GENE_OVERLAP, read_mapping_data
from scvae.nn import CovariateLinear, GrownEmbedding

FIT = {"max_epochs": 8, "batch_size": 32, "seed": 0, "progress_bar": False}
MAP = {"max_epochs": 6, "batch_size": 32, "seed": 0, "progress_bar": False}
SMALL = {"n_latent": 3, "n_hidden": 16}


@pytest.fixture(scope="module")
def cells() -> ad.AnnData:
    """240 cells x 50 genes, 3 batches, 3 clusters; a donor column (2 in the reference)."""
    sim = scvae.datasets.simulate(n_cells=240, n_genes=50, n_clusters=3, n_batches=3, seed=4)
    rng = np.random.default_rng(0)
    donors = np.where(sim.obs["batch"] == "batch2", "d3", rng.choice(["d1", "d2"], sim.n_obs))
    sim.obs["donor"] = pd.Categorical(donors)
    return sim


@pytest.fixture(scope="module")
def reference_cells(cells: ad.AnnData) -> ad.AnnData:
    return cells[cells.obs["batch"] != "batch2"].copy()


@pytest.fixture(scope="module")
def query(cells: ad.AnnData) -> ad.AnnData:
    return cells[cells.obs["batch"] == "batch2"].copy()


@pytest.fixture(scope="module")
def reference(reference_cells: ad.AnnData) -> scvae.ZINBVAE:
    model = scvae.ZINBVAE(reference_cells, batch_key="batch", dispersion="gene-batch", **SMALL)
    return model.fit(**FIT)


@pytest.fixture(scope="module")
def mapped(reference: scvae.ZINBVAE, query: ad.AnnData) -> scvae.ZINBVAE:
    return reference.map_query(query, **MAP)


# ------------------------------------------------------------------------------ the layers
def test_grown_embedding_keeps_rows_and_trains_only_new_ones() -> None:
    torch.manual_seed(0)
    fixed = torch.randn(3, 4)
    grown = GrownEmbedding(fixed, 2, init="mean")
    assert [n for n, _ in grown.named_parameters()] == ["new"]
    torch.testing.assert_close(grown.new.detach(), fixed.mean(0).expand(2, 4))
    out = grown(torch.tensor([0, 4, 2]))
    assert torch.equal(out[0], fixed[0]) and torch.equal(out[2], fixed[2])
    merged = grown.merged()
    assert isinstance(merged, torch.nn.Embedding) and torch.equal(merged.weight[:3], fixed)
    assert torch.equal(GrownEmbedding(fixed, 1).new.detach(), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="init"):
        GrownEmbedding(fixed, 1, init="random")


def test_layer_of_one_batch_grows_from_a_zero_row() -> None:
    layer = CovariateLinear(5, 4, n_batch=1)
    assert layer.batch_embedding is None
    new = layer.grow(2)
    assert len(new) == 1 and new[0].shape == (2, 4)
    layer.merge()
    assert layer.batch_embedding.weight.shape == (3, 4)
    assert torch.equal(layer.batch_embedding.weight[0], torch.zeros(4))


# --------------------------------------------------------------------- the guarantees
def test_reference_latent_is_bit_for_bit_unchanged(
    reference: scvae.ZINBVAE, mapped: scvae.ZINBVAE, reference_cells: ad.AnnData
) -> None:
    before = reference.get_latent(reference_cells)
    after = mapped.get_latent(reference_cells)
    assert np.array_equal(before, after)


@pytest.mark.parametrize(("init", "batchnorm"), [("mean", "eval"), ("zero", "train")])
def test_every_variant_keeps_the_reference_latent(
    reference: scvae.ZINBVAE,
    query: ad.AnnData,
    reference_cells: ad.AnnData,
    init: str,
    batchnorm: str,
) -> None:
    other = reference.map_query(query, new_row_init=init, batchnorm=batchnorm, **MAP)
    assert np.array_equal(other.get_latent(reference_cells), reference.get_latent(reference_cells))
    assert other.training["new_row_init"] == init and other.training["batchnorm"] == batchnorm


def test_reference_model_and_query_are_untouched(
    reference: scvae.ZINBVAE, query: ad.AnnData
) -> None:
    state = {k: v.clone() for k, v in reference.module.state_dict().items()}
    categories, training = list(reference.batch_categories), dict(reference.training)
    before = snapshot(query)
    reference.map_query(query, **MAP)
    assert_adata_unchanged(query, before)
    assert reference.batch_categories == categories and reference.training == training
    after = reference.module.state_dict()
    assert state.keys() == after.keys()
    for key, value in state.items():
        assert torch.equal(value, after[key]), key


def test_only_the_new_rows_move(reference: scvae.ZINBVAE, mapped: scvae.ZINBVAE) -> None:
    ref_state, new_state = reference.module.state_dict(), mapped.module.state_dict()
    assert ref_state.keys() == new_state.keys()
    n_ref = reference.setup.n_batch
    moved = []
    for key, old in ref_state.items():
        new = new_state[key]
        if new.shape == old.shape:
            assert torch.equal(new, old), key  # every shared weight and statistic
        else:  # one new row of a per-batch tensor
            assert new.shape[0] == n_ref + 1 and torch.equal(new[:n_ref], old), key
            moved.append(key)
            if "embedding" in key:
                assert not torch.equal(new[n_ref:], torch.zeros_like(new[n_ref:])), key
    assert "log_theta" in moved and "library_log_mean" in moved
    assert sum("batch_embedding" in k for k in moved) == 3  # z, l encoders and decoder
    log_l = np.log(mapped._data.library_size)
    assert mapped.module.library_log_mean[-1].item() == pytest.approx(log_l.mean(), rel=1e-5)


def test_mapped_model_records_and_categories(
    reference: scvae.ZINBVAE, mapped: scvae.ZINBVAE, query: ad.AnnData
) -> None:
    assert mapped.batch_categories == [*reference.batch_categories, "batch2"]
    assert type(mapped) is scvae.ZINBVAE
    t = mapped.training
    assert t["map_query"] is True and t["n_new_batches"] == 1
    assert t["reference_batch_categories"] == reference.batch_categories
    assert t["reference_n_epochs_trained"] == reference.training["n_epochs_trained"]
    assert t["n_epochs_trained"] >= 1 and t["gene_overlap"] == 1.0
    out = query.copy()
    mapped.write_latent(out)
    params = out.uns["zinbvae"]["params"]
    assert params["map_query"] is True and params["new_batch_categories"] == ["batch2"]
    assert out.obsm["X_zinbvae"].shape == (query.n_obs, 3)


def test_getters_and_save_load(
    mapped: scvae.ZINBVAE, query: ad.AnnData, tmp_path: pytest.TempPathFactory
) -> None:
    latent = mapped.get_latent(query)
    np.testing.assert_array_equal(latent, mapped.get_latent())  # default cells: the query
    expr = mapped.get_normalized_expression(query, transform_batch="batch0")
    assert expr.shape == (query.n_obs, query.n_vars) and np.isfinite(expr.to_numpy()).all()
    assert np.isfinite(mapped.elbo(query)).all()
    assert np.isfinite(mapped.marginal_log_likelihood(query, n_samples=4)).all()
    mapped.save(tmp_path / "mapped")
    loaded = scvae.ZINBVAE.load(tmp_path / "mapped")
    assert loaded.batch_categories == mapped.batch_categories
    assert loaded.training["map_query"] is True
    np.testing.assert_array_equal(loaded.get_latent(query), latent)
    shuffled = query[:, query.var_names[::-1]].copy()  # a loaded mapped model aligns too
    np.testing.assert_array_equal(loaded.get_latent(shuffled), latent)


def test_known_batch_keeps_its_row_and_nothing_new_trains_nothing(
    reference: scvae.ZINBVAE, cells: ad.AnnData, reference_cells: ad.AnnData
) -> None:
    mixed = cells[cells.obs["batch"] != "batch0"].copy()  # batch1 (known) and batch2 (new)
    mixed.obs_names = [f"q{i}" for i in range(mixed.n_obs)]
    other = reference.map_query(mixed, **MAP)
    assert other.batch_categories == ["batch0", "batch1", "batch2"]
    assert other.training["n_new_batches"] == 1
    known = reference_cells[reference_cells.obs["batch"] == "batch1"].copy()
    known.obs_names = [f"k{i}" for i in range(known.n_obs)]
    same = reference.map_query(known, **MAP)
    assert same.training["n_epochs_trained"] == 0 and same.training["n_new_batches"] == 0
    np.testing.assert_array_equal(same.get_latent(known), reference.get_latent(known))


def test_query_needs_no_labels_or_extra_columns(
    reference: scvae.ZINBVAE, query: ad.AnnData
) -> None:
    bare = ad.AnnData(X=query.X.copy(), obs=query.obs[["batch"]].copy(), var=query.var[[]])
    other = reference.map_query(bare, **MAP)
    assert other.get_latent(bare).shape == (bare.n_obs, 3)


# ------------------------------------------------------------------------------- the genes
def _genes_subset(query: ad.AnnData, keep: int, n_extra: int, seed: int = 0) -> ad.AnnData:
    """The query with ``keep`` of its genes (shuffled) and ``n_extra`` unknown genes (cells
    without counts in the kept genes dropped)."""
    rng = np.random.default_rng(seed)
    genes = rng.permutation(query.var_names)[:keep]
    sub = query[:, genes]
    sub = sub[np.asarray(sub.X.sum(1)).ravel() > 0]
    extra = sp.csr_matrix(rng.poisson(1.0, (sub.n_obs, n_extra)).astype(np.float32))
    X = sp.hstack([sub.X, extra], format="csr")
    var = pd.DataFrame(index=[*genes, *(f"extra{j}" for j in range(n_extra))])
    return ad.AnnData(X=X, obs=sub.obs.copy(), var=var)


def test_genes_aligned_by_name_sparsely(reference: scvae.ZINBVAE, query: ad.AnnData) -> None:
    aligned_query = _genes_subset(query, keep=45, n_extra=5)
    before = snapshot(aligned_query)
    _, data, overlap, _ = read_mapping_data(aligned_query, reference.setup)
    assert_adata_unchanged(aligned_query, before)
    assert (overlap.n_present, overlap.n_missing, overlap.n_extra) == (45, 5, 5)
    assert sp.isspmatrix_csr(data.X) and data.X.has_canonical_format
    expected = query[aligned_query.obs_names].to_df().reindex(columns=reference.var_names)
    missing = ~reference.var_names.isin(aligned_query.var_names)
    expected.loc[:, missing] = 0.0
    np.testing.assert_array_equal(data.X.toarray(), expected.to_numpy(dtype=np.float32))
    csc = aligned_query.copy()
    csc.X = sp.csc_matrix(csc.X)
    _, data_csc, _, _ = read_mapping_data(csc, reference.setup)
    assert (data_csc.X != data.X).nnz == 0
    mapped = reference.map_query(aligned_query, **MAP)
    assert mapped.training["n_genes_zero_filled"] == 5
    assert mapped.training["n_genes_dropped"] == 5
    assert mapped.get_latent(aligned_query).shape == (aligned_query.n_obs, 3)


def test_gene_overlap_thresholds(reference: scvae.ZINBVAE, query: ad.AnnData) -> None:
    assert 0 < MIN_GENE_OVERLAP < WARN_GENE_OVERLAP <= 1
    n = reference.setup.n_genes
    low = _genes_subset(query, keep=int(0.7 * n), n_extra=0)
    with pytest.warns(UserWarning, match="zero counts"):
        read_mapping_data(low, reference.setup)
    too_low = _genes_subset(query, keep=int(0.4 * n), n_extra=3)
    with pytest.raises(ValueError, match="MIN_GENE_OVERLAP"):
        reference.map_query(too_low, **MAP)
    none = query.copy()
    none.var_names = [f"other{j}" for j in range(none.n_vars)]
    with pytest.raises(ValueError, match="none of the model's"):
        reference.map_query(none, **MAP)
    duplicated = query.copy()
    duplicated.var_names = [*query.var_names[:-1], query.var_names[0]]
    with pytest.raises(ValueError, match="duplicate gene names"):
        reference.map_query(duplicated, **MAP)


# ---------------------------------------------------------------------------- bad queries
def test_bad_queries_fail_clearly(
    reference: scvae.ZINBVAE,
    query: ad.AnnData,
    reference_cells: ad.AnnData,
    tmp_path: pytest.TempPathFactory,
) -> None:
    with pytest.raises(ValueError, match="view"):
        reference.map_query(query[:50], **MAP)
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        with pytest.raises(ValueError, match="backed"):
            reference.map_query(backed, **MAP)
    finally:
        backed.file.close()
    with pytest.raises(ValueError, match="reference's cells"):
        reference.map_query(reference_cells.copy(), **MAP)
    some = ad.concat([query, reference_cells[:5]])
    with pytest.warns(UserWarning, match="5 of the"):
        reference.map_query(some, **MAP)
    no_batch = query.copy()
    del no_batch.obs["batch"]
    with pytest.raises(KeyError, match="batch_key='batch'"):
        reference.map_query(no_batch, **MAP)
    with pytest.raises(ValueError, match="new_row_init"):
        reference.map_query(query, new_row_init="random", **MAP)
    with pytest.raises(ValueError, match="batchnorm"):
        reference.map_query(query, batchnorm="update", **MAP)
    untrained = scvae.ZINBVAE(reference_cells, batch_key="batch", **SMALL)
    with pytest.raises(RuntimeError, match="not trained"):
        untrained.map_query(query, **MAP)


# ------------------------------------------------------------------ covariates and classes
def test_new_covariate_categories_get_rows(reference_cells: ad.AnnData, query: ad.AnnData) -> None:
    model = scvae.ZINBVAE(
        reference_cells,
        batch_key="batch",
        categorical_covariate_keys=["donor"],
        encode_covariates=True,
        **SMALL,
    ).fit(**FIT)
    mapped = model.map_query(query, **MAP)
    assert mapped.covariate_categories == {"donor": ["d1", "d2", "d3"]}
    assert mapped.training["n_new_categories"] == [1]
    assert np.array_equal(mapped.get_latent(reference_cells), model.get_latent(reference_cells))
    expr = mapped.get_normalized_expression(query, transform_covariates={"donor": "d3"})
    assert np.isfinite(expr.to_numpy()).all()


def test_reference_of_one_batch(reference_cells: ad.AnnData, query: ad.AnnData) -> None:
    one = reference_cells[reference_cells.obs["batch"] == "batch0"].copy()
    model = scvae.NBVAE(one, batch_key="batch", **SMALL).fit(**FIT)
    mapped = model.map_query(query, **MAP)
    assert mapped.batch_categories == ["batch0", "batch2"]
    assert np.array_equal(mapped.get_latent(one), model.get_latent(one))


@pytest.mark.parametrize(
    "make",
    [
        lambda a: scvae.NBVAE(a, batch_key="batch", **SMALL),
        lambda a: scvae.PoissonVAE(a, batch_key="batch", library="observed", **SMALL),
        lambda a: scvae.GaussianVAE(a, batch_key="batch", **SMALL),
        lambda a: scvae.GMVAE(a, n_components=2, batch_key="batch", **SMALL),
    ],
    ids=["NBVAE", "PoissonVAE", "GaussianVAE", "GMVAE"],
)
def test_every_vae_class_maps(
    make, reference_cells: ad.AnnData, query: ad.AnnData, tmp_path: pytest.TempPathFactory
) -> None:
    model = make(reference_cells)
    model.fit(**FIT)
    mapped = model.map_query(query, **MAP)
    assert type(mapped) is type(model)
    assert np.array_equal(mapped.get_latent(reference_cells), model.get_latent(reference_cells))
    latent = mapped.get_latent(query)
    assert latent.shape == (query.n_obs, 3) and np.isfinite(latent).all()
    assert np.isfinite(mapped.elbo(query)).all()
    mapped.save(tmp_path / "m")
    loaded = type(model).load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.get_latent(query), latent)
    if isinstance(model, scvae.GMVAE):
        assert mapped.predict(query).shape == (query.n_obs,)
