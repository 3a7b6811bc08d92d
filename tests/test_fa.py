"""Factor analysis: EM against scikit-learn and dense algebra; the model API, tl and CLI."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import anndata as ad
import numpy as np
import pytest
import scipy.sparse
import scipy.stats
import torch
from helpers import assert_adata_unchanged, snapshot
from sklearn.decomposition import FactorAnalysis as SkFactorAnalysis

import scvae
from scvae.cli import main
from scvae.module.fa import fit_fa, log_likelihood, posterior

N_CELLS, N_GENES, N_LATENT = 300, 20, 3


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _simulate(n: int = N_CELLS, G: int = N_GENES, L: int = N_LATENT, seed: int = 0) -> np.ndarray:
    """Low-rank Gaussian data with a different noise variance per feature."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, L))  # (n, L)
    loadings = rng.normal(size=(L, G)) * np.linspace(3.0, 1.0, L)[:, None]  # (L, G)
    noise = rng.normal(size=(n, G)) * rng.uniform(0.3, 2.0, size=G)  # (n, G)
    return z @ loadings + noise + rng.uniform(1.0, 3.0, size=G)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return _simulate()


@pytest.fixture(scope="module")
def fitted(data: np.ndarray):
    return fit_fa(data, N_LATENT, psi_floor=1e-10, max_iter=5000, tol=1e-13)


# ------------------------------------------------------------------------------ the torch core
def test_reaches_sklearn_optimum(data: np.ndarray, fitted) -> None:
    # exact SVDs (the default randomized SVD makes sklearn's iteration stop early)
    sk = SkFactorAnalysis(N_LATENT, tol=1e-12, max_iter=5000, svd_method="lapack").fit(data)
    assert fitted.converged
    ours = log_likelihood(fitted, data).numpy()  # (N,)
    # sklearn's score is the mean log-likelihood: both reach the same optimum, ours from below
    # by EM's linear convergence, here to within 1e-10 nats per cell (3e-12 relative)
    assert ours.mean() >= sk.score(data) - 1e-10
    np.testing.assert_allclose(ours, sk.score_samples(data), rtol=1e-4)
    np.testing.assert_allclose(fitted.psi.numpy(), sk.noise_variance_, rtol=1e-2)
    np.testing.assert_allclose(float(fitted.log_likelihood[-1]), ours.mean(), rtol=1e-12)


def test_em_is_monotone(fitted) -> None:
    history = fitted.log_likelihood.numpy()
    assert fitted.n_iter > 10
    assert np.diff(history).min() >= -1e-9 * np.abs(history).max()
    assert history[-1] > history[0]  # improves on the PPCA start


def test_log_likelihood_and_posterior_equal_dense_gaussian(data: np.ndarray, fitted) -> None:
    W, mu, psi = fitted.W.numpy(), fitted.mean.numpy(), fitted.psi.numpy()
    C = W @ W.T + np.diag(psi)  # (G, G)
    expected = scipy.stats.multivariate_normal(mean=mu, cov=C).logpdf(data)  # (N,)
    np.testing.assert_allclose(log_likelihood(fitted, data).numpy(), expected, rtol=1e-10)
    mean, cov = posterior(fitted, data)
    gain = np.linalg.solve(C, W).T  # (L, G) = W^T C^-1
    np.testing.assert_allclose(mean.numpy(), (data - mu) @ gain.T, atol=1e-10)
    np.testing.assert_allclose(cov.numpy(), np.eye(N_LATENT) - gain @ W, atol=1e-10)


def test_sparse_input_equals_dense() -> None:
    X = _simulate(seed=1)
    X[np.random.default_rng(1).random(X.shape) < 0.4] = 0.0
    dense = fit_fa(X, N_LATENT, max_iter=200, tol=1e-9, warn=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        torch_csr = torch.from_numpy(X).to_sparse_csr()
    for sparse in (scipy.sparse.csr_matrix(X), torch_csr):
        other = fit_fa(sparse, N_LATENT, max_iter=200, tol=1e-9, warn=False)
        assert other.n_iter == dense.n_iter
        np.testing.assert_allclose(other.W.numpy(), dense.W.numpy(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(other.psi.numpy(), dense.psi.numpy(), rtol=1e-8)
        np.testing.assert_allclose(
            log_likelihood(dense, sparse).numpy(), log_likelihood(dense, X).numpy(), rtol=1e-10
        )
        np.testing.assert_allclose(posterior(dense, sparse)[0], posterior(dense, X)[0], atol=1e-10)


def test_heldout_count_in_a_gene_zero_in_training_scores_finitely(data: np.ndarray) -> None:
    train = data.copy()
    train[:, 0] = 0.0  # no training cell has a value in feature 0
    heldout = data[:5].copy()
    heldout[:, 0] = 2.0
    params = fit_fa(train, N_LATENT, max_iter=500, tol=1e-8)  # the default floor
    assert float(params.psi[0]) == pytest.approx(float(params.psi_min))
    assert float(params.psi_min) == pytest.approx(1e-2 * float(train.var(axis=0).mean()))
    ours = log_likelihood(params, heldout).numpy()
    assert np.isfinite(ours).all()
    # the floor costs about x^2 / (2 psi_min) for the unseen value, nothing degenerate
    penalty = 4.0 / (2 * float(params.psi_min))
    assert (ours > -penalty - 200).all()
    with np.errstate(all="ignore"):
        sk = SkFactorAnalysis(N_LATENT).fit(train)  # psi floored at 1e-12
        assert (sk.score_samples(heldout) < -1e11).all()


def test_core_refuses_bad_input(data: np.ndarray) -> None:
    with pytest.raises(ValueError, match="n_components"):
        fit_fa(data, N_GENES)
    bad = data.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_fa(bad, 2)
    with pytest.raises(ValueError, match="psi_floor"):
        fit_fa(data, 2, psi_floor=0.0)
    with pytest.raises(ValueError, match="constant"):
        fit_fa(np.ones((10, 5)), 2)
    with pytest.warns(RuntimeWarning, match="did not reach"):
        fit_fa(data, 2, max_iter=1, tol=0.0)


# ------------------------------------------------------------------------------ the model API
def test_model_matches_core_on_log_normalized_counts(sim) -> None:
    model = scvae.FactorAnalysis(sim, n_latent=4).fit()
    X = model._cells(None).X
    core = fit_fa(X, 4, max_iter=1000, tol=1e-4)
    np.testing.assert_allclose(
        model.marginal_log_likelihood(), log_likelihood(core, X).numpy(), rtol=1e-10
    )
    ppca = scvae.PPCA(sim, n_latent=4).fit()
    assert model.marginal_log_likelihood().mean() >= ppca.marginal_log_likelihood().mean()
    assert model.posterior_covariance.shape == (4, 4)
    np.testing.assert_allclose(model.posterior_covariance, posterior(core, X)[1], rtol=1e-8)


def test_write_latent_slots_save_load_and_tl(sim, tmp_path) -> None:
    adata = sim.copy()
    model = scvae.tl.factor_analysis(adata, n_latent=4, return_model=True)
    assert adata.obsm["X_fa"].shape == (adata.n_obs, 4)
    assert adata.varm["FA_loadings"].shape == (adata.n_vars, 4)
    params = adata.uns["fa"]["params"]
    assert params["model"] == "FactorAnalysis" and params["n_iter"] >= 1
    assert params["noise_variance"].shape == (adata.n_vars,)
    assert set(adata.obsm) - set(sim.obsm) == {"X_fa"}
    assert set(adata.varm) - set(sim.varm) == {"FA_loadings"}
    assert set(adata.uns) - set(sim.uns) == {"fa"}
    other = sim.copy()
    model.write_latent(other, key_added="X_f")
    assert "X_f" in other.obsm and "f_loadings" in other.varm and "f" in other.uns
    model.save(tmp_path / "fa")
    loaded = scvae.FactorAnalysis.load(tmp_path / "fa", adata=sim)
    np.testing.assert_allclose(loaded.get_latent(), model.get_latent(), rtol=1e-6)
    np.testing.assert_allclose(
        loaded.marginal_log_likelihood(sim[:30]), model.marginal_log_likelihood(sim[:30])
    )
    assert loaded.config == model.config and loaded.uns_params()["n_iter"] == params["n_iter"]
    with pytest.raises(ValueError, match="not a PPCA"):
        scvae.PPCA.load(tmp_path / "fa")
    copied = scvae.tl.factor_analysis(sim, n_latent=2, copy=True)
    assert copied.obsm["X_fa"].shape == (sim.n_obs, 2) and "X_fa" not in sim.obsm


def test_bad_input_changes_nothing(sim) -> None:
    bad = sim.copy()
    bad.X = bad.X.log1p()
    reference = snapshot(bad)
    with pytest.raises(ValueError, match="non-integer"):
        scvae.tl.factor_analysis(bad)
    assert_adata_unchanged(reference, bad)
    nan = ad.AnnData(X=np.where(np.eye(6, 5) > 0, np.nan, 1.0))
    reference = snapshot(nan)
    with pytest.raises(ValueError, match="NaN"):
        scvae.tl.factor_analysis(nan, n_latent=2, log_normalize=False)
    assert_adata_unchanged(reference, nan)
    reference = snapshot(sim)
    with pytest.raises(ValueError, match="smaller than the number of genes"):
        scvae.tl.factor_analysis(sim, n_latent=sim.n_vars)
    with pytest.raises(ValueError, match="psi_floor"):
        scvae.tl.factor_analysis(sim, psi_floor=-1.0)
    with pytest.raises(ValueError, match="view"):
        scvae.tl.factor_analysis(sim[:50])
    assert_adata_unchanged(reference, sim)
    model = scvae.FactorAnalysis(sim, n_latent=2)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.get_latent()
    model.fit()
    view = sim[:50]
    with pytest.raises(ValueError, match="view"):
        model.write_latent(view)
    with pytest.raises(ValueError, match="genes"):
        model.get_latent(sim[:, :50].copy())
    assert_adata_unchanged(reference, sim)


def test_cli_fa(tmp_path) -> None:
    path, out = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    scvae.datasets.simulate(n_cells=80, n_genes=40, n_batches=2, seed=2).write_h5ad(path)
    assert main(["fit", str(path), "-o", str(out), "--model", "fa", "--n-latent", "3"]) == 0
    result = ad.read_h5ad(out)
    assert result.obsm["X_fa"].shape == (80, 3) and result.varm["FA_loadings"].shape == (40, 3)
    assert result.uns["fa"]["params"]["model"] == "FactorAnalysis"
