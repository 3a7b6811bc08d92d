"""Child process of tests/test_ddp.py: one seeded fit, on one or two CPU processes.

Usage: python _ddp_child.py OUT_DIR N_PROCESSES BATCH_SIZE MAX_EPOCHS PATIENCE SEED [backed]

With N_PROCESSES=2 this runs Lightning's DDP (gloo) on the CPU: Lightning starts the second
process by running this script again. Every rank writes ``OUT_DIR/rank<r>.json``: the cells
of its training and validation shards, the history, the held-out ELBO of the fitted model,
and (rank 0) a save/load round trip. With ``backed`` the cells are written to an h5ad file and
read from it on disk (``backed="r"``), so each rank reads its shard in row blocks.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import anndata as ad
import lightning.pytorch as pl
import numpy as np
import torch

import scvae


class Shards(pl.Callback):
    """Records the cells each rank's loaders hold once they are sharded."""

    def on_train_start(self, trainer: pl.Trainer, plan: pl.LightningModule) -> None:
        self.train = plan.train_loader.cells.tolist()
        self.validation = plan.val_loader.cells.tolist()
        self.steps_per_epoch = len(plan.train_loader)
        self.validation_batches = len(plan.val_loader)


def main() -> None:
    torch.set_num_threads(1)
    out, world, batch_size, max_epochs, patience, seed, *backed = sys.argv[1:]
    adata = scvae.datasets.simulate(
        n_cells=600, n_genes=80, n_clusters=3, n_batches=2, n_latent=2, seed=1
    )
    if backed:
        path = Path(out) / "cells.h5ad"
        if not path.exists():  # rank 0 writes it before Lightning starts the other ranks
            adata.write_h5ad(path)
        adata = ad.read_h5ad(path, backed="r")
    model = scvae.ZINBVAE(adata, batch_key="batch", n_latent=4, n_hidden=32)
    shards = Shards()
    model.fit(
        max_epochs=int(max_epochs),
        batch_size=int(batch_size),
        patience=int(patience),
        seed=int(seed),
        accelerator="cpu",
        devices=int(world),
        strategy="ddp" if int(world) > 1 else "auto",
        progress_bar=False,
        callbacks=[shards],
    )
    rank = model.training["global_rank"]
    held_out = adata[model.validation_indices]
    if backed:
        held_out = held_out.to_memory()
    latent = model.get_latent()
    record = {
        "world_size": model.training["world_size"],
        "train_shard": shards.train,
        "validation_shard": shards.validation,
        "steps_per_epoch": shards.steps_per_epoch,
        "validation_batches": shards.validation_batches,
        "train_indices": model.train_indices.tolist(),
        "validation_indices": model.validation_indices.tolist(),
        "n_epochs_trained": model.training["n_epochs_trained"],
        "best_epoch": model.training["best_epoch"],
        "history_validation_elbo": model.history["validation_elbo"].tolist(),
        "held_out_elbo": float(model.elbo(held_out).mean()),
        "latent_md5": hashlib.md5(np.ascontiguousarray(latent).tobytes()).hexdigest(),
    }
    if rank == 0:
        path = Path(out) / "model"
        model.save(path, overwrite=True)
        loaded = scvae.ZINBVAE.load(path, adata)
        record["reloaded_latent_equal"] = bool(np.array_equal(loaded.get_latent(), latent))
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
