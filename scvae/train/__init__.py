"""Training: every VAE is fitted here, by :func:`train_vae`, through one Lightning loop.

The model classes never import Lightning. They hand :func:`train_vae` a module factory, the
validated cells and a :class:`TrainConfig`; it splits the cells, builds the module once (after
seeding), builds the loaders and the :class:`TrainingPlan`, runs Lightning's ``Trainer`` with
warnings and log filters scoped to the fit, recalibrates BatchNorm and returns a
:class:`TrainResult`. The KL warm-up weight is the pure function :func:`kl_weight`.

The :class:`TrainingPlan` sees only a torch module with ``loss(batch, *, kl_weight)`` returning
per-cell ``reconstruction``, ``kl_z`` and ``kl_l``; train and validation share one ``_step``.
Per-epoch means are collected into :attr:`TrainingPlan.history`.
"""

from scvae.train._callbacks import (
    EarlyStoppingAfterWarmup,
    EpochCheckpoint,
    EpochLines,
    StopOnInterrupt,
)
from scvae.train._fit import TrainConfig, TrainResult, recalibrate_batchnorm, train_vae
from scvae.train._plan import (
    TrainingDivergedError,
    TrainingPlan,
    default_max_epochs,
    kl_weight,
    split_cells,
)

__all__ = [
    "EarlyStoppingAfterWarmup",
    "EpochCheckpoint",
    "EpochLines",
    "StopOnInterrupt",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "TrainingPlan",
    "default_max_epochs",
    "kl_weight",
    "recalibrate_batchnorm",
    "split_cells",
    "train_vae",
]
