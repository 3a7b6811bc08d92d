"""Covariates beyond the batch (scVI's categorical and continuous covariates).

They enter every decoder layer (and, with ``encode_covariates``, every encoder layer) as
``sum_j E_j[c_j] + u V``; the AnnData boundary validates and standardizes them; they are saved,
loaded and queried; ``transform_covariates`` decodes under chosen values. A model without them
computes exactly what it computed before they existed.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from helpers import assert_adata_unchanged, snapshot

import scvae
from scvae.data import CovariateSetup, DataSetup, read_query_data, read_training_data
from scvae.minibatch import Covariates, CSRMinibatches, Minibatch
from scvae.models._vae_config import VAEConfig
from scvae.module.vae import VAEModule
from scvae.nn import CovariateLinear, CovariateSizes

FIT = {"max_epochs": 3, "batch_size": 32, "seed": 0, "progress_bar": False}
SMALL = {"n_latent": 3, "n_hidden": 16}
KEYS = {"categorical_covariate_keys": ["donor"], "continuous_covariate_keys": ["pct_mt"]}


def _with_covariates(adata: ad.AnnData, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    adata = adata.copy()
    adata.obs["donor"] = pd.Categorical(rng.choice(["d1", "d2", "d3"], adata.n_obs))
    adata.obs["pct_mt"] = rng.normal(5.0, 2.0, adata.n_obs)
    adata.obs["chemistry"] = rng.choice([2, 3], adata.n_obs)  # integer labels
    return adata


@pytest.fixture(scope="module")
def cells() -> ad.AnnData:
    """120 cells x 40 genes, 2 batches, with a donor, a chemistry and a pct_mt column."""
    sim = scvae.datasets.simulate(n_cells=120, n_genes=40, n_clusters=2, n_batches=2, seed=3)
    return _with_covariates(sim)


@pytest.fixture(scope="module")
def fitted(cells: ad.AnnData) -> scvae.ZINBVAE:
    model = scvae.ZINBVAE(cells, batch_key="batch", **KEYS, **SMALL)
    return model.fit(**FIT)


def _continuous_effect_data(n_cells: int = 300, n_genes: int = 40, seed: int = 0) -> ad.AnnData:
    """Poisson counts of two cell types whose proportions also shift strongly with an observed
    ``pct_mt``: a one-dimensional latent cannot hold both, the covariate frees it."""
    rng = np.random.default_rng(seed)
    u = rng.normal(5.0, 2.0, n_cells)
    cell_type = rng.integers(0, 2, n_cells)
    logits = (
        rng.normal(0, 1, n_genes)
        + np.outer((u - 5.0) / 2.0, rng.normal(0, 1, n_genes))
        + np.outer(cell_type, rng.normal(0, 1.5, n_genes))
    )
    rho = np.exp(logits)
    rho /= rho.sum(1, keepdims=True)
    x = rng.poisson(rho * 1000).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(x))
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    adata.var_names = [f"gene{j}" for j in range(n_genes)]
    adata.obs["pct_mt"] = u
    return adata


# ----------------------------------------------------------------------- the layers, module
def test_covariate_linear_adds_embeddings_and_continuous_map() -> None:
    torch.manual_seed(0)
    layer = CovariateLinear(5, 4, n_batch=2, covariates=CovariateSizes((3, 2), 2))
    for embedding in layer.covariate_embeddings:
        assert torch.count_nonzero(embedding.weight) == 0  # zero-initialised, like the batch
    assert torch.count_nonzero(layer.continuous_weight) == 0
    with torch.no_grad():
        for embedding in layer.covariate_embeddings:
            embedding.weight.normal_()
        layer.continuous_weight.normal_()
    h, b = torch.randn(6, 5), torch.tensor([0, 1, 0, 1, 0, 1])
    cat = torch.tensor([[0, 1], [2, 0], [1, 1], [0, 0], [2, 1], [1, 0]])
    cont = torch.randn(6, 2)
    out = layer(h, b, Covariates(cat, cont))
    expected = (
        h @ layer.weight
        + layer.bias
        + layer.batch_embedding(b)
        + layer.covariate_embeddings[0].weight[cat[:, 0]]
        + layer.covariate_embeddings[1].weight[cat[:, 1]]
        + cont @ layer.continuous_weight
    )
    torch.testing.assert_close(out, expected)


def test_covariate_linear_refuses_the_wrong_covariates() -> None:
    layer = CovariateLinear(5, 4, n_batch=1, covariates=CovariateSizes((3,), 0))
    h, b = torch.randn(2, 5), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="built for 1 categorical and 0 continuous"):
        layer(h, b)
    with pytest.raises(ValueError, match="got 1 categorical and 1 continuous"):
        layer(h, b, Covariates(torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 1)))
    plain = CovariateLinear(5, 4, n_batch=1)
    assert plain.covariate_embeddings is None and plain.continuous_weight is None
    with pytest.raises(ValueError, match="built for 0 categorical"):
        plain(h, b, Covariates(torch.zeros(2, 1, dtype=torch.int64)))


def _module(**kwargs) -> VAEModule:
    torch.manual_seed(0)
    return VAEModule(30, 2, torch.full((2,), 6.0), torch.ones(2), n_latent=3, n_hidden=8, **kwargs)


def test_covariates_draw_no_random_numbers_and_start_as_the_plain_module() -> None:
    """Created at zero and without RNG draws: the parameters shared with a module without
    covariates are the same, in the same order, and the covariates start without effect."""
    plain = _module()
    with_cov = _module(n_cats_per_cov=(3,), n_continuous_cov=2, encode_covariates=True)
    plain_state = plain.state_dict()
    shared = [k for k in with_cov.state_dict() if k in plain_state]
    assert shared == list(plain_state)
    for key in shared:
        torch.testing.assert_close(with_cov.state_dict()[key], plain_state[key], rtol=0, atol=0)
    z = torch.randn(4, 3)
    b = torch.tensor([0, 1, 1, 0])
    cov = Covariates(torch.tensor([[0], [1], [2], [1]]), torch.randn(4, 2))
    torch.testing.assert_close(
        with_cov.eval().decode(z, b, cov).location, plain.eval().decode(z, b).location
    )


def test_encode_covariates_puts_them_in_the_encoders_only_when_asked() -> None:
    decoder_only = _module(n_cats_per_cov=(3,), n_continuous_cov=1)
    both = _module(n_cats_per_cov=(3,), n_continuous_cov=1, encode_covariates=True)

    def layers(module, part):
        return [m for m in getattr(module, part).modules() if isinstance(m, CovariateLinear)]

    assert all(layer.covariate_embeddings is not None for layer in layers(decoder_only, "decoder"))
    assert all(layer.covariate_embeddings is None for layer in layers(decoder_only, "z_encoder"))
    assert all(layer.continuous_weight is not None for layer in layers(both, "z_encoder"))
    assert all(layer.continuous_weight is not None for layer in layers(both, "l_encoder"))


def test_decode_expands_covariates_over_a_leading_sample_dimension() -> None:
    module = _module(n_cats_per_cov=(3,), n_continuous_cov=1).eval()
    with torch.no_grad():
        for p in module.decoder.parameters():
            p.add_(0.1 * torch.randn_like(p))  # the covariate weights off zero
    z = torch.randn(2, 4, 3)  # (K, N, L)
    b = torch.tensor([0, 1, 1, 0])
    cov = Covariates(torch.tensor([[0], [1], [2], [1]]), torch.randn(4, 1))
    both = module.decode(z, b, cov).location  # (K, N, G)
    assert both.shape == (2, 4, 30)
    for k in range(2):
        torch.testing.assert_close(both[k], module.decode(z[k], b, cov).location)
    denoised = module.denoised(z, b, library_size=1.0, covariates=cov)
    torch.testing.assert_close(denoised.sum(-1), torch.ones(2, 4))


def test_sparse_input_with_covariates_equals_the_dense_product() -> None:
    module = _module(n_cats_per_cov=(3,), n_continuous_cov=1, encode_covariates=True).eval()
    with torch.no_grad():
        for p in module.z_encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.poisson(torch.full((5, 30), 0.3))
    x[:, 0] += 1.0  # no empty cell
    cov = Covariates(torch.tensor([[0], [1], [2], [1], [0]]), torch.randn(5, 1))
    batch = Minibatch.from_dense(x, torch.tensor([0, 1, 0, 1, 1]), covariates=cov)
    dense = module.encode(batch)[0].loc
    module.sparse_input = True
    torch.testing.assert_close(module.encode(batch)[0].loc, dense, rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_covariate_weights(cells: ad.AnnData) -> None:
    _, data = read_training_data(cells, layer=None, batch_key="batch", **KEYS)
    torch.manual_seed(0)
    module = VAEModule(
        40, 2, torch.full((2,), 7.0), torch.ones(2), n_latent=3, n_hidden=8,
        n_cats_per_cov=(3,), n_continuous_cov=1, encode_covariates=True,
    )  # fmt: skip
    batch = next(iter(CSRMinibatches(data, np.arange(32), batch_size=32, shuffle=False)))
    module.loss(batch).loss.backward()
    for part in (module.decoder, module.z_encoder):
        first = part.mlp.layers[0]
        assert first.covariate_embeddings[0].weight.grad.abs().sum() > 0
        assert first.continuous_weight.grad.abs().sum() > 0


def test_minibatches_carry_the_covariates_of_their_cells(cells: ad.AnnData) -> None:
    _, data = read_training_data(cells, layer=None, batch_key="batch", **KEYS)
    rows = np.array([5, 2, 77, 100])
    loader = CSRMinibatches(data, rows, batch_size=4, shuffle=False)
    batch = next(iter(loader))
    np.testing.assert_array_equal(
        batch.covariates.categorical.numpy(), data.categorical_covariates[rows]
    )
    np.testing.assert_array_equal(
        batch.covariates.continuous.numpy(), data.continuous_covariates[rows]
    )
    moved = Minibatch.to(batch, "cpu")
    assert moved.covariates.categorical.dtype == torch.int64
    assert loader.nbytes > CSRMinibatches(
        read_training_data(cells, layer=None, batch_key="batch")[1], rows, batch_size=4,
        shuffle=False,
    ).nbytes  # fmt: skip


# --------------------------------------------------------------------------- the boundary
def test_boundary_reads_codes_in_sorted_order_and_standardizes(cells: ad.AnnData) -> None:
    setup, data = read_training_data(
        cells,
        layer=None,
        batch_key="batch",
        categorical_covariate_keys=["donor", "chemistry"],
        continuous_covariate_keys="pct_mt",  # one key as a string
    )
    cov = setup.covariates
    assert cov.categorical_keys == ("donor", "chemistry")
    assert cov.categories == (("d1", "d2", "d3"), ("2", "3"))
    np.testing.assert_array_equal(
        data.categorical_covariates[:, 0], pd.Categorical(cells.obs["donor"]).codes
    )
    u = cells.obs["pct_mt"].to_numpy()
    assert cov.means == pytest.approx((u.mean(),)) and cov.sds == pytest.approx((u.std(),))
    np.testing.assert_allclose(
        data.continuous_covariates[:, 0], (u - u.mean()) / u.std(), rtol=1e-5
    )
    assert data.continuous_covariates.dtype == np.float32
    assert DataSetup.from_dict(json.loads(json.dumps(setup.to_dict()))) == setup


def test_query_standardizes_with_the_training_statistics(cells: ad.AnnData) -> None:
    setup, _ = read_training_data(cells, layer=None, batch_key="batch", **KEYS)
    query = cells[:10].copy()
    query.obs["pct_mt"] = 7.0  # constant is fine at query time
    data = read_query_data(query, setup)
    expected = (7.0 - setup.covariates.means[0]) / setup.covariates.sds[0]
    np.testing.assert_allclose(data.continuous_covariates[:, 0], expected, rtol=1e-6)


def test_setups_saved_before_covariates_still_load() -> None:
    old = {"layer": None, "batch_key": None, "batch_categories": ["0"], "var_names": ["a", "b"]}
    setup = DataSetup.from_dict(old)
    assert setup.covariates == CovariateSetup() and not setup.covariates
    assert VAEConfig.from_dict({"n_latent": 4}).encode_covariates is False


CAT, CONT = "categorical_covariate_keys", "continuous_covariate_keys"


@pytest.mark.parametrize(
    ("change", "keys", "error", "match"),
    [
        (None, {CAT: ["nope"]}, KeyError, r"'nope' is not a column.*'donor'"),
        (None, {CONT: ["nope"]}, KeyError, r"Columns present: .*'pct_mt'"),
        ("nan_donor", {CAT: ["donor"]}, ValueError, r"\(NaN/None\) in 3 of 120 cells"),
        ("nan_mt", {CONT: ["pct_mt"]}, ValueError, r"'pct_mt'.*in 2 of 120 cells.*Fill them"),
        ("inf_mt", {CONT: ["pct_mt"]}, ValueError, "infinite values in 1 of 120"),
        ("text_mt", {CONT: ["pct_mt"]}, ValueError, "must be numeric.*pd.to_numeric"),
        ("one_donor", {CAT: ["donor"]}, ValueError, "constant covariate carries no"),
        ("flat_mt", {CONT: ["pct_mt"]}, ValueError, "is constant .*carries no information"),
        (None, {CAT: ["donor", "donor"]}, ValueError, "more than once"),
        (None, {CAT: ["donor"], CONT: ["donor"]}, ValueError, "more than once"),
        (None, {CAT: ["batch"]}, ValueError, "is the batch_key"),
        (None, {CONT: [3]}, TypeError, "obs column names"),
    ],
)
def test_bad_covariates_fail_clearly_and_leave_adata_unchanged(
    cells: ad.AnnData, change, keys, error, match
) -> None:
    adata = cells.copy()
    if change == "nan_donor":
        adata.obs.loc[adata.obs_names[:3], "donor"] = np.nan
    elif change == "nan_mt":
        adata.obs.loc[adata.obs_names[:2], "pct_mt"] = np.nan
    elif change == "inf_mt":
        adata.obs.loc[adata.obs_names[0], "pct_mt"] = np.inf
    elif change == "text_mt":
        adata.obs["pct_mt"] = adata.obs["pct_mt"].astype(str)
    elif change == "one_donor":
        adata.obs["donor"] = pd.Categorical(["d1"] * adata.n_obs, categories=["d1", "d2"])
    elif change == "flat_mt":
        adata.obs["pct_mt"] = 4.0
    before = snapshot(adata)
    for cls in (scvae.ZINBVAE, scvae.GaussianVAE):
        with pytest.raises(error, match=match):
            cls(adata, batch_key="batch", **keys)
    assert_adata_unchanged(before, adata)


def test_query_with_unseen_category_or_missing_column_errors(fitted, cells) -> None:
    query = cells[:20].copy()
    query.obs["donor"] = query.obs["donor"].astype(str)
    query.obs.loc[query.obs_names[0], "donor"] = "d9"
    before = snapshot(query)
    with pytest.raises(
        ValueError, match=r"unseen in training: 'd9'. The model knows 'd1', 'd2', 'd3'"
    ):
        fitted.get_latent(query)
    with pytest.raises(ValueError, match="unseen in training"):
        fitted.write_latent(query)
    assert_adata_unchanged(before, query)
    known = cells[:20].copy()
    missing = known.copy()
    del missing.obs["pct_mt"]
    with pytest.raises(KeyError, match="'pct_mt' is not a column"):
        fitted.get_latent(missing)
    np.testing.assert_allclose(fitted.get_latent(known), fitted.get_latent()[:20], atol=1e-6)


# ----------------------------------------------------------------------------- the models
def test_a_strong_continuous_effect_is_fitted_better_with_the_covariate() -> None:
    adata = _continuous_effect_data()
    options = {"max_epochs": 30, "batch_size": 64, "seed": 0, "progress_bar": False}
    elbo = {}
    for keys in (None, ["pct_mt"]):
        model = scvae.PoissonVAE(adata, continuous_covariate_keys=keys, n_latent=1, n_hidden=16)
        model.fit(early_stopping=False, train_size=1.0, **options)
        elbo[keys is not None] = model.elbo(n_samples=3).mean()
    assert elbo[True] > elbo[False] + 50.0, elbo  # 115 nats/cell when written


@pytest.mark.parametrize("encode", [False, True])
@pytest.mark.parametrize("cls", [scvae.ZINBVAE, scvae.NBVAE, scvae.PoissonVAE, scvae.GaussianVAE])
def test_save_load_round_trip_is_identical(cls, encode, cells, tmp_path) -> None:
    model = cls(cells, batch_key="batch", encode_covariates=encode, **KEYS, **SMALL)
    model.fit(**FIT)
    z = model.get_latent()
    expression = model.get_normalized_expression()
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["setup"]["covariates"]["categorical_keys"] == ["donor"]
    assert meta["config"]["encode_covariates"] is encode
    loaded = cls.load(tmp_path / "m", cells)
    assert loaded.setup == model.setup and loaded.config == model.config
    np.testing.assert_array_equal(loaded.get_latent(), z)
    pd.testing.assert_frame_equal(loaded.get_normalized_expression(), expression)
    np.testing.assert_array_equal(cls.load(tmp_path / "m").get_latent(cells), z)


def test_gmvae_with_covariates_fits_predicts_and_loads(cells, tmp_path) -> None:
    model = scvae.GMVAE(cells, n_components=2, batch_key="batch", **KEYS, **SMALL)
    model.fit(n_epochs_pretrain=2, **FIT)
    labels = model.predict()
    assert labels.shape == (cells.n_obs,)
    model.save(tmp_path / "g")
    loaded = scvae.GMVAE.load(tmp_path / "g", cells)
    np.testing.assert_array_equal(loaded.predict(), labels)
    np.testing.assert_array_equal(loaded.get_latent(), model.get_latent())
    assert "covariates ['donor', 'pct_mt']" in repr(model)


def test_transform_covariates_decodes_under_the_given_values(fitted, cells) -> None:
    own = fitted.get_normalized_expression()
    as_d2 = fitted.get_normalized_expression(transform_covariates={"donor": "d2"})
    high_mt = fitted.get_normalized_expression(transform_covariates={"pct_mt": 12.0})
    assert not np.allclose(own.values, as_d2.values)
    assert not np.allclose(own.values, high_mt.values)
    d2 = (cells.obs["donor"] == "d2").to_numpy()
    np.testing.assert_allclose(as_d2.values[d2], own.values[d2], rtol=1e-5)  # already d2
    np.testing.assert_allclose(
        fitted.get_normalized_expression(transform_covariates={}).values, own.values
    )


def test_decode_covariates_replaces_only_the_named_ones(fitted) -> None:
    data = fitted._require_training_data()
    batch = next(fitted._minibatches(data, 16))
    mean, sd = fitted.setup.covariates.means[0], fitted.setup.covariates.sds[0]
    cov = fitted._decode_covariates(batch, {"pct_mt": mean + 2 * sd})
    torch.testing.assert_close(cov.continuous, torch.full((16, 1), 2.0))
    torch.testing.assert_close(cov.categorical, batch.covariates.categorical)
    cov = fitted._decode_covariates(batch, {"donor": "d3"})
    assert (cov.categorical == 2).all()
    torch.testing.assert_close(cov.continuous, batch.covariates.continuous)
    assert fitted._decode_covariates(batch, None) is batch.covariates


@pytest.mark.parametrize(
    ("values", "error", "match"),
    [
        ({"age": 3}, KeyError, r"'age' is not a covariate.*its covariates are 'donor', 'pct_mt'"),
        ({"batch": "batch0"}, KeyError, "transform_batch"),
        ({"donor": "d7"}, ValueError, r"Unknown category 'd7' .*'d1', 'd2', 'd3'"),
        ({"pct_mt": "high"}, TypeError, "takes a number"),
        ({"pct_mt": float("nan")}, ValueError, "finite number"),
        (["donor"], TypeError, "must be a dict"),
    ],
)  # fmt: skip
def test_transform_covariates_validates_before_any_work(fitted, cells, values, error, match):
    adata = cells.copy()
    before = snapshot(adata)
    with pytest.raises(error, match=match):
        fitted.get_normalized_expression(adata, transform_covariates=values, layer="denoised")
    assert_adata_unchanged(before, adata)


def test_transform_covariates_on_a_model_without_any(cells) -> None:
    model = scvae.ZINBVAE(cells, **SMALL).fit(**FIT)
    with pytest.raises(KeyError, match="it has none beyond the batch"):
        model.get_normalized_expression(transform_covariates={"donor": "d1"})


def test_generate_and_sample_with_covariates(fitted) -> None:
    out = fitted.generate(6, covariates={"donor": "d3", "pct_mt": 9.0}, seed=1)
    assert list(out.obs["donor"]) == ["d3"] * 6
    np.testing.assert_allclose(out.obs["pct_mt"], 9.0)
    default = fitted.generate(3)
    assert list(default.obs["donor"]) == ["d1"] * 3
    np.testing.assert_allclose(default.obs["pct_mt"], fitted.setup.covariates.means[0])
    assert fitted.sample(n_samples=2).shape == (2, 120, 40)
    assert np.isfinite(fitted.marginal_log_likelihood(n_samples=4)).all()


def test_params_record_the_covariate_options(fitted, cells) -> None:
    params = fitted.uns_params()
    assert params["categorical_covariate_keys"] == ["donor"]
    assert params["continuous_covariate_keys"] == ["pct_mt"]
    assert params["encode_covariates"] is False
    adata = cells.copy()
    scvae.tl.nbvae(adata, batch_key="batch", encode_covariates=True, **KEYS, **SMALL, **FIT)
    recorded = adata.uns["nbvae"]["params"]
    assert recorded["continuous_covariate_keys"] == ["pct_mt"]
    assert recorded["encode_covariates"] is True
    assert "categorical_covariate_keys" not in scvae.ZINBVAE(cells, **SMALL).uns_params()


# ------------------------------------------------------------- no covariates: as at 437f752
#: get_latent()[:2] and sum(|get_latent()|) of seeded 3-epoch fits computed at 437f752, the
#: commit before covariates existed (CPU, one thread)
REFERENCE = {
    "ZINBVAE": (
        [[-0.7695345282554626, -0.22336116433143616, -0.2804601788520813],
         [-0.47967660427093506, -0.5223871469497681, 0.29060786962509155]],
        151.64678955078125,
    ),
    "GaussianVAE": (
        [[-0.5752235054969788, -0.48749759793281555, 0.045195192098617554],
         [-0.4822182059288025, -0.8321001529693604, 0.3336429297924042]],
        149.99209594726562,
    ),
    "GMVAE": (
        [[-0.802212655544281, -0.23827311396598816, -0.25300395488739014],
         [-0.45111367106437683, -0.4648507535457611, 0.28830111026763916]],
        158.25726318359375,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(REFERENCE))
def test_models_without_covariates_compute_as_before(name: str) -> None:
    torch.set_num_threads(1)
    adata = scvae.datasets.simulate(n_cells=120, n_genes=40, n_clusters=2, n_batches=2, seed=3)
    cls = getattr(scvae, name)
    extra = {"n_components": 2} if name == "GMVAE" else {}
    model = cls(adata, batch_key="batch", n_latent=3, n_hidden=16, **extra)
    if name == "GMVAE":
        model.fit(max_epochs=2, n_epochs_pretrain=2, batch_size=32, seed=5, progress_bar=False)
    else:
        model.fit(max_epochs=3, batch_size=32, seed=5, progress_bar=False)
    z = model.get_latent()
    rows, total = REFERENCE[name]
    np.testing.assert_allclose(z[:2], np.array(rows, dtype=np.float32), rtol=0, atol=1e-6)
    assert float(np.abs(z).sum()) == pytest.approx(total, abs=1e-4)


def test_models_saved_before_covariates_still_load(cells, tmp_path) -> None:
    model = scvae.ZINBVAE(cells, batch_key="batch", **SMALL).fit(**FIT)
    model.save(tmp_path / "m")
    path = tmp_path / "m" / "model.json"
    meta = json.loads(path.read_text())
    del meta["setup"]["covariates"], meta["config"]["encode_covariates"]  # as older scvae wrote
    path.write_text(json.dumps(meta))
    loaded = scvae.ZINBVAE.load(tmp_path / "m", cells)
    assert not loaded.setup.covariates
    np.testing.assert_array_equal(loaded.get_latent(), model.get_latent())
