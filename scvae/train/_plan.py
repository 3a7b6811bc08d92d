"""The LightningModule every VAE trains through, and the pure functions of the schedule.

:class:`TrainingPlan` sees only a torch module with ``loss(batch, *, kl_weight)`` returning
per-cell ``reconstruction``, ``kl_z`` and ``kl_l``; train and validation share one ``_step``.
Per-epoch means are collected into :attr:`TrainingPlan.history`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from torch import nn

from scvae.minibatch import CSRMinibatches, Minibatch, sparse_input_pays

__all__ = [
    "TrainingDivergedError",
    "TrainingPlan",
    "default_max_epochs",
    "kl_weight",
    "split_cells",
]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite during training."""


# ---------------------------------------------------------------------------- pure functions
def kl_weight(step: int, n_steps_warmup: int) -> float:
    """KL warm-up weight after ``step`` optimizer steps: linear from 0 to 1, then 1.

    Parameters
    ----------
    step
        Optimizer steps taken so far.
    n_steps_warmup
        Steps over which the weight rises; 0 means no warm-up (weight 1 from the start).
    """
    if n_steps_warmup <= 0:
        return 1.0
    return min(1.0, step / n_steps_warmup)


def default_max_epochs(n_cells: int) -> int:
    """scVI's rule: 400 epochs up to 20k cells, then fewer, ``round(400 * 20000 / n)``."""
    return int(max(10, min(400, round(400 * 20_000 / max(n_cells, 1)))))


def split_cells(n_cells: int, train_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of cell positions into sorted (train, validation) index arrays.

    ``train_size=1.0`` puts every cell in training; otherwise at least one cell validates.
    """
    perm = np.random.default_rng(seed).permutation(n_cells)
    n_train = n_cells if train_size >= 1.0 else min(n_cells - 1, math.ceil(train_size * n_cells))
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


class TrainingPlan(pl.LightningModule):
    """Amortized minibatch VI on the ELBO with a linear KL warm-up counted in optimizer steps.

    Parameters
    ----------
    module
        A torch module with ``loss(batch, *, kl_weight)`` (see
        :class:`scvae.module.vae.VAEModule`).
    train_loader, val_loader
        Minibatch iterables; at fit start they are moved to the training device, and the
        module's input path (dense or by the non-zeros) is chosen for that device.
    lr, weight_decay
        Adam settings.
    n_steps_kl_warmup
        The KL weight rises linearly from 0 to 1 over this many optimizer steps (0: no warm-up).
    eval_modules
        Submodules kept in eval mode throughout (e.g. the reference's BatchNorm layers while a
        query is mapped: they normalize by their running statistics and never update them).
    seed
        The fit's seed. Under distributed training each rank draws its Monte Carlo samples
        from ``seed + rank`` and shuffles its shard with its own generator.

    Notes
    -----
    Under distributed data parallel training (``world_size > 1``) every rank keeps only its
    shard of the cells (:meth:`~scvae.minibatch.CSRMinibatches.shard`) on its device, takes
    the same number of steps, and the epoch sums of the training and validation terms are
    summed over the ranks before they are averaged: the history, the logged
    ``validation_elbo`` and so early stopping are the same on every rank, and equal to what
    one process computes over all the cells.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        train_loader: CSRMinibatches,
        val_loader: CSRMinibatches | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        n_steps_kl_warmup: int = 0,
        eval_modules: tuple[nn.Module, ...] = (),
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.seed = seed
        self._eval_modules = tuple(eval_modules)
        self.module = module
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.lr = lr
        self.weight_decay = weight_decay
        self.n_steps_kl_warmup = n_steps_kl_warmup
        self._sums: dict[str, tuple[int, torch.Tensor]] = {}
        self._pending_validation: dict[str, float] = {}
        self.history_rows: list[dict[str, float]] = []

    def train(self, mode: bool = True) -> TrainingPlan:
        """``nn.Module.train``, with :attr:`eval_modules` left in eval mode."""
        super().train(mode)
        self._keep_eval()
        return self

    def _keep_eval(self) -> None:
        for submodule in self._eval_modules:
            submodule.eval()

    def on_train_epoch_start(self) -> None:
        """Put :attr:`eval_modules` back in eval mode (Lightning sets train mode per module)."""
        self._keep_eval()

    @property
    def kl_weight(self) -> float:
        """Current KL warm-up weight in [0, 1]."""
        return kl_weight(self.global_step, self.n_steps_kl_warmup)

    @property
    def warmup_done(self) -> bool:
        """Whether the KL weight has reached 1."""
        return self.global_step >= self.n_steps_kl_warmup

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add what Lightning does not keep: history, elapsed time, the RNG states."""
        cuda = self.device.type == "cuda"
        checkpoint["scvae"] = {
            "history_rows": list(self.history_rows),
            "elapsed": time.perf_counter() - self._fit_start,
            "loader_generator": self.train_loader.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if cuda else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the saved state; it is applied when training (re)starts."""
        self._resume_state = checkpoint.get("scvae")

    def on_train_start(self) -> None:
        """On a resumed fit: history, clock and every RNG exactly where the checkpoint was."""
        state = getattr(self, "_resume_state", None)
        if state is None:
            return
        self.history_rows = list(state["history_rows"])
        self._fit_start = time.perf_counter() - state["elapsed"]
        self.train_loader.generator.set_state(state["loader_generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self._resume_state = None

    def on_fit_start(self) -> None:
        """Choose the input path for the device, move the counts there once, start the clock."""
        self._fit_start = time.perf_counter()
        sparse = sparse_input_pays(self.train_loader.data, self.device)
        self.module.sparse_input = sparse
        world, rank = self.trainer.world_size, self.trainer.global_rank
        for loader in (self.train_loader, self.val_loader):
            if loader is not None:
                if world > 1:
                    loader.shard(rank, world)  # before the move: only the shard goes there
                loader.dense = not sparse  # the dense counts would go unused
                loader.to(self.device)
        if world > 1:  # each rank its own Monte Carlo draws (the weights are synchronized)
            torch.manual_seed(self.seed + rank)

    def train_dataloader(self) -> CSRMinibatches:
        """The device-resident training minibatches."""
        return self.train_loader

    def val_dataloader(self) -> CSRMinibatches | list:
        """The device-resident validation minibatches (an empty list without validation)."""
        return self.val_loader if self.val_loader is not None else []

    def transfer_batch_to_device(
        self, batch: Minibatch, device: torch.device, dataloader_idx: int
    ) -> Minibatch:
        """One ``to(device)``: the loaders already serve minibatches on the device."""
        return batch if batch.device == device else batch.to(device, non_blocking=True)

    _TERMS = ("loss", "reconstruction", "kl_z", "kl_l", "elbo")

    def _step(self, batch: Minibatch, stage: str) -> torch.Tensor:
        weight = self.kl_weight if stage == "train" else 1.0
        out = self.module.loss(batch, kl_weight=weight)
        # a finiteness check syncs the device: every step on the CPU, every 100 on a GPU (and
        # on the epoch sums), so CUDA steps are never stalled by it
        on_cpu = batch.device.type == "cpu"
        if (on_cpu or self.global_step % 100 == 0) and not torch.isfinite(out.loss):
            raise TrainingDivergedError(self._divergence_message(stage))
        n = batch.n_cells
        terms = torch.stack(
            [out.loss.detach() * n]
            + [getattr(out, name).detach().sum() for name in self._TERMS[1:]]
        )  # (5,) sums over the minibatch, kept on the device
        count, total = self._sums.get(stage, (0, 0.0))
        self._sums[stage] = (count + n, total + terms)
        return out.loss

    def _divergence_message(self, stage: str) -> str:
        return (
            f"Training diverged: the {stage} loss became NaN or infinite at epoch "
            f"{self.current_epoch}, step {self.global_step}. Likely causes: a learning rate too "
            f"high for this data (lr={self.lr:g}; try lr={self.lr / 10:g}), counts that are "
            "not raw counts (normalized or scaled values, or a few cells with extreme totals), "
            "or very small minibatches. Try a lower lr, check the input with "
            "adata.X.max() and adata.X.sum(1), or a larger batch_size."
        )

    def training_step(self, batch: Minibatch, batch_idx: int) -> torch.Tensor:
        """One optimizer step on the warm-up-weighted negative ELBO."""
        return self._step(batch, "train")

    def validation_step(self, batch: Minibatch, batch_idx: int) -> None:
        """Accumulate the full (weight 1) ELBO of validation cells."""
        self._step(batch, "validation")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam with scVI's eps=0.01 for stability on counts.

        The fused implementation updates every parameter in one pass per step (the per-tensor
        loop made about eight passes over the weights, as costly as the likelihood itself when
        there are many genes).
        """
        params = [p for p in self.module.parameters() if p.requires_grad]
        return torch.optim.Adam(
            params, lr=self.lr, eps=0.01, weight_decay=self.weight_decay, fused=True
        )

    def _epoch_means(self, stage: str) -> dict[str, float]:
        count, total = self._sums.pop(stage, (0, None))
        if self.trainer.world_size > 1:  # every rank's cells: sums over the ranks
            local = torch.zeros(len(self._TERMS) + 1, dtype=torch.float64, device=self.device)
            local[0] = count
            if count:
                local[1:] = total.to(torch.float64)
            summed = self.trainer.strategy.reduce(local, reduce_op="sum")
            count, total = int(summed[0].item()), summed[1:]
        if not count:
            return {}
        means = (total / count).tolist()  # one device sync per epoch
        if not math.isfinite(means[0]):
            raise TrainingDivergedError(self._divergence_message(stage))
        return {f"{stage}_{name}": value for name, value in zip(self._TERMS, means, strict=True)}

    def on_validation_epoch_end(self) -> None:
        """Log the validation means (``validation_elbo``) so callbacks can read them."""
        if self.trainer.sanity_checking:
            self._sums.pop("validation", None)
            return
        means = self._epoch_means("validation")
        self._pending_validation = means
        if means:
            # in float64, so that early stopping compares the same numbers as the history
            value = torch.tensor(means["validation_elbo"], dtype=torch.float64)
            self.log("validation_elbo", value, prog_bar=True)

    def on_train_epoch_end(self) -> None:
        """Record one row of history: train and validation means of this epoch."""
        row = {
            "epoch": self.current_epoch,
            "step": self.global_step,
            "kl_weight": self.kl_weight,
            "time": time.perf_counter() - self._fit_start,
        }
        row.update(self._epoch_means("train"))
        row.update(self._pending_validation)
        self._pending_validation = {}
        self.history_rows.append(row)
        if "train_elbo" in row:
            self.log("train_elbo", row["train_elbo"], prog_bar=True)

    @property
    def history(self) -> pd.DataFrame:
        """Per-epoch train/validation ELBO, reconstruction, KL terms, KL weight, elapsed seconds."""
        if not self.history_rows:
            return pd.DataFrame()
        return pd.DataFrame(self.history_rows).set_index("epoch")
