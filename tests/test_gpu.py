"""CUDA: training, scoring and the demo on a GPU. Collected everywhere, run where CUDA exists."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scvae

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_fit_and_score_on_cuda(sim) -> None:
    model = scvae.ZINBVAE(sim, batch_key="batch", n_latent=4, n_hidden=64)
    model.fit(max_epochs=20, batch_size=64, accelerator="gpu", progress_bar=False)
    assert model.device.type == "cuda"
    latent = model.get_latent()
    assert np.all(np.isfinite(latent))
    elbo = model.elbo(sim).mean()
    iwae = model.marginal_log_likelihood(sim, n_samples=50).mean()
    assert elbo <= iwae < 0


def test_minibatches_gathered_on_device(sim) -> None:
    from scvae.data import read_training_data
    from scvae.minibatch import CSRMinibatches

    _, data = read_training_data(sim, layer=None, batch_key="batch")
    loader = CSRMinibatches(data, np.arange(sim.n_obs), batch_size=50, shuffle=False).to("cuda")
    batch = next(iter(loader))
    assert batch.x.is_cuda and batch.batch_index.is_cuda and batch.nz.x.is_cuda
    np.testing.assert_array_equal(batch.x.cpu().numpy(), sim.X[:50].toarray())


def test_same_seed_same_latent_on_cuda(sim) -> None:
    def fit() -> np.ndarray:
        m = scvae.NBVAE(sim, n_latent=3, n_hidden=32)
        m.fit(max_epochs=3, seed=5, accelerator="gpu", progress_bar=False)
        return m.get_latent()

    np.testing.assert_allclose(fit(), fit(), rtol=1e-4, atol=1e-4)


def test_streaming_path_gives_the_same_batches(sim) -> None:
    from scvae.data import read_training_data
    from scvae.minibatch import CSRMinibatches

    _, data = read_training_data(sim, layer=None, batch_key="batch")
    idx = np.arange(sim.n_obs)
    resident = CSRMinibatches(data, idx, batch_size=64, shuffle=True, seed=3).to("cuda")
    streamed = CSRMinibatches(data, idx, batch_size=64, shuffle=True, seed=3).to(
        "cuda", resident=False
    )
    for one, two in zip(resident, streamed, strict=True):
        torch.testing.assert_close(one.batch_index, two.batch_index)
        assert two.x.is_cuda and two.nz.x.is_cuda
        torch.testing.assert_close(one.x, two.x)
        torch.testing.assert_close(one.nz.log_x_factorial, two.nz.log_x_factorial)
