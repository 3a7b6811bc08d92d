"""Child process of tests/test_checkpoint.py: one seeded fit, printing a digest of the result.

Usage: python _checkpoint_child.py CHECKPOINT_DIR|- OUT_JSON
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

import lightning.pytorch as pl
import torch

import scvae


class Slow(pl.Callback):
    """Makes each epoch take a while, so that the parent's kill lands mid-training."""

    def on_train_epoch_end(self, trainer: pl.Trainer, plan: pl.LightningModule) -> None:
        time.sleep(0.05)


def main() -> None:
    torch.set_num_threads(1)
    directory, out = sys.argv[1], sys.argv[2]
    adata = scvae.datasets.simulate(n_cells=300, n_genes=40, n_batches=2, seed=1)
    model = scvae.ZINBVAE(adata, batch_key="batch", n_hidden=16, n_latent=3)
    model.fit(
        max_epochs=40,
        patience=5,
        seed=7,
        progress_bar=False,
        checkpoint_dir=None if directory == "-" else directory,
        callbacks=[Slow()],
    )
    digest = hashlib.sha256()
    for name, tensor in sorted(model.module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    result = {
        "weights": digest.hexdigest(),
        "epochs": model.history.index.tolist(),
        "validation_elbo": model.history["validation_elbo"].tolist(),
        "training": model.training,
    }
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
