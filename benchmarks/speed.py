"""Training speed: scvae's ZINBVAE against scvi-tools' SCVI, side by side in one run.

Two measurements, each fit in its own process (``scvae_worker.py``, ``scvi_worker.py``), timed
per training epoch by the same Lightning callback (``_common.epoch_clock``):

1. **Throughput at equal settings** (the same model: ZINB, gene dispersion, latent library;
   10 latent dims, one hidden layer of 128, dropout 0.1; batch size 128; every cell trains, no
   validation): cells/s at the median epoch after the first, its range over those epochs, and
   the peak resident memory, on PBMC 3k (``--genes``: all 16,579 genes, or the N most highly
   variable; ``--genes 1000 2000 5000 all`` shows where the sparse first layer pays) and on
   larger sets made by resampling its real cells with binomial thinning (``--sizes``; each
   resampled cell keeps each UMI with a probability drawn from U(0.5, 1), so sparsity stays
   realistic). Each size trains ``--epoch-cells`` cells (at least 2 epochs below that many
   cells, else one), once per ``--threads`` value and ``--repeats`` times (scvae, then scVI).
2. **Time to a validation ELBO with each tool's defaults** (PBMC 3k, 2,000 highly variable
   genes, all cells): ``ZINBVAE(adata).fit()`` and ``SCVI(adata).train()``, both validated on
   the 10 % of the cells that scvae's ``fit`` holds out (scVI is given the same split) after
   every epoch, and the training time (validation excluded) each needs to first reach a fixed
   target, the lower of the two tools' best validation ELBO.

The dense-or-sparse choice of scvae's first layer is internal and automatic; it is not switched
here (``--genes`` measures its effect through ``fit``). scvi-tools lives only in
``benchmarks/.venv-scvi`` (created when missing). Nothing is asserted. Run from the repository
root::

    python benchmarks/speed.py                            # everything (~40 min, 2 cores)
    python benchmarks/speed.py --sizes 2638 30000 --threads 1 2 --skip-defaults
    python benchmarks/speed.py --sizes 2638 --genes 2000 --skip-defaults   # a quick look

Results go to ``benchmarks/results/speed.json``; ``render.py`` makes the docs tables.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    RESULTS_DIR,
    SCVI_VENV,
    pbmc3k_genes,
    rate_spread,
    resample_cells,
    run_worker,
    write_result,
)

SAME = {
    "settings": "same",
    "n_latent": 10,
    "n_hidden": 128,
    "n_layers": 1,
    "dropout_rate": 0.1,
    "batch_size": 128,
    "lr": 1e-3,
    "clock": "wall",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Parameters
    ----------
    argv
        Arguments; ``None`` reads ``sys.argv``.

    Returns
    -------
    argparse.Namespace
        The options.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2638, 30000, 300000])
    p.add_argument("--genes", nargs="+", default=["all", "2000"], help="'all' or a number of HVGs")
    p.add_argument(
        "--epoch-cells", type=int, default=60000, help="cells to train per size, at least one epoch"
    )
    p.add_argument("--threads", type=int, nargs="+", default=[2], help="torch threads per tool")
    p.add_argument("--repeats", type=int, default=1, help="runs of each throughput row")
    p.add_argument("--accelerator", default="cpu", help="both tools' Lightning accelerator")
    p.add_argument("--skip-defaults", action="store_true", help="skip the time to quality")
    p.add_argument(
        "--defaults-max-epochs",
        type=int,
        default=None,
        help="cap the defaults' epochs (smoke test)",
    )
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scvi-venv", type=Path, default=SCVI_VENV)
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default="speed", help="result file <out-dir>/<name>.json")
    return p.parse_args(argv)


def tool_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """The parts of a worker's measurements that the throughput rows keep."""
    return {
        "tool": meta["tool"],
        "cells_per_s": rate_spread(meta["cells_per_epoch"], meta["epoch_times"]),
        "cells_per_epoch": meta["cells_per_epoch"],
        "epoch_times": meta["epoch_times"],
        "peak_rss_gb": meta["peak_rss_gb"],
        "fit_time_s": meta["fit_time_s"],
        "torch_threads": meta["torch_threads"],
        "load_before_after": meta["load_before_after"],
        "versions": meta["versions"],
    }


def throughput(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Part 1: the equal-settings rows, one per gene set, size, thread count and repeat.

    Returns
    -------
    list of dict
        ``genes``, ``cells``, ``epochs``, ``threads``, ``repeat``, ``scvae`` and ``scvi``
        (:func:`tool_summary`) and ``ratio`` (scvae cells/s over scVI's, at the median epochs).
    """
    rows = []
    for genes in args.genes:
        base = pbmc3k_genes(None if genes == "all" else int(genes))
        for n_cells in args.sizes:
            adata = resample_cells(base, n_cells, args.seed)
            path = work / f"cells_{genes}_{n_cells}.h5ad"
            adata.write_h5ad(path)
            n = adata.n_obs
            epochs = max(2, -(-args.epoch_cells // n)) if n < args.epoch_cells else 1
            for threads in args.threads:
                for repeat in range(args.repeats):
                    job = {
                        **SAME,
                        "h5ad": str(path),
                        "max_epochs": epochs,
                        "threads": threads,
                        "seed": args.seed,
                        "accelerator": args.accelerator,
                    }
                    stem = work / f"{genes}_{n_cells}_t{threads}_r{repeat}"
                    kw = {"scvi_venv": args.scvi_venv}
                    ours, _ = run_worker("scvae", job, stem.with_name(stem.name + "_scvae"), **kw)
                    theirs, _ = run_worker("scvi", job, stem.with_name(stem.name + "_scvi"), **kw)
                    row = {
                        "genes": int(base.n_vars),
                        "cells": int(n),
                        "epochs": epochs,
                        "threads": threads,
                        "repeat": repeat,
                        "scvae": tool_summary(ours),
                        "scvi": tool_summary(theirs),
                    }
                    a, b = row["scvae"]["cells_per_s"], row["scvi"]["cells_per_s"]
                    row["ratio"] = a["median"] / b["median"]
                    print(
                        f"genes {row['genes']}, cells {n:,}, {threads} thread(s), run {repeat}: "
                        f"scvae {a['median']:,.0f} ({a['min']:,.0f}-{a['max']:,.0f}) cells/s, "
                        f"scVI {b['median']:,.0f} ({b['min']:,.0f}-{b['max']:,.0f}), "
                        f"ratio {row['ratio']:.2f}x",
                        flush=True,
                    )
                    rows.append(row)
            path.unlink()
    return rows


def time_to_quality(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Part 2: each tool with its defaults, training time to a fixed validation ELBO.

    Returns
    -------
    dict
        ``target`` and per tool: epochs, total training seconds, best validation ELBO, the
        first epoch at the target and the training seconds to it; ``speedup`` (scVI seconds
        over scvae seconds to the target).
    """
    adata = pbmc3k_genes(2000)
    path = work / "pbmc_hvg.h5ad"
    adata.write_h5ad(path)
    threads = args.threads[0]
    job = {
        "h5ad": str(path),
        "settings": "defaults",
        "defaults_max_epochs": args.defaults_max_epochs,
        "clock": "wall",
        "threads": threads,
        "seed": args.seed,
        "accelerator": args.accelerator,
    }
    ours, cells = run_worker("scvae", job, work / "defaults_scvae", scvi_venv=args.scvi_venv)
    split = work / "validation_split.npz"
    np.savez(
        split, train_indices=cells["train_indices"], validation_indices=cells["validation_indices"]
    )
    theirs, _ = run_worker(
        "scvi",
        {**job, "validation_split": str(split)},
        work / "defaults_scvi",
        scvi_venv=args.scvi_venv,
    )
    target = min(max(ours["validation_elbo"]), max(theirs["validation_elbo"]))
    result: dict[str, Any] = {"target": target, "threads": threads, "n_cells": int(adata.n_obs)}
    for key, meta in (("scvae", ours), ("scvi", theirs)):
        elbo = np.asarray(meta["validation_elbo"], dtype=np.float64)
        seconds = np.cumsum(meta["epoch_times"])
        first = int(np.argmax(elbo >= target))
        result[key] = {
            "tool": meta["tool"],
            "epochs": int(elbo.size),
            "train_s": float(seconds[-1]),
            "best_validation_elbo": float(elbo.max()),
            "epochs_to_target": first + 1,
            "s_to_target": float(seconds[first]),
            "validation_elbo": elbo,
            "epoch_times": meta["epoch_times"],
            "n_validation": len(cells["validation_indices"]),
        }
    result["speedup"] = result["scvi"]["s_to_target"] / result["scvae"]["s_to_target"]
    print(
        f"target {target:.2f}: scvae {result['scvae']['s_to_target']:.1f} s, scVI "
        f"{result['scvi']['s_to_target']:.1f} s, speed-up {result['speedup']:.1f}x",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> None:
    """Run the selected parts and write the result file."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    payload: dict[str, Any] = {
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("scvi_venv", "out_dir", "name")
        },
        "device": "CPU only" if args.accelerator == "cpu" else args.accelerator,
    }
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_throughput:
            payload["throughput"] = throughput(args, Path(tmp))
        if not args.skip_defaults:
            payload["time_to_quality"] = time_to_quality(args, Path(tmp))
    write_result(args.name, payload, script="speed", out_dir=args.out_dir, argv=argv)


if __name__ == "__main__":
    main()
