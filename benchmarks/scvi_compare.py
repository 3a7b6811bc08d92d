"""scvi-tools side of ``benchmarks/compare.py``: runs INSIDE ``benchmarks/.venv-scvi``.

Reads ``<work-dir>/counts.h5ad`` (raw counts in ``X``, ``obs`` with the batch column),
``<work-dir>/split.npz`` (``train_idx``, ``heldout_idx``) and ``<work-dir>/config.json`` (the
settings shared with the scvae side), trains ``scvi.model.SCVI`` on the train cells and writes
``<work-dir>/scvi-<mode>.npz`` with

* ``latent``: posterior means of all cells (train and held-out, file order);
* ``heldout_ll``: per-cell importance-weighted estimate of log p(x) of the held-out cells with
  ``config["iwae_samples"]`` samples (``SCVI.get_marginal_ll(return_mean=False)``);
* ``meta_json``: fit wall time, epochs, cells per epoch, peak resident memory of this process
  at the end of the fit (``VmHWM``), the settings in force and the package versions.

Two modes:

* ``same``: scvae's architecture and schedule: 10 latent dims, 1 x 128 hidden, dropout 0.1,
  ZINB, gene dispersion, latent library (``use_observed_lib_size=False``), the given epochs,
  batch size and learning rate, every train cell (no validation split), no early stopping,
  the KL warm-up over the first tenth of the epochs (scvae's schedule);
* ``defaults``: ``SCVI(adata)`` and ``model.train()`` as a user gets them (``max_epochs`` is
  only capped by ``config["defaults_max_epochs"]``, which ``--quick`` sets).

Not meant to be run by hand; ``benchmarks/compare.py`` calls it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch
from _common import peak_rss_gb
from scvi_reference import largest_divisor_at_most, versions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Parameters
    ----------
    argv
        Arguments; ``None`` reads ``sys.argv``.

    Returns
    -------
    argparse.Namespace
        ``work_dir`` and ``mode``.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", type=Path, required=True)
    p.add_argument("--mode", choices=["same", "defaults"], required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Train, embed, score and write the result file."""
    import scvi

    args = parse_args(argv)
    config = json.loads((args.work_dir / "config.json").read_text())
    torch.set_num_threads(config["threads"])
    scvi.settings.seed = config["seed"]
    adata = ad.read_h5ad(args.work_dir / "counts.h5ad")
    split = np.load(args.work_dir / "split.npz")
    train = adata[split["train_idx"]].copy()
    heldout = adata[split["heldout_idx"]].copy()
    batch_key = config["batch_key"]
    scvi.model.SCVI.setup_anndata(train, batch_key=batch_key)
    common = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}
    if args.mode == "same":
        model = scvi.model.SCVI(
            train,
            n_hidden=config["n_hidden"],
            n_latent=config["n_latent"],
            n_layers=config["n_layers"],
            dropout_rate=config["dropout_rate"],
            dispersion="gene",
            gene_likelihood="zinb",
            use_observed_lib_size=False,
        )
        warmup = max(1, config["max_epochs"] // 10)
        train_kwargs = {
            "max_epochs": config["max_epochs"],
            "train_size": 1.0,
            "validation_size": None,
            "batch_size": config["batch_size"],
            "early_stopping": False,
            "plan_kwargs": {
                "lr": config["lr"],
                "n_epochs_kl_warmup": warmup,
                "n_steps_kl_warmup": None,
            },
        }
        notes = f"KL warm-up {warmup} epochs (z), latent library"
    else:
        model = scvi.model.SCVI(train)
        train_kwargs = {}
        if config.get("defaults_max_epochs"):
            train_kwargs["max_epochs"] = config["defaults_max_epochs"]
        notes = "scvi-tools defaults (observed library, KL warm-up 400 epochs)"
    t0 = time.perf_counter()
    model.train(**train_kwargs, **common, enable_model_summary=False)
    fit_time = time.perf_counter() - t0
    peak = peak_rss_gb()
    epochs = len(model.history["elbo_train"])
    model.module.eval()
    latent = model.get_latent_representation(adata, batch_size=1024)
    k = config["iwae_samples"]
    torch.manual_seed(config["seed"])
    t0 = time.perf_counter()
    heldout_ll = model.get_marginal_ll(
        heldout,
        n_mc_samples=k,
        batch_size=128,
        return_mean=False,
        n_mc_samples_per_pass=largest_divisor_at_most(k, 25),
    )
    score_time = time.perf_counter() - t0
    meta = {
        "method": f"scvi-{args.mode}",
        "tool": f"scvi-tools {scvi.__version__} SCVI",
        "fit_time_s": fit_time,
        "score_time_s": score_time,
        "epochs": epochs,
        "n_fit_cells": len(model.train_indices),
        "peak_rss_gb": peak,
        "use_observed_lib_size": bool(model.module.use_observed_lib_size),
        "notes": notes,
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
    }
    np.savez(
        args.work_dir / f"scvi-{args.mode}.npz",
        latent=np.asarray(latent, dtype=np.float32),
        heldout_ll=np.asarray(heldout_ll, dtype=np.float64),
        meta_json=json.dumps(meta),
    )
    print(json.dumps({k: v for k, v in meta.items() if k != "versions"}), flush=True)


if __name__ == "__main__":
    main()
