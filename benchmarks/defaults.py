"""Which training defaults reach a good held-out ELBO soonest: batch size, lr and KL warm-up.

Fits scvae's ZINBVAE on PBMC 3k (2,000 highly variable genes; 10 % of the cells held out, the
same cells for every setting) with early stopping as ``fit()`` does by default, and after every
epoch scores the held-out cells in eval mode. Prints, per setting, the best held-out ELBO, the
epochs run and the training CPU seconds (``thread_time``, so that other jobs on the machine
do not count) to reach fixed targets. Each setting runs in its own process, one thread::

    python benchmarks/defaults.py                      # the settings compared for the defaults
    python benchmarks/defaults.py --settings 128,1e-3,0.1 512,4e-3,0.1

A setting is ``batch_size,lr,warmup_fraction`` (KL warm-up over that fraction of all steps).
Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

import numpy as np
from speed import epoch_clock_class, pbmc_genes

TARGETS = (-560.0, -550.0, -540.0, -535.0)
SETTINGS = ("128,1e-3,0.25", "128,1e-3,0.1", "128,1e-3,0.05", "256,2e-3,0.25", "512,4e-3,0.25")


def worker(setting: str, seed: int) -> dict:
    """Fit with one setting in this process and return its held-out trajectory summary."""
    import torch

    import scvae
    from scvae.data import read_query_data
    from scvae.models._vae import default_max_epochs

    torch.set_num_threads(1)
    size, rate, fraction = setting.split(",")
    batch_size, lr, warmup = int(size), float(rate), float(fraction)
    adata = pbmc_genes(2000)
    heldout = np.sort(np.random.default_rng(0).permutation(adata.n_obs)[: adata.n_obs // 10])
    train = adata[np.setdiff1d(np.arange(adata.n_obs), heldout)].copy()
    model = scvae.ZINBVAE(train)
    clock = epoch_clock_class()(read_query_data(adata[heldout], model.setup), time.thread_time)
    n_fit = math.ceil(0.9 * train.n_obs)  # fit() keeps 10 % for validation by default
    n_steps = default_max_epochs(train.n_obs) * math.ceil(n_fit / batch_size)
    model.fit(
        batch_size=batch_size,
        lr=lr,
        n_steps_kl_warmup=int(warmup * n_steps),
        progress_bar=False,
        callbacks=[clock],
        seed=seed,
    )
    elbo, seconds = np.asarray(clock.heldout_elbo), np.cumsum(clock.epoch_times)
    reached = {}
    for target in TARGETS:
        hit = np.nonzero(elbo >= target)[0]
        reached[str(target)] = float(seconds[hit[0]]) if len(hit) else None
    return {
        "setting": setting,
        "best": float(elbo.max()),
        "epochs": len(elbo),
        "cpu_s": float(seconds[-1]),
        "reached": reached,
    }


def main() -> None:
    """Run every setting in a subprocess and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.seed)))
        return
    head = " | ".join(f"CPU s to {t:g}" for t in TARGETS)
    print(f"| batch, lr, warm-up | best held-out ELBO | epochs | CPU s | {head} |")
    print("|---" * (4 + len(TARGETS)) + "|")
    for setting in args.settings:
        command = [sys.executable, __file__, "--worker", setting, "--seed", str(args.seed)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        cells = " | ".join(
            "-" if r["reached"][str(t)] is None else f"{r['reached'][str(t)]:.1f}" for t in TARGETS
        )
        print(
            f"| {setting} | {r['best']:.1f} | {r['epochs']} | {r['cpu_s']:.1f} | {cells} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
