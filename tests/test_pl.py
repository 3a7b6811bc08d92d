"""scvae.pl: the plots return their Axes, save files, refuse bad input; latent_kl's numbers."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # never open a window, whatever MPLBACKEND says

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from matplotlib.axes import Axes
from torch.distributions import Normal, kl_divergence

import scvae
from scvae.minibatch import Minibatch


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


# ---------------------------------------------------------------------------------- history
def test_history_returns_one_axes_per_key_and_saves(trained, tmp_path: Path) -> None:
    out = tmp_path / "history.png"
    axs = scvae.pl.history(trained, show=False, save=out)
    assert len(axs) == 3 and all(isinstance(a, Axes) for a in axs)
    assert out.stat().st_size > 5_000
    # train and validation curves, one point per epoch
    n_epochs = len(trained.history)
    lines = axs[0].get_lines()
    assert [len(line.get_xdata()) for line in lines[:2]] == [n_epochs, n_epochs]
    np.testing.assert_allclose(lines[0].get_ydata(), trained.history["train_elbo"])
    # the KL weight on a twin axis of the KL panel
    twins = [a for a in axs[0].figure.axes if a not in axs]
    assert len(twins) == 1 and twins[0].get_ylabel() == "KL weight"


def test_history_kl_is_sum_of_both_terms_and_skip_epochs(trained) -> None:
    axs = scvae.pl.history(trained, keys="kl", skip_epochs=5, kl_weight=False, show=False)
    (axis,) = axs
    expected = (trained.history["train_kl_z"] + trained.history["train_kl_l"]).iloc[5:]
    np.testing.assert_allclose(axis.get_lines()[0].get_ydata(), expected)
    assert len(axis.figure.axes) == 1  # no twin axis


def test_history_marks_best_epoch(trained, monkeypatch) -> None:
    monkeypatch.setitem(trained.training, "best_epoch", 30)
    axs = scvae.pl.history(trained, keys=("elbo",), show=False)
    assert any(list(line.get_xdata()) == [30, 30] for line in axs[0].get_lines())


def test_history_draws_into_given_axes(trained) -> None:
    fig, given = plt.subplots(1, 2)
    axs = scvae.pl.history(trained, keys=("elbo", "loss"), ax=given, show=False)
    assert axs == list(given) and axs[0].figure is fig
    with pytest.raises(ValueError, match="must be 3 matplotlib Axes"):
        scvae.pl.history(trained, keys=("elbo", "loss", "kl_z"), ax=given, show=False)


def test_history_rejects_bad_input(sim: AnnData, trained) -> None:
    with pytest.raises(ValueError, match="Unknown keys"):
        scvae.pl.history(trained, keys=("elbo", "likelihood"), show=False)
    with pytest.raises(ValueError, match="skip_epochs"):
        scvae.pl.history(trained, skip_epochs=10_000, show=False)
    with pytest.raises(ValueError, match="keys is empty"):
        scvae.pl.history(trained, keys=(), show=False)
    with pytest.raises(RuntimeError, match="not trained"):
        scvae.pl.history(scvae.ZINBVAE(sim), show=False)
    with pytest.raises(TypeError, match="needs a fitted scvae VAE"):
        scvae.pl.history(scvae.PPCA(sim, n_latent=2).fit(), show=False)


def test_history_needs_a_training_record(trained, monkeypatch) -> None:
    monkeypatch.setattr(trained, "history", pd.DataFrame())
    with pytest.raises(ValueError, match="history is empty"):
        scvae.pl.history(trained, show=False)


def test_show_true_does_not_block(trained) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Agg: "non-interactive, cannot be shown"
        assert scvae.pl.history(trained, show=True) is None
        assert scvae.pl.latent_kl(trained, show=True) is None


# -------------------------------------------------------------------------------- latent_kl
def test_latent_kl_sums_to_the_elbo_kl_term(sim: AnnData, trained) -> None:
    table = trained.latent_kl()
    n_latent = trained.config.n_latent
    assert list(table.columns) == ["kl", "activity", "active"]
    assert list(table.index) == list(range(n_latent)) and table.index.name == "dimension"
    # the ELBO's KL(q(z)||p(z)) term at KL weight 1, on the same cells, from module.loss
    data = trained._cells(None)
    x = torch.as_tensor(data.X.toarray())
    b = torch.as_tensor(data.batch_index)
    module = trained.module.eval()
    with torch.no_grad():
        batch = Minibatch.from_dense(x, b)
        kl_z = module.loss(batch, kl_weight=1.0).kl_z  # (N,)
        qz = module.inference(batch).qz
        per_dim = kl_divergence(qz, Normal(torch.zeros_like(qz.loc), torch.ones_like(qz.scale)))
    assert table["kl"].sum() == pytest.approx(float(kl_z.double().mean()), rel=1e-5)
    np.testing.assert_allclose(table["kl"], per_dim.double().mean(0).numpy(), rtol=1e-5)
    assert (table["kl"] >= 0).all()
    # Burda's activity: the variance over cells of the posterior mean
    latent = trained.get_latent().astype(np.float64)
    np.testing.assert_allclose(table["activity"], latent.var(0), rtol=1e-4)
    assert (table["active"] == (table["activity"] > 0.01)).all()
    # other cells and another threshold
    subset = trained.latent_kl(sim[:50], threshold=1e9)
    np.testing.assert_allclose(
        subset["activity"], trained.get_latent(sim[:50]).astype(np.float64).var(0), rtol=1e-4
    )
    assert not subset["active"].any()


def test_latent_kl_plot_sorted_bars(trained, tmp_path: Path) -> None:
    out = tmp_path / "kl.pdf"
    axis = scvae.pl.latent_kl(trained, show=False, save=out)
    assert isinstance(axis, Axes) and out.stat().st_size > 1_000
    heights = [patch.get_height() for patch in axis.patches]
    table = trained.latent_kl()
    np.testing.assert_allclose(heights, np.sort(table["kl"].to_numpy())[::-1])
    assert axis.get_title().startswith(f"{int(table['active'].sum())} of {len(table)} dimensions")
    _, given = plt.subplots()
    assert scvae.pl.latent_kl(trained, ax=given, show=False) is given


def test_latent_kl_needs_a_trained_vae(sim: AnnData) -> None:
    with pytest.raises(RuntimeError, match="not trained"):
        scvae.ZINBVAE(sim).latent_kl()
    with pytest.raises(TypeError, match="needs a fitted scvae VAE"):
        scvae.pl.latent_kl("model", show=False)


# --------------------------------------------------------------------- posterior_predictive
def test_posterior_predictive_statistics(sim: AnnData, trained) -> None:
    stats = scvae.pl.posterior_predictive_stats(trained, sim, n_samples=2, seed=3)
    X = sim.X.toarray().astype(np.float64)
    np.testing.assert_allclose(stats["observed_zeros"], (X == 0).mean(0))
    np.testing.assert_allclose(stats["observed_mean"], X.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["observed_var"], X.var(0), rtol=1e-6)
    draws = trained.sample(sim, n_samples=2, seed=3).astype(np.float64)  # (2, N, G)
    np.testing.assert_allclose(stats["simulated_zeros"], (draws == 0).mean(1).mean(0))
    np.testing.assert_allclose(stats["simulated_mean"], draws.mean(1).mean(0))
    # seeded: the same seed gives the same simulation, another seed another one
    again = scvae.pl.posterior_predictive_stats(trained, sim, n_samples=2, seed=3)
    assert again.equals(stats)
    other = scvae.pl.posterior_predictive_stats(trained, sim, n_samples=2, seed=4)
    assert not other["simulated_mean"].equals(stats["simulated_mean"])
    # a fitted model reproduces the zeros it was trained on, roughly
    assert np.abs(stats["observed_zeros"] - stats["simulated_zeros"]).mean() < 0.15


def test_posterior_predictive_plot(sim: AnnData, trained, tmp_path: Path) -> None:
    out = tmp_path / "ppc.png"
    axs = scvae.pl.posterior_predictive(trained, sim, show=False, save=out)
    assert len(axs) == 2 and all(isinstance(a, Axes) for a in axs)
    assert out.stat().st_size > 5_000
    assert axs[1].get_xscale() == "log" and axs[1].get_yscale() == "log"
    assert len(axs[0].collections[0].get_offsets()) == sim.n_vars  # one dot per gene
    assert scvae.pl.posterior_predictive(trained, show=False) is not None  # training data


def test_posterior_predictive_refuses_models_without_counts(sim: AnnData) -> None:
    gaussian = scvae.GaussianVAE(sim, n_latent=2, n_hidden=16)
    gaussian.fit(max_epochs=1, batch_size=128, progress_bar=False, early_stopping=False)
    with pytest.raises(ValueError, match="GaussianVAE models log-normalized values"):
        scvae.pl.posterior_predictive(gaussian, sim, show=False)
    with pytest.raises(TypeError, match="needs a fitted scvae VAE"):
        scvae.pl.posterior_predictive(scvae.PPCA(sim, n_latent=2).fit(), sim, show=False)
    assert len(gaussian.latent_kl()) == 2  # latent_kl works for every VAE


def test_posterior_predictive_rejects_bad_arguments(sim: AnnData, trained) -> None:
    with pytest.raises(ValueError, match="n_samples"):
        scvae.pl.posterior_predictive(trained, sim, n_samples=0, show=False)
    with pytest.raises(ValueError, match="genes"):
        scvae.pl.posterior_predictive(trained, sim[:, :10], show=False)
