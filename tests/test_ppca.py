"""Probabilistic PCA: closed-form ML fit against sklearn and brute-force dense algebra."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse
import scipy.stats
import torch
from sklearn.decomposition import PCA

from scvae.module.ppca import PPCAEstimate, fit_ppca, log_likelihood, posterior

N_CELLS, N_GENES, N_LATENT = 400, 30, 4


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is fastest and immune to oversubscribed CI cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _simulate(
    n: int = N_CELLS, G: int = N_GENES, L: int = N_LATENT, *, dropout: float = 0.4, seed: int = 0
) -> np.ndarray:
    """Low-rank Gaussian data, shifted away from zero, with a fraction of exact zeros."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, L))  # (n, L)
    loadings = rng.normal(size=(L, G)) * np.linspace(4.0, 1.0, L)[:, None]  # (L, G)
    X = z @ loadings + 0.7 * rng.normal(size=(n, G)) + rng.uniform(1.0, 3.0, size=G)  # (n, G)
    X[rng.random((n, G)) < dropout] = 0.0
    return X


def _torch_csr(X: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(X).to_sparse_csr()


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return _simulate()


@pytest.fixture(scope="module")
def sk_pca(data: np.ndarray) -> PCA:
    return PCA(n_components=N_LATENT, svd_solver="full").fit(data)


INPUTS = {
    "dense_numpy": lambda X: X,
    "dense_torch_float32": lambda X: torch.from_numpy(X).float(),
    "scipy_csr": scipy.sparse.csr_matrix,
    "torch_csr": _torch_csr,
}


@pytest.mark.parametrize("solver", ["eigh", "randomized"])
@pytest.mark.parametrize("kind", ["dense_numpy", "scipy_csr", "torch_csr"])
def test_subspace_matches_sklearn(data: np.ndarray, sk_pca: PCA, kind: str, solver: str) -> None:
    params = fit_ppca(INPUTS[kind](data), N_LATENT, ddof=1, solver=solver)
    angles = scipy.linalg.subspace_angles(params.W.numpy(), sk_pca.components_.T)  # (L,)
    assert np.max(angles) < 1e-7
    np.testing.assert_allclose(params.eigenvalues.numpy(), sk_pca.explained_variance_, rtol=1e-10)
    np.testing.assert_allclose(params.mean.numpy(), sk_pca.mean_, rtol=1e-12)


@pytest.mark.parametrize("solver", ["eigh", "randomized"])
@pytest.mark.parametrize("kind", ["dense_numpy", "dense_torch_float32", "scipy_csr", "torch_csr"])
def test_log_likelihood_matches_sklearn_score_samples(
    data: np.ndarray, kind: str, solver: str
) -> None:
    X = INPUTS[kind](data)
    # sklearn sees exactly the values we see (float32 input is rounded before both fits)
    dense = data.astype(np.float32).astype(np.float64) if kind == "dense_torch_float32" else data
    sk = PCA(n_components=N_LATENT, svd_solver="full").fit(dense)
    params = fit_ppca(X, N_LATENT, ddof=1, solver=solver)
    ours = log_likelihood(params, X).numpy()  # (N,)
    theirs = sk.score_samples(dense)  # (N,)
    assert ours.shape == (N_CELLS,)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    np.testing.assert_allclose(float(params.sigma2), sk.noise_variance_, rtol=1e-8)


def test_log_likelihood_equals_explicit_gaussian(data: np.ndarray) -> None:
    params = fit_ppca(data, N_LATENT)  # ddof=0, the ML estimate
    W, mu, sigma2 = params.W.numpy(), params.mean.numpy(), float(params.sigma2)
    C = W @ W.T + sigma2 * np.eye(N_GENES)  # (G, G)
    expected = scipy.stats.multivariate_normal(mean=mu, cov=C).logpdf(data)  # (N,)
    np.testing.assert_allclose(log_likelihood(params, data).numpy(), expected, rtol=1e-10)
    sparse = log_likelihood(params, scipy.sparse.csr_matrix(data)).numpy()
    np.testing.assert_allclose(sparse, expected, rtol=1e-10)


def test_posterior_equals_brute_force_gaussian_conditioning() -> None:
    X = _simulate(n=60, G=5, L=2, dropout=0.0, seed=3)
    params = fit_ppca(X, 2)
    W, mu, sigma2 = params.W.numpy(), params.mean.numpy(), float(params.sigma2)
    # joint of (z, x): z ~ N(0, I), x = W z + mu + eps; condition z on x explicitly
    C = W @ W.T + sigma2 * np.eye(5)  # (G, G) = Cov[x]
    cross = W.T  # (L, G) = Cov[z, x]
    expected_mean = (cross @ np.linalg.solve(C, (X - mu).T)).T  # (N, L)
    expected_cov = np.eye(2) - cross @ np.linalg.solve(C, cross.T)  # (L, L)
    for X_in in (X, scipy.sparse.csr_matrix(X)):
        mean, cov = posterior(params, X_in)
        assert mean.shape == (60, 2) and cov.shape == (2, 2)
        np.testing.assert_allclose(mean.numpy(), expected_mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(cov.numpy(), expected_cov, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("solver", ["eigh", "randomized"])
def test_sparse_and_dense_give_same_params(data: np.ndarray, solver: str) -> None:
    tol = 1e-12  # tight Ritz residuals, so that both randomized runs agree to ~1e-10
    dense = fit_ppca(data, N_LATENT, solver=solver, tol=tol)
    for X_sparse in (
        scipy.sparse.csr_matrix(data),
        _torch_csr(data),
        torch.from_numpy(data).to_sparse_coo(),
    ):
        sparse = fit_ppca(X_sparse, N_LATENT, solver=solver, tol=tol)
        for name in ("mean", "W", "sigma2", "eigenvalues", "total_variance"):
            np.testing.assert_allclose(
                getattr(sparse, name).numpy(), getattr(dense, name).numpy(), rtol=1e-8, atol=1e-10
            )
        assert sparse.n_samples == dense.n_samples == N_CELLS


@pytest.mark.parametrize("ddof", [0, 1])
def test_sigma2_is_mean_of_discarded_eigenvalues(data: np.ndarray, ddof: int) -> None:
    params = fit_ppca(data, N_LATENT, ddof=ddof)
    S = np.cov(data, rowvar=False, ddof=ddof)  # (G, G)
    eigenvalues = np.linalg.eigvalsh(S)[::-1]  # (G,) decreasing
    np.testing.assert_allclose(float(params.sigma2), eigenvalues[N_LATENT:].mean(), rtol=1e-10)
    np.testing.assert_allclose(params.eigenvalues.numpy(), eigenvalues[:N_LATENT], rtol=1e-10)
    np.testing.assert_allclose(float(params.total_variance), np.trace(S), rtol=1e-12)
    # W^T W = Lambda_L - sigma^2 I (orthogonal columns)
    WtW = (params.W.mT @ params.W).numpy()  # (L, L)
    np.testing.assert_allclose(
        WtW, np.diag(eigenvalues[:N_LATENT] - eigenvalues[N_LATENT:].mean()), atol=1e-9
    )


def test_ddof0_is_a_likelihood_maximum(data: np.ndarray) -> None:
    ml = fit_ppca(data, N_LATENT)  # ddof=0
    unbiased = fit_ppca(data, N_LATENT, ddof=1)
    best = log_likelihood(ml, data).sum()
    assert best > log_likelihood(unbiased, data).sum()
    for scale_W, scale_sigma2 in ((1.02, 1.0), (0.98, 1.0), (1.0, 1.05), (1.0, 0.95)):
        perturbed = PPCAEstimate(
            mean=ml.mean,
            W=ml.W * scale_W,
            sigma2=ml.sigma2 * scale_sigma2,
            eigenvalues=ml.eigenvalues,
            total_variance=ml.total_variance,
            n_samples=ml.n_samples,
            ddof=0,
        )
        assert log_likelihood(perturbed, data).sum() < best
    shifted = PPCAEstimate(**{**ml.__dict__, "mean": ml.mean + 0.05})
    assert log_likelihood(shifted, data).sum() < best


@pytest.mark.parametrize("sparse", [False, True])
def test_many_genes_use_top_eigenpairs_only(sparse: bool) -> None:
    """G > 4096 takes the randomized path; check it against the exact n x n Gram spectrum."""
    n, G, L = 120, 5000, 3
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, L)) @ (3.0 * rng.normal(size=(L, G))) + rng.normal(size=(n, G))
    X[rng.random((n, G)) < 0.5] = 0.0
    X_in = scipy.sparse.csr_matrix(X) if sparse else X
    params = fit_ppca(X_in, L, ddof=1)
    Xc = X - X.mean(axis=0)  # (n, G)
    gram_eigenvalues = np.linalg.eigvalsh(Xc @ Xc.T / (n - 1))[::-1]  # (n,) same nonzero spectrum
    np.testing.assert_allclose(params.eigenvalues.numpy(), gram_eigenvalues[:L], rtol=1e-9)
    expected_sigma2 = (gram_eigenvalues.sum() - gram_eigenvalues[:L].sum()) / (G - L)
    np.testing.assert_allclose(float(params.sigma2), expected_sigma2, rtol=1e-9)
    _, _, Vt = np.linalg.svd(Xc, full_matrices=False)  # exact top directions
    angles = scipy.linalg.subspace_angles(params.W.numpy(), Vt[:L].T)
    assert np.max(angles) < 1e-6
    assert log_likelihood(params, X_in).shape == (n,)


def test_seeded_and_deterministic(data: np.ndarray) -> None:
    first = fit_ppca(scipy.sparse.csr_matrix(data), N_LATENT, solver="randomized", seed=5)
    again = fit_ppca(scipy.sparse.csr_matrix(data), N_LATENT, solver="randomized", seed=5)
    assert torch.equal(first.W, again.W) and torch.equal(first.sigma2, again.sigma2)


def test_bad_input_raises(data: np.ndarray) -> None:
    with pytest.raises(ValueError, match="n_components"):
        fit_ppca(data, N_GENES)
    with pytest.raises(ValueError, match="n_components"):
        fit_ppca(data, 0)
    with pytest.raises(ValueError, match="ddof"):
        fit_ppca(data[:1], 2, ddof=1)
    bad = data.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_ppca(bad, N_LATENT)
    params = fit_ppca(data, N_LATENT)
    with pytest.raises(ValueError, match="features"):
        log_likelihood(params, data[:, :-1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(data: np.ndarray) -> None:
    cpu = fit_ppca(data, N_LATENT)
    for X in (torch.from_numpy(data).cuda(), _torch_csr(data).cuda()):
        gpu = fit_ppca(X, N_LATENT, solver="randomized")
        assert gpu.W.is_cuda
        np.testing.assert_allclose(gpu.W.cpu().numpy(), cpu.W.numpy(), rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(
            log_likelihood(gpu, X).cpu().numpy(), log_likelihood(cpu, data).numpy(), rtol=1e-8
        )
