"""Callbacks of the training loop: early stopping, progress lines, Ctrl-C, checkpoints."""

from __future__ import annotations

import copy
import hashlib
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

from scvae.data import CellData
from scvae.train._plan import TrainingPlan

if TYPE_CHECKING:
    from scvae.train._fit import TrainConfig

__all__ = ["EarlyStoppingAfterWarmup", "EpochCheckpoint", "EpochLines", "StopOnInterrupt"]


class EarlyStoppingAfterWarmup(pl.Callback):
    """Stop when the validation ELBO has not improved for ``patience`` epochs after warm-up.

    Reads the logged metric ``validation_elbo`` (``trainer.callback_metrics``). Epochs before
    the KL weight reaches 1 never count (the objective is still moving), and the weights of
    the best validation epoch are restored when training ends.

    Parameters
    ----------
    patience
        Epochs without improvement (after warm-up) before stopping.
    min_delta
        Improvement in mean validation ELBO per cell that counts.
    monitor
        The logged metric to maximize.
    """

    def __init__(
        self, *, patience: int = 30, min_delta: float = 0.0, monitor: str = "validation_elbo"
    ) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.monitor = monitor
        self.best = -math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch: int | None = None
        self.wait = 0

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the best value, its epoch and weights, the wait."""
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.best = state_dict["best"]
        self.best_epoch = state_dict["best_epoch"]
        self.wait = state_dict["wait"]
        self.best_state = state_dict["best_state"]

    def on_validation_end(self, trainer: pl.Trainer, plan: TrainingPlan) -> None:
        """Check this epoch's logged validation ELBO."""
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking or not plan.warmup_done:
            return
        value = float(value)
        if value > self.best + self.min_delta:
            self.best, self.best_epoch, self.wait = value, plan.current_epoch, 0
            self.best_state = copy.deepcopy(plan.module.state_dict())
        else:
            self.wait += 1
            if self.wait >= self.patience:
                trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, plan: TrainingPlan) -> None:
        """Restore the best validation weights."""
        if self.best_state is not None:
            plan.module.load_state_dict(self.best_state)


class EpochLines(pl.Callback):
    """One line per ``every`` epochs on stderr: the progress report when it is not a terminal.

    Under nohup or SLURM a redrawn progress bar fills the log with fragments; this writes
    ``epoch 10/100  train_elbo -612.3  validation_elbo -620.1  12.4 s`` lines instead.
    """

    def __init__(self, *, max_epochs: int, every: int | None = None) -> None:
        self.max_epochs = max_epochs
        self.every = every or max(1, max_epochs // 20)

    def _report(self, plan: TrainingPlan, n_done: int) -> None:
        if plan.trainer.global_rank != 0:  # one report for all ranks
            return
        row = plan.history_rows[n_done - 1]
        parts = [f"epoch {n_done}/{self.max_epochs}"]
        for name in ("train_elbo", "validation_elbo"):
            if name in row:
                parts.append(f"{name} {row[name]:.1f}")
        parts.append(f"{row.get('time', 0.0):.1f} s")
        print("  ".join(parts), file=sys.stderr, flush=True)
        self._reported = n_done

    def on_train_epoch_start(self, trainer: pl.Trainer, plan: TrainingPlan) -> None:
        """Report the epoch just recorded when due (the plan records it after callbacks run)."""
        n_done = len(plan.history_rows)
        if n_done and n_done % self.every == 0:
            self._report(plan, n_done)

    def on_train_end(self, trainer: pl.Trainer, plan: TrainingPlan) -> None:
        """Report the last epoch."""
        n_done = len(plan.history_rows)
        if n_done and getattr(self, "_reported", 0) != n_done:
            self._report(plan, n_done)


class StopOnInterrupt(pl.Callback):
    """Ctrl-C stops training after the current step instead of killing the process.

    The first SIGINT asks the Trainer to stop; early stopping then restores the best weights
    so far. A second SIGINT raises ``KeyboardInterrupt`` at once. The previous handler is
    restored when training ends (Lightning's own handling would exit the interpreter).
    """

    def __init__(self) -> None:
        self.interrupted = False
        self._previous: Any = None
        self._trainer: pl.Trainer | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.interrupted:
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            raise KeyboardInterrupt
        self.interrupted = True
        if self._trainer is not None:
            self._trainer.should_stop = True
        print(
            "\nInterrupted: stopping after this step (press Ctrl-C again to abort).",
            file=sys.stderr,
            flush=True,
        )

    def on_fit_start(self, trainer: pl.Trainer, plan: TrainingPlan) -> None:
        """Install the handler (main thread only)."""
        if threading.current_thread() is threading.main_thread():
            self._trainer = trainer
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        """Re-assert the stop request (Lightning resets ``should_stop`` between epochs)."""
        if self.interrupted:
            trainer.should_stop = True

    def on_fit_end(self, trainer: pl.Trainer, plan: TrainingPlan) -> None:
        """Restore the previous handler."""
        self.restore()

    def restore(self) -> None:
        """Put the previous SIGINT handler back (idempotent)."""
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        self._trainer = None


class EpochCheckpoint(Checkpoint):
    """Write ``<dirpath>/last.ckpt`` after every epoch, atomically, for :func:`train_vae` to resume.

    The file is Lightning's full checkpoint (weights, optimizer, loop progress, early stopping)
    plus the plan's history and RNG states and a fingerprint of the fit. It is written beside
    and renamed into place, so a process killed at any moment leaves the previous checkpoint
    whole.
    """

    FILE = "last.ckpt"

    def __init__(self, dirpath: Path, fingerprint: dict[str, Any]) -> None:
        self.dirpath = Path(dirpath)
        self.fingerprint = fingerprint

    @property
    def path(self) -> Path:
        """The checkpoint file."""
        return self.dirpath / self.FILE

    def on_save_checkpoint(
        self, trainer: pl.Trainer, plan: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Stamp the fit's fingerprint."""
        checkpoint["scvae_fingerprint"] = self.fingerprint

    def on_train_epoch_end(self, trainer: pl.Trainer, plan: pl.LightningModule) -> None:
        """Save (Lightning calls checkpoint callbacks after the plan has recorded the epoch)."""
        tmp = self.dirpath / f".{self.FILE}.{os.getpid()}.tmp"
        trainer.save_checkpoint(tmp)  # every rank calls it; rank 0 writes the file
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier("scvae_checkpoint")  # no rank resumes from a stale file


def _fingerprint(data: CellData, config: TrainConfig, module_options: dict[str, Any]) -> dict:
    """What must match for a checkpoint to be resumed: options, model and cells."""
    X = data.X
    step = max(1, X.nnz // 1_000_000)  # a sample of the values keeps this fast at atlas size
    digest = hashlib.blake2b(digest_size=16)
    arrays = (
        X.fingerprint_arrays()  # counts on disk (scvae.backed): their per-cell vectors
        if hasattr(X, "fingerprint_arrays")
        else (X.indptr, X.indices[::step], X.data[::step])
    )
    for array in (*arrays, data.batch_index):
        digest.update(np.ascontiguousarray(array).tobytes())
    options = config.to_dict()
    machine = ("progress_bar", "accelerator", "devices", "num_nodes", "strategy")
    for name in (*machine, "checkpoint_dir"):
        options.pop(name, None)
    return {"fit": options, "model": module_options, "cells": digest.hexdigest()}


def _resumable(directory: Path, fingerprint: dict[str, Any]) -> Path | None:
    """The checkpoint in ``directory`` to resume, None if there is none; refuse another fit's."""
    path = directory / EpochCheckpoint.FILE
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"checkpoint_dir={str(directory)!r} is a file, not a directory.")
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)["scvae_fingerprint"]
    except Exception as err:
        raise ValueError(
            f"{path} is damaged or not an scvae checkpoint ({type(err).__name__}: {err}). "
            "Delete it to train from the start."
        ) from err
    if saved != fingerprint:
        differ = [k for k in fingerprint if saved.get(k) != fingerprint[k]]
        detail = {"fit": "fit options", "model": "model options", "cells": "cells"}
        raise ValueError(
            f"{path} is the checkpoint of another fit (different "
            f"{', '.join(detail[k] for k in differ)}); it cannot be resumed with these. Use "
            "another checkpoint_dir, or delete the file to train from the start."
        )
    return path
