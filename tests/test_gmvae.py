"""GMVAE: the mixture prior's exact KL, its bounds, its clusters, its slots and its refusals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import assert_adata_unchanged, snapshot
from sklearn.metrics import adjusted_rand_score
from torch.distributions import Categorical, Normal

import scvae
from scvae.module.gmvae import GMVAEModule

FIT = {"max_epochs": 25, "n_epochs_pretrain": 15, "batch_size": 64, "progress_bar": False}


@pytest.fixture(scope="module")
def clustered():
    """300 cells x 100 genes, 3 well-separated clusters in ``obs["cluster"]``, 2 batches."""
    return scvae.datasets.simulate(n_cells=300, n_genes=100, n_clusters=3, n_batches=2, seed=3)


@pytest.fixture(scope="module")
def fitted(clustered):
    model = scvae.GMVAE(clustered, n_components=3, batch_key="batch", n_latent=4, n_hidden=64)
    return model.fit(seed=0, **FIT)


def _module(k: int = 4, d: int = 3) -> GMVAEModule:
    torch.manual_seed(0)
    module = GMVAEModule(5, 1, torch.zeros(1), torch.ones(1), n_components=k, n_latent=d)
    weights = torch.softmax(torch.randn(k), 0)
    module.set_mixture(weights, 2.0 * torch.randn(k, d), 0.2 + torch.rand(k, d))
    return module


def test_mixture_kl_is_exact_over_y_and_matches_monte_carlo() -> None:
    module = _module()
    qz = Normal(torch.randn(6, 3), 0.3 + torch.rand(6, 3))
    with torch.no_grad():
        exact = module.mixture_kl(qz).double()  # (N,)
        log_q_y = module.responsibilities(qz)  # (N, K)
        q_y = log_q_y.exp()
        log_pi, mu, var = module.mixture()
        # the identity: -logsumexp = sum_y q(y) KL_y + KL(q(y) || pi)
        decomposed = (q_y * module.component_kl(qz)).sum(-1) + (q_y * (log_q_y - log_pi)).sum(-1)
        np.testing.assert_allclose(exact.numpy(), decomposed.double().numpy(), rtol=1e-5)
        # Monte Carlo over both z ~ q(z|x) and y ~ q(y|x)
        s = 200_000
        z = qz.sample((s,))  # (S, N, L)
        y = Categorical(probs=q_y).sample((s,))  # (S, N)
        log_pz_y = Normal(mu[y], var[y].sqrt()).log_prob(z).sum(-1)  # (S, N)
        terms = (
            qz.log_prob(z).sum(-1)
            + log_q_y.gather(-1, y.T).T
            - log_pz_y
            - log_pi[y]
        ).double()  # fmt: skip
        mc, se = terms.mean(0), terms.std(0) / math.sqrt(s)
    assert torch.all((mc - exact).abs() < 5 * se + 1e-3), (mc, exact, se)
    # and the exact-over-y term bounds the KL to the marginal mixture density from above
    with torch.no_grad():
        kl_marginal = (qz.log_prob(z).sum(-1) - module.log_prior_z(z)).double().mean(0)
    assert torch.all(kl_marginal <= exact + 1e-3)


def test_elbo_is_below_iwae(fitted) -> None:
    elbo = fitted.elbo(n_samples=20).mean()
    iwae = fitted.marginal_log_likelihood(n_samples=100).mean()
    assert np.isfinite(elbo) and elbo <= iwae


def test_clusters_recover_the_simulated_ones(fitted, clustered) -> None:
    labels = fitted.predict()
    assert labels.dtype == np.int64 and labels.shape == (clustered.n_obs,)
    assert adjusted_rand_score(clustered.obs["cluster"], labels) > 0.9
    assert fitted.training["n_components"] == 3 and fitted.training["n_occupied"] == 3
    assert list(fitted.history["phase"].unique()) == ["pretrain", "mixture"]


def test_generate_draws_z_from_the_mixture(fitted) -> None:
    out = fitted.generate(300, seed=0)
    z = torch.as_tensor(out.obsm["X_latent"])
    _, mu, var = fitted.module.mixture()
    nearest = ((z[:, None] - mu.detach()) ** 2 / var.detach()).sum(-1).min(1).values
    assert out.n_obs == 300 and float(nearest.median()) < 3 * z.shape[1]  # chi2_L median ~ L


def test_predict_soft_rows_sum_to_one_and_are_named(fitted, clustered) -> None:
    soft = fitted.predict(clustered[:40], soft=True)
    assert isinstance(soft, pd.DataFrame) and soft.shape == (40, 3)
    assert list(soft.index) == list(clustered.obs_names[:40])
    assert list(soft.columns) == ["0", "1", "2"]
    np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-10)
    np.testing.assert_array_equal(soft.to_numpy().argmax(1), fitted.predict(clustered[:40]))


def test_write_clusters_and_latent_slots(fitted, clustered) -> None:
    adata = clustered.copy()
    fitted.write_clusters(adata)
    fitted.write_latent(adata)
    assert isinstance(adata.obs["gmvae"].dtype, pd.CategoricalDtype)
    assert list(adata.obs["gmvae"].cat.categories) == ["0", "1", "2"]
    assert adata.obsm["gmvae_proba"].shape == (adata.n_obs, 3)
    assert adata.obsm["X_gmvae"].shape == (adata.n_obs, 4)
    record = adata.uns["gmvae"]
    assert record["params"]["model"] == "GMVAE" and record["params"]["n_components"] == 3
    np.testing.assert_allclose(record["weights"].sum(), 1.0)
    assert record["means"].shape == record["variances"].shape == (3, 4)
    fitted.write_clusters(adata, key_added="mix")
    assert {"mix", "gmvae"} <= set(adata.obs) and "mix_proba" in adata.obsm
    with pytest.raises(ValueError, match="view"):
        fitted.write_clusters(adata[:10])


def test_save_load_roundtrip(fitted, clustered, tmp_path) -> None:
    fitted.save(tmp_path / "gmvae")
    loaded = scvae.GMVAE.load(tmp_path / "gmvae", adata=clustered)
    assert loaded.n_components == 3 and loaded.likelihood == "zinb"
    np.testing.assert_allclose(
        loaded.predict(soft=True).to_numpy(), fitted.predict(soft=True).to_numpy(), atol=1e-6
    )
    pd.testing.assert_frame_equal(loaded.selection, fitted.selection)
    np.testing.assert_allclose(loaded.get_latent(), fitted.get_latent(), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_components": 301}, ValueError, "n_components"),
        ({"n_components": 0}, ValueError, "n_components"),
        ({"n_components": 2.5}, TypeError, "n_components"),
        ({"n_components": "3"}, TypeError, "n_components"),
        ({"candidates": [0, 2]}, ValueError, "candidates"),
        ({"candidates": [400, 500]}, ValueError, "candidates"),
        ({"likelihood": "gaussian"}, ValueError, "likelihood"),
    ],
)
def test_bad_input_is_refused_by_name(clustered, kwargs, error, match) -> None:
    before = snapshot(clustered)
    with pytest.raises(error, match=match):
        scvae.GMVAE(clustered, **kwargs)
    assert_adata_unchanged(clustered, before)


def test_k_chosen_by_validation_elbo_and_one_liner(clustered) -> None:
    adata = clustered[:200].copy()
    before = snapshot(adata)
    with pytest.raises(ValueError, match="n_init"):
        scvae.tl.gmvae(adata, n_components=2, n_init=0)
    assert_adata_unchanged(adata, before)
    model = scvae.tl.gmvae(
        adata,
        candidates=[2, 3],
        n_latent=4,
        n_hidden=32,
        n_init=2,
        return_model=True,
        max_epochs=8,
        n_epochs_pretrain=8,
        batch_size=64,
        progress_bar=False,
    )
    selection = model.selection
    assert list(selection["n_components"]) == [2, 2, 3, 3]
    assert list(selection["restart"]) == [0, 1, 0, 1]
    best = selection.loc[selection["validation_elbo"].idxmax()]
    assert model.n_components == int(best["n_components"])
    assert {"gmvae"} <= set(adata.obs) and {"gmvae_proba", "X_gmvae"} <= set(adata.obsm)
    assert set(adata.uns["gmvae"]["selection"]) >= {"n_components", "validation_elbo"}


def test_default_pretraining_is_three_quarters_of_the_epochs(clustered) -> None:
    adata = clustered[:120].copy()
    model = scvae.GMVAE(adata, n_components=2, n_latent=3, n_hidden=16)
    model.fit(max_epochs=2, batch_size=64, early_stopping=False, progress_bar=False, seed=0)
    assert model.training["n_epochs_pretrain"] == 6  # three times the mixture phase's 2
    phases = model.history["phase"].value_counts()
    assert phases["pretrain"] == 6 and phases["mixture"] == 2


def test_pretraining_stops_early_and_keeps_its_best_epoch(clustered) -> None:
    """With early stopping the pretraining ends as a ZINBVAE fit does, before its maximum,
    and the mixture phase starts from the best pretraining epoch's network."""
    adata = clustered[:120].copy()
    model = scvae.GMVAE(adata, n_components=2, n_latent=3, n_hidden=16)
    model.fit(
        max_epochs=2, n_epochs_pretrain=60, patience=2, n_steps_kl_warmup=0, batch_size=64,
        progress_bar=False, seed=0,
    )  # fmt: skip
    pretrain = model.history[model.history["phase"] == "pretrain"]
    assert model.training["n_epochs_pretrain"] == len(pretrain) < 60
    best = pretrain["validation_elbo"].idxmax()
    assert len(pretrain) - 1 - (best - pretrain.index[0]) == 2  # stopped `patience` after it
