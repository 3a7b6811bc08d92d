"""Which training defaults reach a good validation ELBO soonest: batch size, lr and KL warm-up.

Fits scvae's ZINBVAE on PBMC 3k (2,000 highly variable genes, all cells) as ``fit()`` does by
default (10 % of the cells validate, early stopping) but for the setting under test, and reads
the validation ELBO after every epoch from ``model.history``. Reports, per setting, the best
validation ELBO, the epochs run and the training CPU seconds (``thread_time`` per epoch,
validation excluded, so that other jobs on the machine do not count) to first reach fixed
targets. Each setting runs in its own process (``scvae_worker.py``), one thread::

    python benchmarks/defaults.py                      # the settings compared for the defaults
    python benchmarks/defaults.py --settings 128,1e-3,0.1 512,4e-3,0.1

A setting is ``batch_size,lr,warmup_fraction``: the KL warm-up is that fraction of all
optimizer steps of the default number of epochs (``min(400, 400 * 20000 / n_cells)``, the rule
documented in ``fit``). The measurements go to ``benchmarks/results/defaults.json``; ``render.py``
makes the table. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from _common import RESULTS_DIR, pbmc3k_genes, run_worker, write_result

TARGETS = (-560.0, -550.0, -540.0, -535.0)
SETTINGS = ("128,1e-3,0.25", "128,1e-3,0.1", "128,1e-3,0.05", "256,2e-3,0.25", "512,4e-3,0.25")


def documented_max_epochs(n_cells: int) -> int:
    """The default of ``fit(max_epochs=None)`` as its docstring states it."""
    return int(max(10, min(400, round(400 * 20_000 / max(n_cells, 1)))))


def run_setting(setting: str, h5ad: Path, n_cells: int, work: Path, seed: int) -> dict[str, Any]:
    """Fit with one setting in a worker process and summarise its validation trajectory.

    Parameters
    ----------
    setting
        ``"batch_size,lr,warmup_fraction"``.
    h5ad
        The counts.
    n_cells
        Cells in ``h5ad``.
    work
        Folder of the job files.
    seed
        Seed of the fit.

    Returns
    -------
    dict
        ``setting``, ``best``, ``epochs``, ``cpu_s`` and ``reached`` (target -> CPU seconds to
        it, None when never reached).
    """
    size, rate, fraction = setting.split(",")
    batch_size, lr, warmup = int(size), float(rate), float(fraction)
    n_fit = math.ceil(0.9 * n_cells)  # fit() keeps 10 % for validation by default
    n_steps = documented_max_epochs(n_cells) * math.ceil(n_fit / batch_size)
    job = {
        "h5ad": str(h5ad),
        "settings": "defaults",
        "overrides": {"batch_size": batch_size, "lr": lr},
        "kl_warmup": int(warmup * n_steps),
        "clock": "cpu",
        "threads": 1,
        "seed": seed,
    }
    meta, _ = run_worker("scvae", job, work / setting.replace(",", "_"))
    elbo, seconds = np.asarray(meta["validation_elbo"]), np.cumsum(meta["epoch_times"])
    reached = {}
    for target in TARGETS:
        hit = np.nonzero(elbo >= target)[0]
        reached[str(target)] = float(seconds[hit[0]]) if len(hit) else None
    return {
        "setting": setting,
        "best": float(elbo.max()),
        "epochs": int(elbo.size),
        "cpu_s": float(seconds[-1]),
        "reached": reached,
    }


def main(argv: list[str] | None = None) -> None:
    """Run every setting and write the result file."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        adata = pbmc3k_genes(2000)
        h5ad = Path(tmp) / "pbmc_hvg.h5ad"
        adata.write_h5ad(h5ad)
        for setting in args.settings:
            rows.append(run_setting(setting, h5ad, adata.n_obs, Path(tmp), args.seed))
            r = rows[-1]
            print(
                f"{setting}: best {r['best']:.1f}, {r['epochs']} epochs, {r['cpu_s']:.1f} CPU s",
                flush=True,
            )
    payload = {"settings": {"seed": args.seed}, "targets": list(TARGETS), "rows": rows}
    write_result("defaults", payload, script="defaults", out_dir=args.out_dir, argv=argv)


if __name__ == "__main__":
    main()
