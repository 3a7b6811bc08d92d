"""Training: the KL schedule, the split, early stopping, BatchNorm recalibration, interrupts."""

from __future__ import annotations

import logging
import os
import signal
import warnings
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from anndata import AnnData

import scvae
from scvae.data import read_training_data
from scvae.minibatch import CSRMinibatches
from scvae.module.vae import VAEModule
from scvae.train import (
    EarlyStoppingAfterWarmup,
    default_max_epochs,
    kl_weight,
    recalibrate_batchnorm,
    split_cells,
)


@pytest.fixture
def small() -> AnnData:
    return scvae.datasets.simulate(n_cells=120, n_genes=30, n_batches=2, seed=3)


# ------------------------------------------------------------------------- pure functions
def test_kl_weight_rises_linearly_then_stays_at_one() -> None:
    assert [kl_weight(s, 4) for s in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert kl_weight(0, 0) == 1.0
    assert kl_weight(10, -1) == 1.0


def test_split_is_seeded_disjoint_and_complete() -> None:
    train, val = split_cells(101, 0.9, seed=4)
    assert len(train) == 91 and len(val) == 10
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(101))
    again = split_cells(101, 0.9, seed=4)
    np.testing.assert_array_equal(again[0], train)
    everything, none = split_cells(10, 1.0, seed=0)
    assert len(everything) == 10 and len(none) == 0


def test_default_epochs_follow_scvi_rule() -> None:
    assert default_max_epochs(1000) == 400
    assert default_max_epochs(40_000) == 200
    assert default_max_epochs(10**8) == 10


# ------------------------------------------------------------------------- early stopping
def _stub(values: list[float], warm_from: int) -> tuple[EarlyStoppingAfterWarmup, list[int]]:
    stopper = EarlyStoppingAfterWarmup(patience=2)
    module = torch.nn.Linear(1, 1)
    stopped_at = []
    for epoch, value in enumerate(values):
        torch.nn.init.constant_(module.weight, float(epoch))
        trainer = SimpleNamespace(
            callback_metrics={"validation_elbo": torch.tensor(value)},
            sanity_checking=False,
            should_stop=False,
        )
        plan = SimpleNamespace(module=module, current_epoch=epoch, warmup_done=epoch >= warm_from)
        stopper.on_validation_end(trainer, plan)
        if trainer.should_stop:
            stopped_at.append(epoch)
            break
    stopper.on_train_end(trainer, plan)
    return stopper, stopped_at, module


def test_early_stopping_reads_the_logged_metric_and_restores_the_best_weights() -> None:
    # epoch 0 is the best value but falls in the warm-up: it never counts
    stopper, stopped_at, module = _stub([-1.0, -9.0, -5.0, -6.0, -7.0, -2.0], warm_from=1)
    assert stopper.best_epoch == 2 and stopper.best == -5.0
    assert stopped_at == [4]  # two epochs without improvement after the best
    assert float(module.weight.detach()) == 2.0  # the weights of the best epoch


def test_fit_stops_early_and_records_the_best_epoch(small: AnnData) -> None:
    model = scvae.ZINBVAE(small, n_hidden=16, n_latent=3)
    model.fit(max_epochs=200, patience=2, n_steps_kl_warmup=0, lr=3e-2, progress_bar=False)
    record = model.training
    assert record["n_epochs_trained"] < 200
    best = record["best_epoch"]
    history = model.history["validation_elbo"]
    assert history.idxmax() == best
    assert record["n_epochs_trained"] == best + 1 + 2


def test_train_size_one_trains_on_every_cell_without_early_stopping(small: AnnData) -> None:
    model = scvae.ZINBVAE(small, n_hidden=16, n_latent=3)
    model.fit(max_epochs=3, train_size=1.0, progress_bar=False)
    assert model.training["early_stopping"] is False
    assert len(model.train_indices) == small.n_obs and len(model.validation_indices) == 0
    assert "validation_elbo" not in model.history


# ------------------------------------------------------------------------ BatchNorm
def test_recalibration_gives_the_exact_mean_of_the_training_cells(small: AnnData) -> None:
    _, data = read_training_data(small, layer=None, batch_key="batch")
    torch.manual_seed(0)
    module = VAEModule(30, 2, torch.zeros(2), torch.ones(2), n_hidden=8, n_latent=2)
    loader = CSRMinibatches(data, np.arange(120), batch_size=40, shuffle=False)
    recalibrate_batchnorm(module, loader)
    assert not module.training
    norm = module.z_encoder.mlp.norms[0]
    layer = module.z_encoder.mlp.layers[0]
    x = torch.log1p(torch.as_tensor(data.X.toarray()))
    with torch.no_grad():
        pre = layer(x, torch.as_tensor(data.batch_index))  # (N, H) first-layer activations
    torch.testing.assert_close(norm.running_mean, pre.mean(0), rtol=1e-5, atol=1e-5)
    assert norm.momentum == 0.1  # restored


# ------------------------------------------------------------------ scoped side effects
def test_fit_leaves_warning_filters_and_loggers_as_they_were(small: AnnData) -> None:
    filters = list(warnings.filters)
    levels = {
        name: logging.getLogger(name).level
        for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda")
    }
    handler = signal.getsignal(signal.SIGINT)
    scvae.NBVAE(small, n_hidden=8, n_latent=2).fit(max_epochs=2, progress_bar=False)
    assert list(warnings.filters) == filters
    assert {name: logging.getLogger(name).level for name in levels} == levels
    assert signal.getsignal(signal.SIGINT) is handler


def test_progress_off_a_terminal_is_one_line_per_epochs_on_stderr(
    small: AnnData, capsys: pytest.CaptureFixture
) -> None:
    scvae.NBVAE(small, n_hidden=8, n_latent=2).fit(max_epochs=4, progress_bar=True)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert "train_elbo" in lines[-1] and "validation_elbo" in lines[-1]
    assert "\r" not in err and "epoch" not in out


class _InterruptAt(pl.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, plan: pl.LightningModule) -> None:
        if plan.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_stops_training_and_keeps_the_best_weights(small: AnnData) -> None:
    model = scvae.ZINBVAE(small, n_hidden=16, n_latent=3)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.warns(UserWarning, match="interrupted after .* keeps the best weights so far"):
        model.fit(
            max_epochs=50,
            n_steps_kl_warmup=0,
            progress_bar=False,
            callbacks=[_InterruptAt(3)],
        )
    assert model.training["interrupted"] is True
    assert model.training["n_epochs_trained"] <= 5
    assert signal.getsignal(signal.SIGINT) is handler
    assert np.isfinite(model.get_latent()).all()


def test_bf16_mixed_precision_trains_a_float32_model(small: AnnData) -> None:
    model = scvae.NBVAE(small, n_latent=2, n_hidden=16)
    model.fit(max_epochs=3, precision="bf16-mixed", progress_bar=False)
    assert all(p.dtype == torch.float32 for p in model.module.parameters())
    assert np.all(np.isfinite(model.history["train_elbo"]))
    assert model.get_latent().dtype == np.float32
    with pytest.raises(ValueError, match="precision"):
        model.fit(max_epochs=1, precision="16-mixed", progress_bar=False)
