"""scvi-tools side of ``benchmarks/speed.py``: runs INSIDE ``benchmarks/.venv-scvi``.

Trains ``scvi.model.SCVI`` (ZINB, gene dispersion, latent library: the same model as scvae's
ZINBVAE) on the cells of an .h5ad and prints one JSON line with the wall time of every epoch,
the peak resident memory, and (``--heldout``) the held-out ELBO after every epoch.

Two modes:

* ``--mode same``: given architecture, batch size and epochs, all cells train
  (``train_size=1.0``), no early stopping: throughput at equal settings.
* ``--mode defaults``: ``SCVI(adata)`` and ``model.train()`` with scvi-tools' defaults (except
  that the held-out ELBO is computed after every epoch, outside the timed training work).

Not meant to be run by hand; ``benchmarks/speed.py`` calls it.
"""

from __future__ import annotations

import argparse
import json
import time

import anndata as ad
import numpy as np
from _common import peak_rss_gb


def parse_args() -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--h5ad", required=True)
    p.add_argument("--mode", choices=["same", "defaults"], default="same")
    p.add_argument("--max-epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--heldout", default=None, help=".npy of held-out cell positions")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    """Train and report."""
    args = parse_args()
    import lightning.pytorch as pl
    import scvi
    import torch

    torch.set_num_threads(args.threads)
    scvi.settings.seed = args.seed
    adata = ad.read_h5ad(args.h5ad)
    heldout = np.load(args.heldout) if args.heldout else None
    train_cells = (
        adata if heldout is None else adata[np.setdiff1d(np.arange(adata.n_obs), heldout)].copy()
    )
    scvi.model.SCVI.setup_anndata(train_cells)
    if args.mode == "same":
        model = scvi.model.SCVI(
            train_cells,
            n_hidden=128,
            n_latent=10,
            n_layers=1,
            dropout_rate=0.1,
            dispersion="gene",
            gene_likelihood="zinb",
            use_observed_lib_size=False,
        )
    else:
        model = scvi.model.SCVI(train_cells)
    heldout_adata = None
    if heldout is not None:
        heldout_adata = adata[heldout].copy()
        scvi.model.SCVI.setup_anndata(heldout_adata)

    class Clock(pl.Callback):
        """Per-epoch training time (held-out evaluation excluded) and held-out ELBO."""

        def __init__(self) -> None:
            self.epoch_times: list[float] = []
            self.heldout_elbo: list[float] = []
            self._start = 0.0

        def on_train_epoch_start(self, trainer, plan) -> None:
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, plan) -> None:
            self.epoch_times.append(time.perf_counter() - self._start)
            if heldout_adata is not None:
                was_training = plan.module.training
                # eval mode (BatchNorm running statistics, no dropout): the model a user would
                # have if training stopped here. scvi's compute_elbo does not switch modes by
                # itself, and in train mode BatchNorm would use the held-out minibatch's own
                # statistics. get_elbo returns -compute_elbo(): the mean ELBO per cell.
                plan.module.eval()
                self.heldout_elbo.append(float(model.get_elbo(heldout_adata)))
                plan.module.train(was_training)

    clock = Clock()
    train_kwargs: dict = {
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "callbacks": [clock],
    }
    if args.mode == "same":
        train_kwargs.update(
            max_epochs=args.max_epochs,
            batch_size=args.batch_size,
            train_size=1.0,
            validation_size=None,
            early_stopping=False,
        )
    t0 = time.perf_counter()
    model.train(**train_kwargs)
    wall = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "tool": f"scvi-tools {scvi.__version__}",
                "epoch_times": clock.epoch_times,
                "heldout_elbo": clock.heldout_elbo,
                "wall": wall,
                "n_train": int(train_cells.n_obs),
                "peak_rss_gb": peak_rss_gb(),
            }
        )
    )


if __name__ == "__main__":
    main()
