"""``train_vae``: split, build, train with Lightning, recalibrate, and return the result."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from torch import nn

from scvae import checks
from scvae.backed import BlockMinibatches, minibatches
from scvae.data import CellData
from scvae.minibatch import CSRMinibatches
from scvae.train._callbacks import (
    EarlyStoppingAfterWarmup,
    EpochCheckpoint,
    EpochLines,
    StopOnInterrupt,
    _fingerprint,
    _resumable,
)
from scvae.train._heap import reuse_freed_memory
from scvae.train._plan import TrainingDivergedError, TrainingPlan, default_max_epochs, split_cells

__all__ = ["TrainConfig", "TrainResult", "recalibrate_batchnorm", "train_vae"]


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, loader: CSRMinibatches | BlockMinibatches) -> None:
    """Recompute every BatchNorm's running statistics exactly for the final weights.

    Running means and variances are exponential averages over past steps, so eval-mode outputs
    use statistics of older weights (with scVI's momentum 0.01, about a hundred steps old; on
    PBMC 3k after 100 epochs this cost 40 nats/cell of held-out ELBO). One pass over the
    training minibatches with BatchNorm in train mode and a cumulative average
    (``momentum=None``) fixes the statistics; dropout stays off and no weight changes. The
    pass is seeded so the result is reproducible.

    Parameters
    ----------
    module
        A module with ``loss(batch)``; left in eval mode.
    loader
        Minibatches of the training cells.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    module.eval()
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: the exact mean over the pass
        norm.train()
    device = loader.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for batch in loader:
            if batch.n_cells > 1:  # BatchNorm needs two cells for a variance
                module.loss(batch)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    module.eval()


# ---------------------------------------------------------------------------- orchestration
@dataclass(frozen=True)
class TrainConfig:
    """The options of one fit (see :meth:`scvae.models.VAEModel.fit` for their meaning)."""

    max_epochs: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-6
    train_size: float = 0.9
    early_stopping: bool = True
    patience: int = 30
    n_steps_kl_warmup: int | None = None
    seed: int = 0
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    progress_bar: bool = True
    checkpoint_dir: str | None = None

    @classmethod
    def validated(
        cls,
        *,
        max_epochs: object = None,
        batch_size: object = 128,
        lr: object = 1e-3,
        weight_decay: object = 1e-6,
        train_size: object = 0.9,
        early_stopping: object = True,
        patience: object = 30,
        n_steps_kl_warmup: object = None,
        seed: object = 0,
        accelerator: str = "auto",
        devices: Any = "auto",
        num_nodes: object = 1,
        strategy: str = "auto",
        precision: object = "32-true",
        progress_bar: object = True,
        checkpoint_dir: str | os.PathLike | None = None,
    ) -> TrainConfig:
        """The options of a user's ``fit`` call, checked (clear errors) and normalized.

        ``seed=None`` draws a random seed; the other options mean what
        :meth:`scvae.models.VAEModel.fit` documents.
        """
        return cls(
            max_epochs=checks.optional_positive_int("max_epochs", max_epochs),
            batch_size=checks.positive_int("batch_size", batch_size, minimum=2),
            lr=checks.fraction("lr", lr, low=0.0, high=float("inf"), include_low=False),
            weight_decay=checks.fraction("weight_decay", weight_decay, low=0.0, high=np.inf),
            train_size=checks.fraction("train_size", train_size, low=0.0, include_low=False),
            early_stopping=bool(early_stopping),
            patience=checks.positive_int("patience", patience),
            n_steps_kl_warmup=checks.optional_positive_int(
                "n_steps_kl_warmup", n_steps_kl_warmup, minimum=0
            ),
            seed=checks.resolve_seed(seed),
            accelerator=accelerator,
            devices=devices,
            num_nodes=checks.positive_int("num_nodes", num_nodes),
            strategy=strategy,
            precision=checks.choice("precision", precision, ("32-true", "bf16-mixed")),
            progress_bar=bool(progress_bar),
            checkpoint_dir=None if checkpoint_dir is None else os.fspath(checkpoint_dir),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        out = asdict(self)
        out["devices"] = (
            out["devices"] if isinstance(out["devices"], int | str) else list(out["devices"])
        )
        return out


@dataclass
class TrainResult:
    """What :func:`train_vae` returns.

    Attributes
    ----------
    module
        The trained module in eval mode on ``device``.
    history
        Per-epoch train/validation terms.
    train_indices, validation_indices
        The cells of each part of the split.
    device
        The training device.
    record
        What the fit resolved and observed, JSON-safe: ``max_epochs``, ``n_steps_kl_warmup``,
        ``n_epochs_trained``, ``best_epoch``, ``early_stopping``, ``interrupted``, ``device``.
    """

    module: nn.Module
    history: pd.DataFrame
    train_indices: np.ndarray
    validation_indices: np.ndarray
    device: torch.device
    record: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's chatter and known-harmless warnings silenced for this fit only."""
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda")
    loggers = [logging.getLogger(name) for name in names]
    levels = [log.level for log in loggers]
    with warnings.catch_warnings():
        # our loaders are device-resident iterables, not DataLoaders: workers do not apply
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        # under DDP the plan logs epoch means it has already summed over the ranks itself
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
        for log in loggers:
            log.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for log, level in zip(loggers, levels, strict=True):
                log.setLevel(level)


#: Lightning strategies that run the fit in processes it spawns: the fitted module, history
#: and record would stay in those processes, so scvae refuses them (use "ddp" in a script).
_SPAWNING = ("spawn", "notebook", "fork")


def _check_strategy(strategy: object) -> None:
    """Refuse strategies whose fit would happen in other processes than the caller's."""
    if not isinstance(strategy, str):
        raise TypeError(
            f"strategy must be a Lightning strategy name such as 'auto' or 'ddp', got "
            f"{type(strategy).__name__}."
        )
    if any(word in strategy for word in _SPAWNING):
        raise ValueError(
            f"strategy={strategy!r} trains in processes that Lightning spawns, so the fitted "
            "model would not come back to this one. Use strategy='ddp' in a script (python "
            "train.py, srun python train.py on SLURM, or torchrun): every process runs the "
            "script and the model is the same on every rank after fit."
        )


def _batchnorms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def train_vae(
    make_module: Callable[[], nn.Module],
    data: CellData,
    config: TrainConfig,
    *,
    callbacks: Sequence[pl.Callback] = (),
    model_options: dict[str, Any] | None = None,
    keep_batchnorm: Literal["eval", "train"] | None = None,
) -> TrainResult:
    """Fit a VAE module on validated cells by maximizing the ELBO.

    Parameters
    ----------
    make_module
        Builds a fresh module; called once, after seeding, so the initialization follows
        ``config.seed``.
    data
        The validated cells.
    config
        The fit options.
    callbacks
        Extra Lightning callbacks (they see the :class:`TrainingPlan`).
    model_options
        The model's options, part of the fingerprint that a checkpoint must match.
    keep_batchnorm
        None (a fit): BatchNorm normalizes by minibatch statistics in training and its running
        statistics are recalibrated at the end (:func:`recalibrate_batchnorm`). When the
        module's BatchNorm layers belong to a frozen reference (mapping a query), their
        running statistics are kept exactly: ``"eval"`` keeps every BatchNorm in eval mode
        throughout (training normalizes by the reference's statistics, as evaluation will);
        ``"train"`` normalizes by the query minibatch's statistics in training and restores
        the reference's running statistics afterwards.

    Returns
    -------
    TrainResult

    Notes
    -----
    With ``config.checkpoint_dir`` the fit writes ``last.ckpt`` there after every epoch and,
    when the file exists and belongs to the same fit (options, model and cells), resumes from
    it: with the same seed on the same machine the result is the one an uninterrupted fit
    gives. The file is removed when the fit completes (kept when it was interrupted).

    Raises
    ------
    TrainingDivergedError
        The loss became NaN/inf.
    """
    _check_strategy(config.strategy)
    n_cells = data.X.shape[0]
    train_idx, val_idx = split_cells(n_cells, config.train_size, config.seed)
    if len(train_idx) < 2:
        raise ValueError(f"Need at least 2 training cells, got {len(train_idx)}.")
    # early stopping needs validation cells: with train_size=1.0 it is off (recorded)
    early_stopping = config.early_stopping and len(val_idx) > 0
    max_epochs = config.max_epochs or default_max_epochs(n_cells)

    def training_minibatches() -> CSRMinibatches | BlockMinibatches:
        return minibatches(
            data, train_idx, batch_size=config.batch_size, shuffle=True, drop_last=True,
            seed=config.seed,
        )  # fmt: skip

    train_loader = training_minibatches()
    val_loader = (
        minibatches(data, val_idx, batch_size=max(config.batch_size, 1024), shuffle=False)
        if len(val_idx)
        else None
    )
    n_steps_kl_warmup = config.n_steps_kl_warmup
    if n_steps_kl_warmup is None:
        n_steps_kl_warmup = max_epochs * len(train_loader) // 10
    pl.seed_everything(config.seed, workers=False, verbose=False)
    module = make_module()
    if keep_batchnorm not in (None, "eval", "train"):
        raise ValueError(f"keep_batchnorm must be None, 'eval' or 'train', got {keep_batchnorm!r}.")
    norms = _batchnorms(module)
    kept_statistics = (
        [{k: v.detach().clone() for k, v in norm.state_dict().items()} for norm in norms]
        if keep_batchnorm is not None
        else None
    )
    plan = TrainingPlan(
        module,
        train_loader=train_loader,
        val_loader=val_loader,
        lr=config.lr,
        weight_decay=config.weight_decay,
        n_steps_kl_warmup=n_steps_kl_warmup,
        eval_modules=tuple(norms) if keep_batchnorm == "eval" else (),
        seed=config.seed,
    )
    stopper = EarlyStoppingAfterWarmup(patience=config.patience) if early_stopping else None
    checkpoint, resume = None, None
    if config.checkpoint_dir is not None:
        directory = Path(config.checkpoint_dir)
        fingerprint = _fingerprint(data, config, model_options or {})
        resume = _resumable(directory, fingerprint)
        directory.mkdir(parents=True, exist_ok=True)
        checkpoint = EpochCheckpoint(directory, fingerprint)
    interrupt = StopOnInterrupt()
    bar = config.progress_bar and sys.stderr.isatty()
    lines = [EpochLines(max_epochs=max_epochs)] if config.progress_bar and not bar else []
    with _quiet_lightning():
        trainer = pl.Trainer(
            max_epochs=max_epochs,
            accelerator=config.accelerator,
            devices=1 if config.devices == "auto" else config.devices,
            num_nodes=config.num_nodes,
            strategy=config.strategy,
            precision=config.precision,
            logger=False,
            enable_checkpointing=checkpoint is not None,
            enable_model_summary=False,
            enable_progress_bar=bar,
            callbacks=[
                *([stopper] if stopper else []),
                *([checkpoint] if checkpoint else []),
                interrupt,
                *lines,
                *callbacks,
            ],
            num_sanity_val_steps=0,
            limit_val_batches=1.0 if val_loader is not None else 0,
            deterministic=False,
            gradient_clip_val=None,
        )
        with reuse_freed_memory():
            try:
                trainer.fit(plan, ckpt_path=resume, weights_only=False)
            except TrainingDivergedError as err:
                raise TrainingDivergedError(str(err)) from None
            finally:
                interrupt.restore()
            if checkpoint is not None and not interrupt.interrupted:
                checkpoint.path.unlink(missing_ok=True)  # complete: nothing to resume
            device = plan.device
            module.to(device)
            world_size, global_rank = trainer.world_size, trainer.global_rank
            if kept_statistics is None:
                if world_size > 1:  # the loader holds one shard: recalibrate on every cell
                    train_loader = training_minibatches()
                recalibrate_batchnorm(module, train_loader.to(device))
            else:  # the reference's running statistics, exactly
                for norm, state in zip(norms, kept_statistics, strict=True):
                    norm.load_state_dict(state)
    module.eval()
    if interrupt.interrupted:
        kept = (
            f"the best weights so far (epoch {stopper.best_epoch})"
            if stopper is not None and stopper.best_epoch is not None
            else "the weights of the last step"
        )
        warnings.warn(
            f"Training was interrupted after {len(plan.history_rows)} epochs; the model keeps "
            f"{kept}.",
            UserWarning,
            stacklevel=3,
        )
    record = {
        "max_epochs": max_epochs,
        "n_epochs_trained": len(plan.history_rows),
        "best_epoch": stopper.best_epoch if stopper else None,
        "early_stopping": early_stopping,
        "n_steps_kl_warmup": n_steps_kl_warmup,
        "interrupted": interrupt.interrupted,
        "resumed": resume is not None,
        "device": str(device),
        "world_size": world_size,
        "global_rank": global_rank,
    }
    return TrainResult(
        module=module,
        history=plan.history,
        train_indices=train_idx,
        validation_indices=val_idx,
        device=device,
        record=record,
    )
