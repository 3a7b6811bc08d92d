"""The count VAEs end to end on simulated data: bounds, training, reproducibility, API."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import assert_adata_unchanged
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

import scvae


def test_elbo_below_iwae_and_iwae_rises_with_samples(trained, sim) -> None:
    elbo = trained.elbo(sim, n_samples=20)
    iwae = {k: trained.marginal_log_likelihood(sim, n_samples=k) for k in (1, 10, 100)}
    assert np.all(np.isfinite(elbo)) and elbo.shape == (sim.n_obs,)
    assert elbo.mean() <= iwae[10].mean() <= iwae[100].mean()
    # K=1 is an unbiased single-sample ELBO estimate: close to the averaged ELBO
    assert abs(iwae[1].mean() - elbo.mean()) < 0.05 * abs(elbo.mean())
    # the bound tightens as K grows: the paired per-cell gain is positive beyond its noise
    gain = iwae[100] - iwae[10]
    assert gain.mean() > 2 * gain.std() / np.sqrt(len(gain))


def test_training_improves_elbo_and_separates_clusters(trained, sim) -> None:
    h = trained.history
    assert {
        "train_elbo",
        "validation_elbo",
        "train_reconstruction",
        "train_kl_z",
        "kl_weight",
    } <= set(h.columns)
    assert h["train_elbo"].iloc[-5:].mean() > h["train_elbo"].iloc[:5].mean() + 50
    # the KL weight rises over the first tenth of the steps, then stays at 1
    assert h["kl_weight"].iloc[0] < 0.5 and h["kl_weight"].is_monotonic_increasing
    assert (h["kl_weight"].iloc[len(h) // 10 :] == 1.0).all()
    latent = trained.get_latent()
    assert latent.shape == (sim.n_obs, 4) and latent.dtype == np.float32
    labels = KMeans(3, n_init=10, random_state=0).fit_predict(latent)
    assert adjusted_rand_score(sim.obs["cluster"], labels) > 0.9


def test_same_seed_same_latent_and_other_seed_differs(sim) -> None:
    def fit(seed: int) -> np.ndarray:
        m = scvae.NBVAE(sim, n_latent=3, n_hidden=32)
        m.fit(max_epochs=3, seed=seed, progress_bar=False, early_stopping=False)
        return m.get_latent()

    a, b, c = fit(7), fit(7), fit(8)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_save_load_roundtrip(trained, sim, tmp_path) -> None:
    trained.save(tmp_path / "m")
    loaded = scvae.ZINBVAE.load(tmp_path / "m", adata=sim)
    np.testing.assert_array_equal(loaded.get_latent(), trained.get_latent())
    np.testing.assert_array_equal(
        loaded.marginal_log_likelihood(sim[:20], n_samples=5),
        trained.marginal_log_likelihood(sim[:20], n_samples=5),
    )
    assert loaded.history.equals(trained.history)
    np.testing.assert_array_equal(loaded.validation_indices, trained.validation_indices)
    without_data = scvae.ZINBVAE.load(tmp_path / "m")
    np.testing.assert_array_equal(without_data.get_latent(sim), trained.get_latent())
    with pytest.raises(ValueError, match="without its training AnnData"):
        without_data.get_latent()
    with pytest.raises(FileExistsError):
        trained.save(tmp_path / "m")
    with pytest.raises(ValueError, match="holds a ZINBVAE"):
        scvae.NBVAE.load(tmp_path / "m")


def test_query_new_cells_and_views(trained, sim) -> None:
    subset = sim[sim.obs["batch"] == "batch1"]
    np.testing.assert_allclose(
        trained.get_latent(subset),
        trained.get_latent()[np.flatnonzero(sim.obs["batch"] == "batch1")],
        rtol=1e-5,
        atol=1e-5,
    )
    fresh = scvae.datasets.simulate(n_cells=50, n_genes=120, n_clusters=3, n_batches=2, seed=9)
    assert trained.get_latent(fresh).shape == (50, 4)


def test_normalized_expression_and_batch_correction(trained, sim) -> None:
    expr = trained.get_normalized_expression(library_size=1e4)
    assert isinstance(expr, pd.DataFrame) and expr.shape == sim.shape
    assert list(expr.index) == list(sim.obs_names) and list(expr.columns) == list(sim.var_names)
    assert expr.dtypes.unique().tolist() == [np.float32]
    np.testing.assert_allclose(expr.sum(1), 1e4, rtol=1e-4)
    b0 = trained.get_normalized_expression(transform_batch="batch0")
    b1 = trained.get_normalized_expression(transform_batch="batch1")
    in0 = (sim.obs["batch"] == "batch0").to_numpy()
    np.testing.assert_allclose(b0[in0], expr[in0], rtol=1e-4, atol=1e-3)
    assert not np.allclose(b0, b1)
    both = trained.get_normalized_expression(transform_batch=["batch0", "batch1"])
    np.testing.assert_allclose(both, (b0 + b1) / 2, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="Unknown batch 'nope'"):
        trained.get_normalized_expression(transform_batch="nope")


def test_normalized_expression_options(trained, sim) -> None:
    genes = list(sim.var_names[[3, 0, 7]])
    full = trained.get_normalized_expression()
    subset = trained.get_normalized_expression(gene_list=genes, batch_size=7)
    assert list(subset.columns) == genes
    np.testing.assert_allclose(subset, full[genes], rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError, match="not trained on: 'nope'"):
        trained.get_normalized_expression(gene_list=["nope"])
    # several posterior draws average near the posterior-mean decoding, and are seeded
    drawn = trained.get_normalized_expression(n_samples=30, seed=1)
    again = trained.get_normalized_expression(n_samples=30, seed=1)
    pd.testing.assert_frame_equal(drawn, again)
    assert (
        np.corrcoef(np.log1p(drawn.to_numpy()).ravel(), np.log1p(full.to_numpy()).ravel())[0, 1]
        > 0.95
    )
    # the latent library: expected counts, totals near each cell's observed library
    counts = trained.get_normalized_expression(library_size="latent")
    observed = np.asarray(sim.X.sum(1)).ravel()
    ratio = counts.sum(1).to_numpy() / observed
    assert 0.5 < np.median(ratio) < 2.0
    with pytest.raises(ValueError, match="library_size must be a number or 'latent'"):
        trained.get_normalized_expression(library_size="observed")
    # written to a layer: every gene, nothing returned, nothing else changed
    adata = sim.copy()
    before = adata.copy()
    assert trained.get_normalized_expression(adata, layer="denoised") is None
    np.testing.assert_allclose(adata.layers["denoised"], full.to_numpy(), rtol=1e-5, atol=1e-5)
    del adata.layers["denoised"]
    assert_adata_unchanged(before, adata)
    with pytest.raises(ValueError, match="pass the adata"):
        trained.get_normalized_expression(layer="denoised")
    with pytest.raises(ValueError, match="is a view"):
        trained.get_normalized_expression(sim[:10], layer="denoised")


def test_sample_and_generate(trained, sim) -> None:
    x = trained.sample(sim[:30], n_samples=1, seed=3)
    assert x.shape == (30, sim.n_vars) and np.all(x >= 0) and np.all(x == np.round(x))
    np.testing.assert_array_equal(x, trained.sample(sim[:30], seed=3))
    assert trained.sample(sim[:30], n_samples=4).shape == (4, 30, sim.n_vars)
    gen = trained.generate(200, batch="batch1", seed=0)
    assert gen.shape == (200, sim.n_vars) and set(gen.obs["batch"]) == {"batch1"}
    totals = np.asarray(gen.X.sum(1)).ravel()
    observed = np.asarray(sim.X.sum(1)).ravel()
    assert 0.5 < np.median(totals) / np.median(observed) < 2.0


def test_write_latent_writes_exactly_its_keys(trained, sim) -> None:
    adata = sim.copy()
    before_obsm, before_uns = set(adata.obsm), set(adata.uns)
    trained.write_latent(adata, key_added="mine")
    assert set(adata.obsm) - before_obsm == {"X_mine"}
    assert set(adata.uns) - before_uns == {"mine"}
    params = adata.uns["mine"]["params"]
    assert (
        params["model"] == "ZINBVAE" and params["batch_key"] == "batch" and params["n_latent"] == 4
    )
    assert list(adata.obs.columns) == list(sim.obs.columns)
    with pytest.raises(ValueError, match="is a view"):
        trained.write_latent(adata[:10])


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (scvae.PoissonVAE, {}),
        (scvae.NBVAE, {"dispersion": "gene-batch"}),
        (scvae.ZINBVAE, {"dispersion": "gene-cell"}),
        (scvae.ZINBVAE, {"library": "observed"}),
    ],
)
def test_variants_train(cls, options, sim) -> None:
    model = cls(sim, batch_key="batch", n_latent=3, n_hidden=32, **options)
    model.fit(max_epochs=5, progress_bar=False)
    ll = model.marginal_log_likelihood(sim[:40], n_samples=8)
    assert np.all(np.isfinite(ll))
    assert np.all(ll <= 0)


def test_tl_function_scanpy_style(sim) -> None:
    adata = sim.copy()
    out = scvae.tl.nbvae(
        adata, n_latent=3, n_hidden=32, max_epochs=3, progress_bar=False, key_added="nb"
    )
    assert out is None and adata.obsm["X_nb"].shape == (adata.n_obs, 3)
    other = sim.copy()
    copied, model = scvae.tl.zinbvae(
        other, max_epochs=2, progress_bar=False, copy=True, return_model=True, n_hidden=16
    )
    assert "X_zinbvae" in copied.obsm and "X_zinbvae" not in other.obsm
    assert isinstance(model, scvae.ZINBVAE)


def test_divergence_gives_a_clear_message(sim) -> None:
    model = scvae.ZINBVAE(sim, n_hidden=16)
    with pytest.raises(scvae.TrainingDivergedError, match="lr=1e") as info:
        model.fit(max_epochs=20, lr=1e8, progress_bar=False, early_stopping=False)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert not model.is_trained


def test_gaussian_vae_on_log_normalized_counts(sim) -> None:
    import scanpy as sc

    model = scvae.GaussianVAE(sim, batch_key="batch", n_latent=4, n_hidden=64)
    model.fit(max_epochs=30, batch_size=64, progress_bar=False, early_stopping=False)
    h = model.history
    assert h["train_elbo"].iloc[-3:].mean() > h["train_elbo"].iloc[:3].mean()
    labels = KMeans(3, n_init=10, random_state=0).fit_predict(model.get_latent())
    assert adjusted_rand_score(sim.obs["cluster"], labels) > 0.8
    elbo, iwae = model.elbo(sim).mean(), model.marginal_log_likelihood(sim, n_samples=50).mean()
    assert np.isfinite(elbo) and elbo <= iwae
    # the inside transform equals scanpy's normalize_total(1e4) + log1p
    log_norm = sc.pp.log1p(sc.pp.normalize_total(sim, target_sum=1e4, copy=True), copy=True)
    given = sim.copy()
    given.layers["lognorm"] = log_norm.X
    as_is = scvae.GaussianVAE(given, layer="lognorm", log_normalize=False, n_latent=4)
    np.testing.assert_allclose(
        as_is._data.X.toarray(), model._data.X.toarray(), rtol=1e-5, atol=1e-6
    )
    expr = model.get_normalized_expression()
    assert expr.shape == sim.shape and np.all(np.isfinite(expr))


def test_gaussian_vae_save_load_and_tl(sim, tmp_path) -> None:
    adata = sim.copy()
    model = scvae.tl.gaussianvae(
        adata, n_latent=3, n_hidden=32, max_epochs=3, progress_bar=False, return_model=True
    )
    assert adata.obsm["X_gaussianvae"].shape == (adata.n_obs, 3)
    model.save(tmp_path / "g")
    loaded = scvae.GaussianVAE.load(tmp_path / "g", adata=sim)
    np.testing.assert_array_equal(loaded.get_latent(), model.get_latent())
