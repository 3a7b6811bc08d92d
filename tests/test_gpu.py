"""CUDA: training, scoring, the minibatch paths and every CUDA branch of the package, on a GPU.

Collected everywhere, run where CUDA exists (``pytest -m gpu``; ``benchmarks/device_check.sh``
runs them on a device machine). ``SCVAE_GPU_TESTS_DEVICE=cpu`` runs the same tests on the CPU
instead (a check of the tests themselves against the API where no GPU is at hand: the CUDA-only
assertions, pinned memory and the every-100-steps finiteness check, are skipped then).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import scvae
from scvae.data import read_training_data
from scvae.minibatch import CSRMinibatches

DEVICE = os.environ.get("SCVAE_GPU_TESTS_DEVICE", "cuda")
ACCELERATOR = "gpu" if DEVICE == "cuda" else "cpu"
CUDA = DEVICE == "cuda"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(CUDA and not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# CUDA's atomic adds (scatter-add in the backward of a gather, index_add_) make float sums
# order-dependent: two identical fits agree to round-off, not bit for bit
TOL = {"rtol": 1e-3, "atol": 1e-3}


def on_device(t: torch.Tensor | None) -> bool:
    return t is not None and t.device.type == DEVICE


def cells(adata) -> tuple[object, np.ndarray]:
    _, data = read_training_data(adata, layer=None, batch_key="batch")
    return data, np.arange(adata.n_obs)


@pytest.fixture(scope="module")
def on_gpu(sim) -> scvae.ZINBVAE:
    """A ZINBVAE trained on the device (with a validation split and early stopping)."""
    model = scvae.ZINBVAE(sim, batch_key="batch", n_latent=4, n_hidden=64)
    model.fit(max_epochs=20, batch_size=64, accelerator=ACCELERATOR, progress_bar=False)
    return model


# ------------------------------------------------------------------------ fit and scoring
def test_fit_and_score_on_cuda(sim, on_gpu) -> None:
    assert on_gpu.device.type == DEVICE
    assert all(p.device.type == DEVICE for p in on_gpu.module.parameters())
    latent = on_gpu.get_latent()
    assert latent.shape == (sim.n_obs, 4) and np.all(np.isfinite(latent))
    elbo = on_gpu.elbo(sim).mean()
    iwae = on_gpu.marginal_log_likelihood(sim, n_samples=50).mean()
    assert elbo <= iwae < 0
    assert np.isfinite(on_gpu.history["train_elbo"]).all()


def test_seeded_scores_repeat_on_cuda(sim, on_gpu) -> None:
    """Scoring forks and seeds the CUDA generator: the same seed, the same draws."""
    np.testing.assert_array_equal(on_gpu.elbo(sim, seed=3), on_gpu.elbo(sim, seed=3))
    assert not np.array_equal(on_gpu.elbo(sim, seed=3), on_gpu.elbo(sim, seed=4))


def test_same_seed_same_latent_on_cuda(sim) -> None:
    def fit() -> np.ndarray:
        m = scvae.NBVAE(sim, n_latent=3, n_hidden=32)
        m.fit(max_epochs=3, seed=5, accelerator=ACCELERATOR, progress_bar=False)
        return m.get_latent()

    np.testing.assert_allclose(fit(), fit(), **TOL)


def test_normalized_expression_and_de_on_cuda(sim, on_gpu) -> None:
    expr = on_gpu.get_normalized_expression(n_samples=2, seed=0)
    assert expr.shape == sim.shape and np.all(np.isfinite(expr.to_numpy()))
    assert (expr.to_numpy() > 0).all()
    np.testing.assert_allclose(
        expr.sum(axis=1).to_numpy(), np.full(sim.n_obs, 1e4), rtol=1e-3
    )  # library_size=1e4
    again = on_gpu.get_normalized_expression(n_samples=2, seed=0)
    np.testing.assert_array_equal(expr.to_numpy(), again.to_numpy())
    de = on_gpu.differential_expression(groupby="cluster", group1="0", n_samples=2)
    assert len(de) == sim.n_vars
    assert np.isfinite(de.select_dtypes("number").to_numpy(dtype=float)).all()


def test_checkpointed_fit_on_cuda(sim, tmp_path) -> None:
    """The checkpoint stores the CUDA generator's state; a finished fit removes its file."""
    model = scvae.NBVAE(sim, n_latent=3, n_hidden=32)
    model.fit(
        max_epochs=2,
        accelerator=ACCELERATOR,
        progress_bar=False,
        checkpoint_dir=tmp_path,
    )
    assert model.device.type == DEVICE
    assert not (tmp_path / "last.ckpt").exists()


def test_divergence_is_caught_on_cuda(sim, monkeypatch) -> None:
    """A NaN loss stops the fit: on a GPU at the checked steps (every 100) and at epoch end."""
    from scvae.module.vae import VAEModule

    loss = VAEModule.loss

    def nan_after_first(self, batch, *, kl_weight=1.0):
        out = loss(self, batch, kl_weight=kl_weight)
        if self.training:
            self._calls = getattr(self, "_calls", 0) + 1
            if self._calls > 1:  # step 1 is not a checked step on a GPU: the epoch sums are
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(VAEModule, "loss", nan_after_first)
    model = scvae.NBVAE(sim, n_latent=3, n_hidden=32)
    with pytest.raises(scvae.TrainingDivergedError):
        model.fit(max_epochs=2, batch_size=64, accelerator=ACCELERATOR, progress_bar=False)


# ------------------------------------------------------------------------------ minibatches
def test_minibatches_gathered_on_device(sim) -> None:
    data, idx = cells(sim)
    loader = CSRMinibatches(data, idx, batch_size=50, shuffle=False).to(DEVICE)
    batch = next(iter(loader))
    assert batch.n_cells == 50 and batch.device.type == DEVICE
    assert on_device(batch.x) and on_device(batch.batch_index)
    for t in (batch.nz.row, batch.nz.col, batch.nz.x, batch.nz.log_x_factorial, batch.nz.offsets):
        assert on_device(t)
    np.testing.assert_array_equal(batch.x.cpu().numpy(), sim.X[:50].toarray())
    np.testing.assert_array_equal(
        batch.batch_index.cpu().numpy(), sim.obs["batch"].cat.codes.to_numpy()[:50]
    )
    dense = torch.zeros(50, sim.n_vars)
    dense[batch.nz.row.cpu(), batch.nz.col.cpu()] = batch.nz.x.cpu()
    np.testing.assert_array_equal(dense.numpy(), sim.X[:50].toarray())


def test_sparse_only_minibatches_on_device(sim) -> None:
    """``dense=False`` serves the non-zeros alone (the sparse-input path)."""
    data, idx = cells(sim)
    loader = CSRMinibatches(data, idx, batch_size=64, shuffle=True, dense=False).to(DEVICE)
    n = 0
    for batch in loader:
        assert batch.x is None and on_device(batch.nz.x)
        n += batch.n_cells
    assert n == sim.n_obs


def test_streaming_path_gives_the_same_batches(sim) -> None:
    data, idx = cells(sim)
    resident = CSRMinibatches(data, idx, batch_size=64, shuffle=True, seed=3).to(DEVICE)
    streamed = CSRMinibatches(data, idx, batch_size=64, shuffle=True, seed=3).to(
        DEVICE, resident=False
    )
    assert streamed.col.device.type == "cpu" and streamed.device.type == DEVICE
    if CUDA:  # the host copy is pinned, for asynchronous copies
        assert all(t.is_pinned() for _, t in streamed._stored())
    for one, two in zip(resident, streamed, strict=True):
        assert two.device.type == DEVICE and on_device(two.x) and on_device(two.nz.x)
        torch.testing.assert_close(one.batch_index, two.batch_index)
        torch.testing.assert_close(one.x, two.x)
        torch.testing.assert_close(one.nz.row, two.nz.row)
        torch.testing.assert_close(one.nz.log_x_factorial, two.nz.log_x_factorial)


def test_streamed_fit_matches_resident_fit_on_cuda(sim, monkeypatch) -> None:
    """Training with the counts in pinned host memory equals training with them on the GPU."""

    def fit() -> np.ndarray:
        m = scvae.NBVAE(sim, n_latent=3, n_hidden=32)
        m.fit(max_epochs=3, seed=2, accelerator=ACCELERATOR, progress_bar=False)
        return m.get_latent()

    resident = fit()
    to = CSRMinibatches.to
    monkeypatch.setattr(
        CSRMinibatches, "to", lambda self, device, resident=None: to(self, device, resident=False)
    )
    np.testing.assert_allclose(fit(), resident, **TOL)


# --------------------------------------------------------------------------- other models
def test_closed_form_models_on_cuda(sim) -> None:
    """PPCA, factor analysis and the GMM fit on the GPU as on the CPU."""
    for make in (
        lambda: scvae.PPCA(sim, n_latent=3),
        lambda: scvae.FactorAnalysis(sim, n_latent=3),
    ):
        cpu = make().fit(accelerator="cpu").get_latent()
        gpu_model = make().fit(accelerator=ACCELERATOR)
        assert gpu_model.device.type == DEVICE
        np.testing.assert_allclose(
            np.abs(gpu_model.get_latent()), np.abs(cpu), rtol=1e-2, atol=1e-2
        )
    adata = sim.copy()
    adata.obsm["X_zinbvae"] = np.random.default_rng(0).normal(size=(sim.n_obs, 3))
    labels = {
        acc: scvae.GMM(adata, n_components=3).fit(accelerator=acc, seed=0).predict()
        for acc in ("cpu", ACCELERATOR)
    }
    assert labels["cpu"].shape == labels[ACCELERATOR].shape == (sim.n_obs,)


@pytest.mark.skipif(not CUDA, reason="sync debug mode is CUDA's")
def test_training_step_does_not_sync_on_cuda(sim) -> None:
    """Gather, loss and backward of one minibatch queue GPU work without waiting for it."""
    model = scvae.ZINBVAE(sim, batch_key="batch", n_latent=4, n_hidden=32)
    model.fit(max_epochs=1, accelerator=ACCELERATOR, progress_bar=False)
    module = model.module.train()
    data, idx = cells(sim)
    loader = CSRMinibatches(data, idx, batch_size=64, shuffle=True).to(DEVICE)
    batches = iter(loader)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch = next(batches)
        module.loss(batch, kl_weight=0.5).loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
