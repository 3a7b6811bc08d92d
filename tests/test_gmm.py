"""Gaussian mixture EM (scvae.module.gmm) and the scanpy-style tool scvae.tl.gmm."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import assert_adata_unchanged, snapshot
from sklearn.mixture import GaussianMixture

from scvae.module.gmm import (
    GMMEstimate,
    aic,
    bic,
    fit_gmm,
    n_parameters,
    predict,
    predict_proba,
    score_samples,
    select_n_components,
)
from scvae.tl._gmm import gmm

N_CELLS, N_DIMS, TRUE_K = 1200, 5, 4


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is fastest and immune to oversubscribed CI cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _blobs(
    n: int = N_CELLS, D: int = N_DIMS, K: int = TRUE_K, *, spread: float = 8.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Anisotropic Gaussian clusters with unequal sizes; returns data and true labels."""
    rng = np.random.default_rng(seed)
    weights = np.linspace(1.0, 2.0, K) / np.linspace(1.0, 2.0, K).sum()
    labels = rng.choice(K, size=n, p=weights)  # (n,)
    centers = spread * rng.normal(size=(K, D))  # (K, D)
    factors = rng.normal(size=(K, D, D)) * 0.5 + np.eye(D)  # (K, D, D) Sigma_k = A A^T
    noise = rng.normal(size=(n, D))  # (n, D)
    X = centers[labels] + np.einsum("nd,ned->ne", noise, factors[labels])  # (n, D)
    return X, labels


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    return _blobs()


@pytest.fixture(scope="module")
def overlapping() -> np.ndarray:
    """Poorly separated clusters: EM needs many iterations (good for monotonicity checks)."""
    return _blobs(n=800, spread=1.5, seed=1)[0]


def _shared_init(X: np.ndarray, K: int, covariance_type: str, seed: int) -> dict[str, np.ndarray]:
    """A deliberately rough initialisation: random cells as means, isotropic precisions."""
    rng = np.random.default_rng(seed)
    means = X[rng.choice(X.shape[0], K, replace=False)]  # (K, D)
    precision = 1.0 / X.var(axis=0).mean()
    D = X.shape[1]
    if covariance_type == "full":
        precisions = np.stack([precision * np.eye(D)] * K)  # (K, D, D)
    else:
        precisions = np.full((K, D), precision)  # (K, D)
    return {"weights": np.full(K, 1.0 / K), "means": means, "precisions": precisions}


def _params_from_sklearn(sk: GaussianMixture) -> GMMEstimate:
    return GMMEstimate(
        weights=torch.from_numpy(sk.weights_),
        means=torch.from_numpy(sk.means_),
        covariances=torch.from_numpy(sk.covariances_),
        precisions_cholesky=torch.from_numpy(sk.precisions_cholesky_),
        covariance_type=sk.covariance_type,
    )


# --------------------------------------------------------------------------------------------
# numerical core
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("reg_covar", [0.0, 1e-6])
def test_log_likelihood_never_decreases(
    overlapping: np.ndarray, covariance_type: str, reg_covar: float
) -> None:
    init = _shared_init(overlapping, 6, covariance_type, seed=2)
    params = fit_gmm(
        overlapping,
        6,
        covariance_type=covariance_type,
        init_params=init,
        max_iter=300,
        tol=1e-9,
        reg_covar=reg_covar,
    )
    history = np.asarray(params.log_likelihood_history)
    assert len(history) == params.n_iter + 1 >= 20  # a long, non-trivial run
    assert np.diff(history).min() >= -1e-10 * np.abs(history).max()
    assert history[-1] > history[0] + 0.1
    assert params.lower_bound == history[-1]
    np.testing.assert_allclose(
        score_samples(params, overlapping).mean().item(), history[-1], rtol=1e-12
    )


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("init_seed", [0, 1])
def test_reaches_sklearn_from_same_initialisation(
    overlapping: np.ndarray, covariance_type: str, init_seed: int
) -> None:
    init = _shared_init(overlapping, 5, covariance_type, seed=init_seed)
    sk = GaussianMixture(
        5,
        covariance_type=covariance_type,
        weights_init=init["weights"],
        means_init=init["means"],
        precisions_init=init["precisions"],
        init_params="random_from_data",  # overridden by the three *_init arguments
        max_iter=500,
        tol=1e-3,
        reg_covar=1e-6,
    ).fit(overlapping)
    ours = fit_gmm(
        overlapping,
        5,
        covariance_type=covariance_type,
        init_params=init,
        max_iter=500,
        tol=1e-3,
        reg_covar=1e-6,
    )
    assert ours.converged and sk.converged_
    assert ours.lower_bound >= sk.score(overlapping) - 1e-3
    # same stopping rule and the same iterates: identical up to rounding
    assert ours.n_iter == sk.n_iter_
    np.testing.assert_allclose(ours.lower_bound, sk.score(overlapping), rtol=1e-10)
    np.testing.assert_allclose(ours.means.numpy(), sk.means_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ours.covariances.numpy(), sk.covariances_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ours.weights.numpy(), sk.weights_, rtol=1e-8)
    # both start from the same point: the first log-likelihood value agrees exactly
    first = GMMEstimate(
        weights=torch.from_numpy(init["weights"]),
        means=torch.from_numpy(init["means"]),
        covariances=torch.empty(0),
        precisions_cholesky=torch.from_numpy(
            np.sqrt(init["precisions"])
            if covariance_type == "diag"
            else np.linalg.cholesky(init["precisions"])
        ),
        covariance_type=covariance_type,
    )
    np.testing.assert_allclose(
        ours.log_likelihood_history[0], score_samples(first, overlapping).mean().item()
    )


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_score_samples_and_proba_equal_sklearn(
    blobs: tuple[np.ndarray, np.ndarray], covariance_type: str
) -> None:
    X, _ = blobs
    sk = GaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(X)
    params = _params_from_sklearn(sk)
    np.testing.assert_allclose(score_samples(params, X).numpy(), sk.score_samples(X), rtol=1e-10)
    np.testing.assert_allclose(predict_proba(params, X).numpy(), sk.predict_proba(X), atol=1e-10)
    np.testing.assert_array_equal(predict(params, X).numpy(), sk.predict(X))
    np.testing.assert_allclose(bic(params, X), sk.bic(X), rtol=1e-10)
    np.testing.assert_allclose(aic(params, X), sk.aic(X), rtol=1e-10)
    assert n_parameters(params) == sk._n_parameters()


def test_bic_picks_true_number_of_clusters(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, labels = blobs
    best, curve = select_n_components(X, range(1, 9))
    assert curve["n_components"] == list(range(1, 9))
    assert len(curve["bic"]) == 8
    assert best.n_components == TRUE_K
    assert int(np.argmin(curve["bic"])) + 1 == TRUE_K
    assert best.model_selection == curve
    # each recovered cluster is one true cluster
    contingency = pd.crosstab(predict(best, X).numpy(), labels).to_numpy()  # (K, K)
    assert (contingency.max(axis=1) / contingency.sum(axis=1)).min() > 0.97

    default = fit_gmm(X, None)  # K by BIC over the default range 2 .. 20
    assert default.n_components == TRUE_K
    assert default.model_selection is not None
    assert default.model_selection["n_components"] == list(range(2, 21))


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_deterministic_given_seed(overlapping: np.ndarray, covariance_type: str) -> None:
    kwargs = {"covariance_type": covariance_type, "n_init": 2, "seed": 7}
    first = fit_gmm(overlapping, 4, **kwargs)
    again = fit_gmm(overlapping, 4, **kwargs)
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert first.log_likelihood_history == again.log_likelihood_history
    # chunking the E-/M-steps does not change the result beyond rounding
    chunked = fit_gmm(overlapping, 4, chunk_size=37, **kwargs)
    np.testing.assert_allclose(chunked.means.numpy(), first.means.numpy(), rtol=1e-9, atol=1e-9)
    assert chunked.n_iter == first.n_iter


def test_restarts_keep_the_best(overlapping: np.ndarray) -> None:
    single = fit_gmm(overlapping, 6, init="k-means++", seed=0)
    best = fit_gmm(overlapping, 6, init="k-means++", n_init=5, seed=0)
    # the first restart of the n_init=5 run is the single run (same generator stream)
    assert best.lower_bound >= single.lower_bound
    assert np.isfinite(best.lower_bound)


def test_shapes_and_normalisation(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = blobs
    full = fit_gmm(torch.from_numpy(X).float(), 3)  # float32 input, float64 fit
    assert full.means.dtype == torch.float64
    assert full.covariances.shape == (3, N_DIMS, N_DIMS)
    assert full.precisions_cholesky.shape == (3, N_DIMS, N_DIMS)
    precision = full.precisions_cholesky @ full.precisions_cholesky.mT  # (K, D, D)
    eye = torch.eye(N_DIMS, dtype=torch.float64).expand(3, -1, -1)
    torch.testing.assert_close(precision @ full.covariances, eye, rtol=0, atol=1e-8)
    diag = fit_gmm(X, 3, covariance_type="diag")
    assert diag.covariances.shape == (3, N_DIMS)
    for params in (full, diag):
        assert abs(params.weights.sum().item() - 1.0) < 1e-12
        proba = predict_proba(params, X)  # (N, K)
        torch.testing.assert_close(proba.sum(dim=1), torch.ones(N_CELLS, dtype=torch.float64))


def test_means_only_initialisation(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, labels = blobs
    means = np.stack([X[labels == k].mean(axis=0) for k in range(TRUE_K)])  # (K, D)
    params = fit_gmm(X, None, init_params={"means": means})  # K taken from the means
    assert params.n_components == TRUE_K
    assert params.n_iter <= 5  # starts at the answer


def test_bad_input_raises(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = blobs
    with pytest.raises(ValueError, match="number of cells"):
        fit_gmm(X[:3], 4)
    bad = X.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_gmm(bad, 2)
    with pytest.raises(ValueError, match="covariance_type"):
        fit_gmm(X, 2, covariance_type="spherical")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="init_params"):
        fit_gmm(X, 2, init_params={"weights": np.ones(2) / 2})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(overlapping: np.ndarray) -> None:
    cpu = fit_gmm(overlapping, 4, seed=3)
    gpu = fit_gmm(torch.from_numpy(overlapping).cuda(), 4, seed=3)
    assert gpu.means.is_cuda
    np.testing.assert_allclose(gpu.means.cpu().numpy(), cpu.means.numpy(), rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------------------------
# scvae.tl.gmm
# --------------------------------------------------------------------------------------------


def _make_adata(n: int = 300, seed: int = 0) -> ad.AnnData:
    X, labels = _blobs(n=n, D=4, K=3, seed=seed)
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(rng.poisson(2.0, size=(n, 10)).astype(np.float32))
    adata.obs_names = [f"cell{i}" for i in range(n)]
    adata.obs["true"] = pd.Categorical(labels.astype(str))
    adata.obsm["X_zinbvae"] = X.astype(np.float32)
    adata.obsm["X_pca"] = rng.normal(size=(n, 3))
    adata.uns["existing"] = {"a": 1}
    return adata


def _slot_keys(adata: ad.AnnData) -> dict[str, set]:
    return {
        "obs": set(adata.obs.columns),
        "var": set(adata.var.columns),
        "obsm": set(adata.obsm.keys()),
        "varm": set(adata.varm.keys()),
        "obsp": set(adata.obsp.keys()),
        "varp": set(adata.varp.keys()),
        "layers": set(adata.layers.keys()),
        "uns": set(adata.uns.keys()),
    }


def test_tl_gmm_writes_exactly_the_documented_slots(tmp_path) -> None:
    adata = _make_adata()
    before = _slot_keys(adata)
    X_before = adata.X.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no convergence or anndata warnings
        result = gmm(adata)
    assert result is None
    after = _slot_keys(adata)
    expected = dict(before)
    expected["obs"] = before["obs"] | {"gmm"}
    expected["obsm"] = before["obsm"] | {"gmm_proba"}
    expected["uns"] = before["uns"] | {"gmm"}
    assert after == expected
    np.testing.assert_array_equal(adata.X, X_before)

    uns = adata.uns["gmm"]
    assert set(uns) == {"params", "weights", "means", "covariances", "bic", "log_likelihood"}
    assert uns["params"] == {
        "use_rep": "X_zinbvae",
        "n_components": None,
        "covariance_type": "full",
        "seed": 0,
        "n_init": 1,
        "max_iter": 200,
        "tol": 1e-3,
        "reg_covar": 1e-6,
    }
    K = len(uns["weights"])
    assert K == 3  # chosen by BIC
    assert list(uns["bic"]["n_components"]) == list(range(2, 21))
    assert int(uns["bic"]["n_components"][np.argmin(uns["bic"]["bic"])]) == K
    assert uns["means"].shape == (K, 4) and uns["covariances"].shape == (K, 4, 4)
    assert isinstance(uns["log_likelihood"], float)

    labels = adata.obs["gmm"]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    assert list(labels.cat.categories) == [str(k) for k in range(K)]
    proba = adata.obsm["gmm_proba"]
    assert proba.shape == (adata.n_obs, K) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(labels.cat.codes.to_numpy(), proba.argmax(axis=1))
    sizes = labels.value_counts().reindex(labels.cat.categories).to_numpy()
    assert (np.diff(sizes) <= 0).all()  # "0" is the largest cluster
    # weights follow the relabelling and the clusters are the true ones
    np.testing.assert_allclose(uns["weights"], proba.mean(axis=0), atol=1e-6)
    assert pd.crosstab(labels, adata.obs["true"]).max(axis=1).sum() == adata.n_obs

    path = tmp_path / "gmm.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert list(back.obs["gmm"].cat.categories) == list(labels.cat.categories)
    np.testing.assert_array_equal(back.uns["gmm"]["means"], uns["means"])


def test_tl_gmm_fixed_k_diag_and_key_added() -> None:
    adata = _make_adata()
    before = _slot_keys(adata)
    gmm(adata, use_rep="X_zinbvae", n_components=5, covariance_type="diag", key_added="clus")
    assert _slot_keys(adata)["obs"] == before["obs"] | {"clus"}
    assert _slot_keys(adata)["obsm"] == before["obsm"] | {"clus_proba"}
    uns = adata.uns["clus"]
    assert set(uns) == {"params", "weights", "means", "covariances", "log_likelihood"}  # no bic
    assert uns["params"]["n_components"] == 5
    assert uns["covariances"].shape == (5, 4)
    assert adata.obsm["clus_proba"].shape == (adata.n_obs, 5)

    candidates = _make_adata()
    gmm(candidates, n_components=[2, 3, 4])
    assert list(candidates.uns["gmm"]["bic"]["n_components"]) == [2, 3, 4]
    assert candidates.uns["gmm"]["params"]["n_components"] == [2, 3, 4]


def test_tl_gmm_copy_returns_new_object() -> None:
    adata = _make_adata()
    original = adata.copy()
    result = gmm(adata, n_components=3, copy=True)
    assert isinstance(result, ad.AnnData) and result is not adata
    assert_adata_unchanged(original, adata)
    assert "gmm" in result.obs and "gmm_proba" in result.obsm and "gmm" in result.uns
    # a view is fine with copy=True, and is left a view
    view = adata[:100]
    from_view = gmm(view, n_components=2, copy=True)
    assert view.is_view and "gmm" not in view.obs
    assert from_view.n_obs == 100 and not from_view.is_view


def _nan_embedding(adata: ad.AnnData) -> ad.AnnData:
    adata.obsm["X_zinbvae"][[3, 7]] = np.nan
    return adata


def _inf_embedding(adata: ad.AnnData) -> ad.AnnData:
    adata.obsm["X_zinbvae"][5, 0] = np.inf
    return adata


BAD_INPUTS = {
    "missing_rep": (lambda a: a, {"use_rep": "X_scvi"}, KeyError, "X_pca"),
    "nan": (_nan_embedding, {}, ValueError, "NaN or infinite values in 2 of 300 cells"),
    "inf": (_inf_embedding, {}, ValueError, "NaN or infinite"),
    "too_many_components": (lambda a: a, {"n_components": 301}, ValueError, "number of cells"),
    "too_many_candidates": (lambda a: a, {"n_components": [2, 400]}, ValueError, "n_components"),
    "one_cell": (lambda a: a[:1].copy(), {}, ValueError, "at least 2 cells"),
    "bad_covariance_type": (lambda a: a, {"covariance_type": "tied"}, ValueError, "tied"),
    "bad_tol": (lambda a: a, {"n_components": 2, "tol": -1.0}, ValueError, "tol"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_tl_gmm_bad_input_raises_and_leaves_adata_unchanged(case: str) -> None:
    prepare, kwargs, error, message = BAD_INPUTS[case]
    adata = prepare(_make_adata())
    original = snapshot(adata)
    with pytest.raises(error, match=message):
        gmm(adata, **kwargs)
    assert_adata_unchanged(original, adata)


def test_tl_gmm_view_without_copy_raises() -> None:
    parent = _make_adata()
    original_parent = snapshot(parent)
    view = parent[:50]
    with pytest.raises(ValueError, match=r"view.*\.copy\(\)"):
        gmm(view, n_components=2)
    assert view.is_view
    assert "gmm" not in view.obs and "gmm" not in view.uns
    assert_adata_unchanged(original_parent, parent)
