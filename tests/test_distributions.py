"""Count log-likelihoods against scipy.stats in float64, limits, gradients and sample moments."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import torch
from scipy import stats

from scvae.distributions import (
    log_nb,
    log_poisson,
    log_zinb,
    sample_nb,
    sample_poisson,
    sample_zinb,
)

X = np.array([0, 1, 2, 5, 17, 100, 1000, 12345], dtype=np.float64)
MUS = [1e-8, 1e-3, 0.5, 3.0, 250.0, 1e5]
THETAS = [1e-4, 0.05, 1.0, 12.0, 1e3, 1e6]


def t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def scipy_nb(x, mu, theta):
    return stats.nbinom.logpmf(x, theta, theta / (theta + mu))


def exact_nb(x, mu, theta):
    """log NB in 50-digit arithmetic: the reference where scipy's p = theta/(theta+mu) rounds."""
    mpmath.mp.dps = 50
    out = []
    for xi in np.atleast_1d(x):
        xi, m, th = mpmath.mpf(float(xi)), mpmath.mpf(mu), mpmath.mpf(theta)
        value = (
            mpmath.loggamma(xi + th)
            - mpmath.loggamma(th)
            - mpmath.loggamma(xi + 1)
            + th * mpmath.log(th / (th + m))
            + xi * mpmath.log(m / (th + m))
        )
        out.append(float(value))
    return np.array(out)


@pytest.mark.parametrize("mu", MUS)
@pytest.mark.parametrize("theta", THETAS)
def test_log_nb_matches_exact(mu: float, theta: float) -> None:
    ours = log_nb(t(X), t(mu), t(theta)).numpy()
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, exact_nb(X, mu, theta), rtol=1e-9, atol=1e-9)


# scipy's p = theta/(theta+mu) rounds towards 1 as theta/mu grows and scipy loses digits; it
# has none left beyond theta/mu ~ 1e9, where only the exact reference above is meaningful.
SCIPY_CASES = [(m, th) for m in MUS for th in THETAS if th / m < 1e9]


@pytest.mark.parametrize(("mu", "theta"), SCIPY_CASES)
def test_log_nb_matches_scipy(mu: float, theta: float) -> None:
    """scipy.stats.nbinom in float64, tolerance widening with theta/mu as scipy loses digits."""
    rtol = 1e-9 if theta / mu < 1e4 else 1e-6
    ours = log_nb(t(X), t(mu), t(theta)).numpy()
    np.testing.assert_allclose(ours, scipy_nb(X, mu, theta), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("mu", MUS)
def test_log_poisson_matches_scipy(mu: float) -> None:
    np.testing.assert_allclose(
        log_poisson(t(X), t(mu)).numpy(), stats.poisson.logpmf(X, mu), rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("mu", MUS)
@pytest.mark.parametrize("theta", THETAS)
@pytest.mark.parametrize("pi", [1e-6, 0.1, 0.5, 0.97])
def test_log_zinb_matches_mixture(mu: float, theta: float, pi: float) -> None:
    logit = np.log(pi) - np.log1p(-pi)
    ours = log_zinb(t(X), t(mu), t(theta), t(logit)).numpy()
    nb = exact_nb(X, mu, theta)
    ref = np.where(X == 0, np.logaddexp(np.log(pi), np.log1p(-pi) + nb), np.log1p(-pi) + nb)
    np.testing.assert_allclose(ours, ref, rtol=1e-7, atol=1e-7)


def test_zinb_tends_to_nb_when_gate_closes() -> None:
    mu, theta = t([[0.3, 4.0, 80.0]]), t([[0.5, 2.0, 30.0]])
    x = t([[0.0], [1.0], [7.0], [40.0]])
    nb = log_nb(x, mu, theta)
    gaps = []
    for logit in [-10.0, -30.0, -60.0, -120.0]:
        gaps.append(torch.max(torch.abs(log_zinb(x, mu, theta, t(logit)) - nb)).item())
    assert gaps == sorted(gaps, reverse=True)  # the gap closes as the gate closes
    assert gaps[-1] < 1e-12


def test_nb_tends_to_poisson_for_large_theta() -> None:
    x, mu = t(X), t(3.0)
    # the NB-Poisson gap is O(mu^2 / theta): 1e-6 here
    np.testing.assert_allclose(
        log_nb(x[:5], mu, t(1e7)).numpy(), log_poisson(x[:5], mu).numpy(), rtol=1e-5, atol=1e-5
    )


def test_precomputed_log_factorial_is_the_same() -> None:
    x = t(X)
    lf = torch.lgamma(x + 1)
    np.testing.assert_array_equal(
        log_zinb(x, t(2.0), t(3.0), t(-1.0), log_x_factorial=lf).numpy(),
        log_zinb(x, t(2.0), t(3.0), t(-1.0)).numpy(),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_finite_at_extremes(dtype: torch.dtype) -> None:
    x = torch.tensor([0.0, 0.0, 1.0, 3.0, 1e4], dtype=dtype)
    for mu0, theta0, logit0 in [(1e-8, 1e-4, -30.0), (1e5, 1e6, 30.0), (1e-3, 1e5, 0.0)]:
        mu = torch.full_like(x, mu0, requires_grad=True)
        theta = torch.full_like(x, theta0, requires_grad=True)
        logit = torch.full_like(x, logit0, requires_grad=True)
        total = log_zinb(x, mu, theta, logit).sum() + log_nb(x, mu, theta).sum()
        total = total + log_poisson(x, mu).sum()
        total.backward()
        for g in (mu.grad, theta.grad, logit.grad):
            assert torch.all(torch.isfinite(g)), (mu0, theta0, logit0, g)


def test_sample_moments() -> None:
    torch.manual_seed(0)
    n = 200_000
    mu, theta = torch.full((n,), 6.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
    y = sample_nb(mu, theta)
    assert abs(y.mean().item() - 6.0) < 0.05
    assert abs(y.var().item() - (6.0 + 36.0 / 2.0)) < 0.5
    p = sample_poisson(mu)
    assert abs(p.var().item() - 6.0) < 0.1
    pi = 0.3
    z = sample_zinb(mu, theta, torch.tensor(np.log(pi / (1 - pi)), dtype=torch.float64))
    expected_zero = pi + (1 - pi) * (2.0 / 8.0) ** 2.0
    assert abs((z == 0).double().mean().item() - expected_zero) < 0.005
    assert abs(z.mean().item() - (1 - pi) * 6.0) < 0.05


# ------------------------------------------------------------------ sparse (non-zero) fast paths
def _sparse_case(seed: int = 0, k: int | None = None):
    g = torch.Generator().manual_seed(seed)
    lead = () if k is None else (k,)
    B, G = 7, 40
    x = torch.poisson(torch.rand(B, G, generator=g, dtype=torch.float64) * 3)
    x[x < 2] = 0  # mostly zeros, like real counts
    x[3] = 0  # an all-zero cell
    log_mu = torch.randn(*lead, B, G, generator=g, dtype=torch.float64) * 2
    return x, log_mu, g, lead, B, G


@pytest.mark.parametrize("k", [None, 3])
@pytest.mark.parametrize("theta_shape", ["gene", "gene-batch", "gene-cell"])
def test_sparse_sums_equal_dense_formulas(k, theta_shape) -> None:
    from scvae.distributions import (
        NonZeros,
        log_gaussian_sum,
        log_nb_sum,
        log_poisson_sum,
        log_zinb_sum,
    )

    x, log_mu, g, lead, B, G = _sparse_case(1, k)
    shape = {"gene": (G,), "gene-batch": (B, G), "gene-cell": (*lead, B, G)}[theta_shape]
    log_theta = torch.randn(*shape, generator=g, dtype=torch.float64)
    zi = torch.randn(*lead, B, G, generator=g, dtype=torch.float64)
    for t in (log_mu, log_theta, zi):
        t.requires_grad_(True)
    mu, theta = torch.exp(log_mu), torch.exp(log_theta)
    nz = NonZeros.from_dense(x)
    pairs = [
        (log_poisson_sum(nz, log_mu), log_poisson(x, mu).sum(-1)),
        (log_nb_sum(nz, log_mu, log_theta), log_nb(x, mu, theta).sum(-1)),
        (log_zinb_sum(nz, log_mu, log_theta, zi), log_zinb(x, mu, theta, zi).sum(-1)),
    ]
    inputs = (log_mu, log_theta, zi)
    weights = torch.randn(*lead, B, generator=g, dtype=torch.float64)  # a generic upstream grad
    for sparse, dense in pairs:
        assert sparse.shape == (*lead, B)
        torch.testing.assert_close(sparse, dense, rtol=1e-12, atol=1e-10)
        grads_sparse = torch.autograd.grad(
            (weights * sparse).sum(), inputs, allow_unused=True, retain_graph=True
        )
        grads_dense = torch.autograd.grad(
            (weights * dense).sum(), inputs, allow_unused=True, retain_graph=True
        )
        for a, b in zip(grads_sparse, grads_dense, strict=True):
            if b is not None:
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # Gaussian on non-count data with the same sparsity
    values = x * 0.37
    nz_values = NonZeros.from_dense(values)
    nz_values = NonZeros(
        nz_values.row, nz_values.col, nz_values.x, torch.zeros(B, dtype=x.dtype), B
    )
    log_var = torch.randn(G, generator=g, dtype=torch.float64)
    dense = torch.distributions.Normal(log_mu, torch.exp(0.5 * log_var)).log_prob(values).sum(-1)
    torch.testing.assert_close(log_gaussian_sum(nz_values, log_mu, log_var), dense)


def test_nb_family_sum_passes_gradcheck() -> None:
    """Finite differences against the hand-written backward of the fused NB/ZINB sum."""
    from scvae.distributions import NonZeros, log_nb_sum, log_zinb_sum

    x, log_mu, g, _, B, G = _sparse_case(2, None)
    nz = NonZeros.from_dense(x)
    log_theta = torch.randn(G, generator=g, dtype=torch.float64)
    zi = torch.randn(B, G, generator=g, dtype=torch.float64)
    for t_ in (log_mu, log_theta, zi):
        t_.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: log_nb_sum(nz, a, b), (log_mu, log_theta))
    assert torch.autograd.gradcheck(
        lambda a, b, c: log_zinb_sum(nz, a, b, c), (log_mu, log_theta, zi)
    )


def test_sparse_sums_at_extremes_match_the_exact_reference() -> None:
    """Tiny/huge means and dispersions, where softplus/log1p forms could lose digits."""
    from scvae.distributions import NonZeros, log_nb_sum, log_zinb_sum

    x = t([[0.0, 1.0, 0.0, 17.0, 1000.0, 0.0]])
    mus = t([[1e-8, 1e-3, 250.0, 1e5, 3.0, 1e5]])
    thetas = t([1e-4, 1e6, 12.0, 0.05, 1e3, 1.0])
    pairs = zip(x[0].tolist(), mus[0].tolist(), thetas.tolist(), strict=True)
    exact = sum(exact_nb(xi, m, th)[0] for xi, m, th in pairs)
    nz = NonZeros.from_dense(x)
    value = log_nb_sum(nz, torch.log(mus), torch.log(thetas)).item()
    np.testing.assert_allclose(value, exact, rtol=1e-9)
    closed = log_zinb_sum(nz, torch.log(mus), torch.log(thetas), t([[-200.0] * 6])).item()
    np.testing.assert_allclose(closed, exact, rtol=1e-9)


def test_module_sparse_and_dense_likelihoods_agree() -> None:
    from scvae.distributions import NonZeros
    from scvae.minibatch import Minibatch
    from scvae.module.vae import VAEModule

    torch.manual_seed(0)
    x = torch.poisson(torch.rand(16, 30) * 4)
    x[x < 3] = 0
    x[:, 0] += 1  # no empty cell (observed library)
    batch = torch.randint(2, (16,))
    for likelihood in ("zinb", "nb", "poisson", "gaussian"):
        for dispersion in ("gene", "gene-batch", "gene-cell"):
            module = VAEModule(
                30, 2, torch.zeros(2), torch.ones(2), likelihood=likelihood, dispersion=dispersion
            ).eval()
            inf = module.inference(Minibatch.from_dense(x, batch), n_samples=4)
            px = module.generative(inf.z, inf.log_library, batch)
            dense = px.log_likelihood(x)
            sparse = px.log_likelihood(None, nz=NonZeros.from_dense(x))
            torch.testing.assert_close(sparse, dense, rtol=2e-5, atol=2e-3)


# ----------------------------------------------------------------- observation-model classes
def _observations(G: int = 7, N: int = 5) -> dict:
    from scvae.distributions import NB, ZINB, Gaussian, Poisson

    g = torch.Generator().manual_seed(11)
    log_mu = torch.randn(N, G, generator=g, dtype=torch.float64)
    # theta >= ~1: the sample variance of heavier-tailed NBs needs far more draws
    log_theta = 1.0 + 0.5 * torch.randn(G, generator=g, dtype=torch.float64)
    zi = torch.randn(N, G, generator=g, dtype=torch.float64)
    return {
        "poisson": Poisson(log_mu),
        "nb": NB(log_mu, log_theta),
        "zinb": ZINB(log_mu, log_theta, zi),
        "gaussian": Gaussian(log_mu, log_theta),
    }


@pytest.mark.parametrize("name", ["poisson", "nb", "zinb", "gaussian"])
def test_observation_model_mean_and_variance_match_samples(name: str) -> None:
    """Monte-Carlo moments of ``sample()`` agree with ``mean`` and ``variance``."""
    px = _observations()[name]
    torch.manual_seed(0)
    draws = torch.stack([px.sample() for _ in range(20000)])  # (S, N, G)
    torch.testing.assert_close(draws.mean(0), px.mean, rtol=0.05, atol=0.05)
    torch.testing.assert_close(draws.var(0), px.variance, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("name", ["poisson", "nb", "zinb", "gaussian"])
def test_observation_model_sparse_sum_equals_dense_log_prob(name: str) -> None:
    from scvae.distributions import NonZeros

    px = _observations()[name]
    torch.manual_seed(1)
    x = px.sample().round().clamp_min(0)  # counts (Gaussian: any non-negative values)
    nz = NonZeros.from_dense(x)
    if name == "gaussian":
        nz = NonZeros(nz.row, nz.col, nz.x, torch.zeros(x.shape[0], dtype=x.dtype), x.shape[0])
    torch.testing.assert_close(px.log_likelihood(None, nz=nz), px.log_prob(x).sum(-1))
    assert px.log_likelihood(x).shape == (x.shape[0],)


def test_observation_model_lookup_is_the_only_name_comparison() -> None:
    from scvae.distributions import NB, ZINB, Gaussian, Poisson, observation_model

    assert [observation_model(n) for n in ("zinb", "nb", "poisson", "gaussian")] == [
        ZINB,
        NB,
        Poisson,
        Gaussian,
    ]
    with pytest.raises(ValueError, match="likelihood='zip' is not one of zinb, nb, poisson"):
        observation_model("zip")
    import pathlib

    import scvae

    root = pathlib.Path(scvae.__file__).parent
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if any(f'== "{n}"' in path.read_text() for n in ("zinb", "nb", "poisson", "gaussian"))
        or any("likelihood == " in line for line in path.read_text().splitlines())
    ]
    assert offenders == []
