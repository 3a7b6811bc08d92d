"""SSVAE: the two bounds, predictions, FSVAE draws, warm start, calibration, slots, refusals."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import assert_adata_unchanged, snapshot

import scvae
import scvae.models
from scvae.minibatch import CSRMinibatches, Minibatch
from scvae.models._ssvae import (
    ALPHA_0,
    UNCERTAIN,
    LabelledCellData,
    _softmax,
    expected_calibration_error,
)
from scvae.module.ssvae import SSVAEModule

FIT = {"max_epochs": 40, "batch_size": 64, "progress_bar": False, "seed": 0}


def _hide(adata, fraction: float, seed: int = 0) -> np.ndarray:
    """Put ``obs["labels"]`` = the clusters, with ``fraction`` of them "Unknown"; the mask."""
    truth = adata.obs["cluster"].astype(str).to_numpy()
    hidden = np.random.default_rng(seed).random(adata.n_obs) < fraction
    labels = truth.astype(object)
    labels[hidden] = "Unknown"
    adata.obs["labels"] = pd.Categorical(labels)
    return hidden


@pytest.fixture(scope="module")
def labelled():
    """300 cells x 100 genes, 3 clusters, 2 batches; half of the labels hidden."""
    adata = scvae.datasets.simulate(n_cells=300, n_genes=100, n_clusters=3, n_batches=2, seed=3)
    adata.uns["hidden"] = _hide(adata, 0.5)
    return adata


@pytest.fixture(scope="module")
def fitted(labelled):
    model = scvae.SSVAE(labelled, labels_key="labels", batch_key="batch", n_latent=4, n_hidden=64)
    return model.fit(train_size=0.8, **FIT)


# ------------------------------------------------------------------------------ objective
def _module(c: int = 3) -> tuple[SSVAEModule, Minibatch]:
    torch.manual_seed(0)
    module = SSVAEModule(
        12, 1, torch.full((1,), 3.0), torch.ones(1), n_labels=c, n_latent=3, n_hidden=16,
        log_pi=torch.log(torch.tensor([0.5, 0.3, 0.2])), alpha=2.5,
    )  # fmt: skip
    x = torch.poisson(torch.full((8, 12), 2.0))
    x[:, 0] += 1.0  # no empty cell
    return module.eval(), Minibatch.from_dense(x, torch.zeros(8, dtype=torch.int64))


def _with(batch: Minibatch, labels: torch.Tensor | None) -> Minibatch:
    return Minibatch(batch.x, batch.batch_index, batch.nz, labels=labels)


@torch.no_grad()
def test_unlabelled_bound_is_the_q_weighted_labelled_bounds_plus_entropy() -> None:
    module, batch = _module()
    n, c = batch.n_cells, module.n_labels
    torch.manual_seed(1)
    unlabelled = module.loss(_with(batch, torch.full((n,), -1))).elbo.double()
    torch.manual_seed(1)
    no_labels = module.loss(_with(batch, None)).elbo.double()
    bounds = []
    for y in range(c):  # the same random numbers: the bounds share z1, l and the z2 draws
        torch.manual_seed(1)
        bounds.append(module.loss(_with(batch, torch.full((n,), y))).elbo.double())
    bounds = torch.stack(bounds, -1)  # (N, C) L(x, y)
    qz, _ = module.encode(batch)
    q = torch.softmax(module.classifier(qz.loc), -1).double()  # (N, C) q(y | x)
    entropy = -(q * torch.log(q)).sum(-1)
    expected = (q * bounds).sum(-1) + entropy
    np.testing.assert_allclose(unlabelled.numpy(), expected.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(no_labels.numpy(), unlabelled.numpy(), rtol=1e-6)
    # U(x) <= max_y L(x, y) + log C, and each L(x, y) differs: the labels matter
    assert torch.all(unlabelled <= bounds.max(-1).values + np.log(c) + 1e-4)
    assert torch.all(bounds.std(-1) > 0)


@torch.no_grad()
def test_loss_adds_alpha_log_q_for_the_labelled_cells_only() -> None:
    module, batch = _module()
    labels = torch.tensor([0, 1, 2, -1, -1, 0, -1, 2])
    torch.manual_seed(2)
    out = module.loss(_with(batch, labels))
    qz, _ = module.encode(batch)
    log_q = torch.log_softmax(module.classifier(qz.loc), -1)
    known = labels >= 0
    log_q_obs = torch.where(known, log_q.gather(-1, labels.clamp_min(0)[:, None])[:, 0], 0.0)
    expected = torch.mean(-out.elbo - module.alpha * log_q_obs)
    np.testing.assert_allclose(float(out.loss), float(expected), rtol=1e-5)
    # the label prior enters L(x, y) as log pi_y: a uniform prior changes the labelled bound
    assert module.log_pi.exp().sum().item() == pytest.approx(1.0)


def test_minibatches_slice_the_labels(labelled) -> None:
    model = scvae.SSVAE(labelled, labels_key="labels", n_latent=2, n_hidden=8)
    data = model._require_training_data()
    assert isinstance(data, LabelledCellData)
    rows = np.array([5, 0, 17, 200])
    batch = next(iter(CSRMinibatches(data, rows, batch_size=4, shuffle=False)))
    np.testing.assert_array_equal(batch.labels.numpy(), data.labels[rows])
    explicit = CSRMinibatches(data, rows, batch_size=4, shuffle=False, labels=data.labels * 0)
    assert next(iter(explicit)).labels.tolist() == [0, 0, 0, 0]
    plain = scvae.ZINBVAE(labelled)._require_training_data()  # no labels: as before
    assert next(iter(CSRMinibatches(plain, rows, batch_size=4, shuffle=False))).labels is None
    with pytest.raises(ValueError, match="labels must be"):
        CSRMinibatches(plain, rows, batch_size=4, shuffle=False, labels=np.zeros(3, np.int64))


# ----------------------------------------------------------------------------- the model
def test_hidden_labels_are_predicted_well_above_chance(fitted, labelled) -> None:
    hidden = labelled.uns["hidden"]
    truth = labelled.obs["cluster"].astype(str).to_numpy()
    labels = fitted.predict()
    assert labels.dtype == object and labels.shape == (labelled.n_obs,)
    assert (labels[hidden] == truth[hidden]).mean() > 0.9  # chance: 1/3
    assert fitted.label_categories == ["0", "1", "2"]
    assert fitted.alpha == pytest.approx(ALPHA_0 * labelled.n_obs / (~hidden).sum())


def test_elbo_is_below_iwae_and_labels_tighten_it(fitted, labelled) -> None:
    elbo = fitted.elbo(n_samples=5)
    iwae = fitted.marginal_log_likelihood(n_samples=50)
    assert np.isfinite(elbo).all() and elbo.mean() <= iwae.mean()
    joint = fitted.elbo(n_samples=5, observed_labels=True)  # L(x, y) for the labelled cells
    hidden = labelled.uns["hidden"]
    np.testing.assert_allclose(joint[hidden], elbo[hidden], rtol=1e-6)  # U(x) for the rest


def test_fsvae_generates_cells_of_the_requested_label(labelled) -> None:
    full = labelled.copy()
    full.obs["labels"] = full.obs["cluster"].astype(str)  # every cell labelled: the FSVAE
    model = scvae.SSVAE(full, labels_key="labels", batch_key="batch", n_latent=4, n_hidden=64)
    model.fit(**{**FIT, "max_epochs": 60})
    for label in model.label_categories:
        cells = model.generate(150, label=label, batch="batch1", seed=1)
        assert list(cells.obs["label"].unique()) == [label]
        assert (cells.obs["batch"] == "batch1").all()
        assert (model.predict(cells) == label).mean() > 0.6, label
    mixed = model.generate(20, label=["0", "1"] * 10)
    assert list(mixed.obs["label"][:4]) == ["0", "1", "0", "1"]
    with pytest.raises(ValueError, match="does not know"):
        model.generate(5, label="nope")


def test_from_vae_copies_the_count_networks_exactly(trained, sim) -> None:
    adata = sim.copy()
    _hide(adata, 0.5)
    before = snapshot(adata)
    model = scvae.SSVAE.from_vae(trained, adata, labels_key="labels")
    vae_state = trained.module.state_dict()
    state = model.module.state_dict()
    shared = set(vae_state) & set(state)
    assert shared == set(vae_state)
    assert set(state) - shared == {
        k for k in state if k.startswith(("classifier.", "z2_encoder.", "z1_decoder.", "log_pi"))
    }
    for name in vae_state:
        torch.testing.assert_close(state[name].cpu(), vae_state[name].cpu(), rtol=0, atol=0)
    np.testing.assert_array_equal(model.get_latent(adata), trained.get_latent(adata))
    model.fit(max_epochs=3, batch_size=64, progress_bar=False)
    assert model.training["warm_start"] == "ZINBVAE"
    assert_adata_unchanged(before, adata)
    with pytest.raises(TypeError, match="ZINBVAE, NBVAE or PoissonVAE"):
        scvae.SSVAE.from_vae(scvae.GMVAE(sim), adata, labels_key="labels")


def test_save_load_gives_identical_predictions(fitted, labelled, tmp_path) -> None:
    fitted.save(tmp_path / "m")
    loaded = scvae.SSVAE.load(tmp_path / "m", adata=labelled)
    pd.testing.assert_frame_equal(loaded.predict(soft=True), fitted.predict(soft=True))
    assert loaded.calibration == fitted.calibration and loaded.alpha == fitted.alpha
    np.testing.assert_array_equal(
        loaded.predict(keep_observed=True), fitted.predict(keep_observed=True)
    )
    bare = scvae.models.VAEModel.load(tmp_path / "m")  # the registry gives the SSVAE
    assert isinstance(bare, scvae.SSVAE)
    np.testing.assert_array_equal(bare.predict(labelled[:50]), fitted.predict(labelled[:50]))


def test_calibration_keeps_or_reduces_the_ece_on_held_out_cells(fitted, labelled) -> None:
    cal = fitted.calibration
    assert cal["fitted"] and cal["n_cells"] >= 20 and cal["temperature"] > 0
    assert cal["nll_after"] <= cal["nll_before"] + 1e-9  # T minimizes the validation NLL
    hidden = labelled.uns["hidden"]
    y = labelled.obs["cluster"].astype(int).to_numpy()[hidden]
    logits = fitted._logits(fitted._require_training_data())[hidden]
    before = expected_calibration_error(_softmax(logits), y)
    after = expected_calibration_error(fitted.predict(soft=True).to_numpy()[hidden], y)
    assert after <= before + 0.02, (before, after)
    assert expected_calibration_error(np.eye(3)[[0, 1]], np.array([0, 1])) == 0.0


def test_predict_options_and_written_slots(fitted, labelled, tmp_path) -> None:
    soft = fitted.predict(labelled[:40], soft=True)
    assert list(soft.columns) == ["0", "1", "2"] and list(soft.index) == list(
        labelled.obs_names[:40]
    )
    np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-10)
    known = labelled.obs["labels"].astype(str).to_numpy() != "Unknown"
    kept = fitted.predict(keep_observed=True)
    np.testing.assert_array_equal(kept[known], labelled.obs["labels"].astype(str)[known])
    top = fitted.predict(soft=True).max(1).to_numpy()
    flagged = fitted.predict(min_confidence=float(np.median(top)))
    np.testing.assert_array_equal(flagged == UNCERTAIN, top < np.median(top))
    with pytest.raises(ValueError, match="soft=True"):
        fitted.predict(soft=True, min_confidence=0.5)

    adata = labelled.copy()
    fitted.write_labels(adata, min_confidence=0.5)
    fitted.write_latent(adata)
    assert isinstance(adata.obs["ssvae"].dtype, pd.CategoricalDtype)
    assert list(adata.obs["ssvae"].cat.categories) == ["0", "1", "2", UNCERTAIN]
    assert adata.obsm["ssvae_proba"].shape == (adata.n_obs, 3)
    assert adata.obsm["X_ssvae"].shape == (adata.n_obs, 4)
    record = adata.uns["ssvae"]
    assert record["params"]["model"] == "SSVAE" and record["params"]["labels_key"] == "labels"
    assert list(record["labels"]) == ["0", "1", "2"]
    assert record["temperature"] == fitted.temperature and "ece_before" in record["calibration"]
    fitted.write_labels(adata, key_added="celltypist", keep_observed=True)
    assert (adata.obs["celltypist"].astype(str)[known] == adata.obs["labels"][known]).all()
    adata.write_h5ad(tmp_path / "out.h5ad")  # every slot serializes
    with pytest.raises(ValueError, match="view"):
        fitted.write_labels(adata[:10])


def test_tl_one_liner_and_cli(labelled, tmp_path) -> None:
    out = scvae.tl.ssvae(
        labelled, labels_key="labels", n_latent=3, n_hidden=16, max_epochs=2, copy=True,
        progress_bar=False,
    )  # fmt: skip
    assert {"ssvae"} <= set(out.obs) and {"ssvae_proba", "X_ssvae"} <= set(out.obsm)
    assert "ssvae" not in labelled.obs
    from scvae.cli import main

    path, result = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    labelled.write_h5ad(path)
    args = ["fit", str(path), "-o", str(result), "--model", "ssvae", "--max-epochs", "2"]
    assert main([*args, "--labels-key", "labels", "--n-latent", "3", "--quiet"]) == 0
    written = ad.read_h5ad(result)
    assert "ssvae" in written.obs and written.obsm["ssvae_proba"].shape == (labelled.n_obs, 3)
    assert main([*args[:-2], "--quiet"]) == 2  # no --labels-key


# ------------------------------------------------------------------------------ refusals
def test_bad_labels_are_refused_and_the_adata_is_unchanged(labelled) -> None:
    adata = labelled.copy()
    adata.obs["none"] = "Unknown"
    adata.obs["one"] = np.where(np.arange(adata.n_obs) < 100, "T cell", "Unknown")
    adata.obs["single"] = np.where(np.arange(adata.n_obs) < 100, "T cell", "B cell")
    adata.obs.loc[adata.obs_names[0], "single"] = "NK"
    before = snapshot(adata)
    with pytest.raises(KeyError, match=r"labels_key='nope' is not a column .*'cluster'"):
        scvae.SSVAE(adata, labels_key="nope")
    with pytest.raises(ValueError, match="labels no cell"):
        scvae.SSVAE(adata, labels_key="none")
    with pytest.raises(ValueError, match="one label"):
        scvae.SSVAE(adata, labels_key="one")
    with pytest.raises(ValueError, match="'NK' have one labelled cell"):
        scvae.SSVAE(adata, labels_key="single")
    with pytest.raises(TypeError, match="unlabeled_category"):
        scvae.SSVAE(adata, labels_key="labels", unlabeled_category=0)
    with pytest.raises(ValueError, match="alpha"):
        scvae.SSVAE(adata, labels_key="labels", alpha=-1.0)
    with pytest.raises(ValueError, match="likelihood"):
        scvae.SSVAE(adata, labels_key="labels", likelihood="gaussian")
    assert_adata_unchanged(before, adata)


def test_missing_values_are_unlabelled_too(labelled) -> None:
    adata = labelled.copy()
    values = adata.obs["cluster"].astype(float).to_numpy()
    values[:150] = np.nan  # numbers as labels, NaN unknown; "Unknown" does not occur
    adata.obs["numeric"] = values
    model = scvae.SSVAE(adata, labels_key="numeric", unlabeled_category=None)
    assert model.label_categories == ["0", "1", "2"]  # 2.0 reads "2"
    assert (model.labels[:150] == -1).all() and (model.labels[150:] >= 0).all()
    assert "150 labelled cells" in repr(model)


@pytest.mark.slow
def test_pbmc3k_half_the_labels_hidden_are_recovered() -> None:
    import scanpy as sc

    adata = scvae.datasets.pbmc3k()
    norm = adata.copy()
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    sc.pp.highly_variable_genes(norm, flavor="seurat", n_top_genes=2000)
    adata = adata[:, norm.var["highly_variable"].to_numpy()].copy()
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    hidden = np.random.default_rng(0).random(adata.n_obs) < 0.5
    labels = truth.astype(object)
    labels[hidden] = "Unknown"
    adata.obs["labels"] = labels
    model = scvae.SSVAE(adata, labels_key="labels").fit(max_epochs=150, progress_bar=False)
    assert (model.predict()[hidden] == truth[hidden]).mean() > 0.85
    cal = model.calibration
    assert cal["fitted"] and cal["nll_after"] <= cal["nll_before"]


def test_map_query_names_the_cells_of_a_query_without_labels() -> None:
    """Reference mapping of a new batch whose cells carry no labels column at all."""
    sim = scvae.datasets.simulate(n_cells=600, n_genes=100, n_clusters=3, n_batches=3, seed=2)
    reference = sim[sim.obs["batch"] != "batch2"].copy()
    query = sim[sim.obs["batch"] == "batch2"].copy()
    truth = query.obs.pop("cluster").astype(str).to_numpy()
    model = scvae.SSVAE(reference, labels_key="cluster", batch_key="batch", n_latent=4)
    model.fit(max_epochs=30, progress_bar=False, seed=0)
    mapped = model.map_query(query, max_epochs=20, progress_bar=False)
    assert isinstance(mapped, scvae.SSVAE)
    assert (mapped.predict(query) == truth).mean() > 0.9
    np.testing.assert_array_equal(mapped.get_latent(reference), model.get_latent(reference))
