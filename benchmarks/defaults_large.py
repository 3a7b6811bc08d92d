"""Batch size and learning rate for large data: time to a validation ELBO at 300k cells.

``defaults.py``'s question at scale. PBMC 3k's 2,000 highly variable genes, its cells resampled
to 300,000 with binomial thinning (``_common.resample_cells``). Each setting fits scvae's
ZINBVAE as ``fit()`` does by default (10 % of the cells validate, the same seeded cells for
every setting; ``max_epochs`` and the KL warm-up of the default rule, a tenth of the steps of
``default_max_epochs`` = 27 epochs here) but with its batch size and lr, for a fixed budget of
training CPU seconds (``time.thread_time`` of the training thread, one torch thread, validation
excluded, so that other jobs on a shared machine do not count), and scores the validation cells
every ``--every`` training seconds (``_common.elbo_clock``, through ``fit(callbacks=[...])``).
The settings run at the same time, one process and one thread each, so they share the same
conditions::

    python benchmarks/defaults_large.py                          # 4 settings, 300 CPU s each
    python benchmarks/defaults_large.py --settings 128,1e-3 1024,4e-3 --budget 600
    python benchmarks/defaults_large.py --accelerator cuda --parallel 1   # on a GPU, wall s

A setting is ``batch_size,lr``. Reports per setting the best validation ELBO within the
budget, the training CPU seconds to first reach each target (by default the lowest of the
settings' best ELBOs rounded down to a whole nat, and that minus 2 and minus 10 nats), and
cells/s (cells trained / training CPU seconds). Writes
``benchmarks/results/defaults_large.json``; ``render.py`` makes the table. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import (
    RESULTS_DIR,
    load_average,
    md_table,
    pbmc3k_genes,
    resample_cells,
    run_worker,
    write_result,
)

SETTINGS = ("128,1e-3", "512,2e-3", "512,4e-3", "1024,4e-3")


def first_reached(trace: list[dict[str, Any]], target: float) -> float | None:
    """Training seconds at the first scoring with a validation ELBO of at least ``target``."""
    hit = [p["seconds"] for p in trace if p["validation_elbo"] >= target]
    return hit[0] if hit else None


def auto_targets(rows: list[dict[str, Any]]) -> list[float]:
    """The lowest best ELBO of the settings rounded down to a whole nat, minus 10, 2 and 0."""
    top = math.floor(min(r["best"] for r in rows))
    return [top - 10.0, top - 2.0, float(top)]


def summarise(setting: str, meta: dict[str, Any]) -> dict[str, Any]:
    """One row: best ELBO, trained seconds, steps, cells, cells/s, the trace and epoch ELBOs."""
    trace = meta["elbo_trace"]
    last = trace[-1]
    return {
        "setting": setting,
        "best": max(p["validation_elbo"] for p in trace),
        "final": last["validation_elbo"],
        "train_s": last["seconds"],
        "steps": last["step"],
        "cells": last["cells"],
        "epochs": last["cells"] / meta["n_fit_cells"],
        "cells_per_s": last["cells"] / last["seconds"],
        "kl_warmup": meta["kl_warmup"],
        "fit_wall_s": meta["fit_time_s"],
        "eval_s": sum(p["eval_s"] for p in trace),
        "load_before_after": meta["load_before_after"],
        "peak_rss_gb": meta["peak_rss_gb"],
        "epoch_validation_elbo": meta.get("validation_elbo"),
        "trace": trace,
    }


def table(rows: list[dict[str, Any]], targets: list[float]) -> str:
    """The markdown table of the rows (``render.py`` prints the same)."""
    header = ["batch, lr", "best val. ELBO", "CPU s", "epochs", "cells/s"]
    header += [f"CPU s to {t:g}" for t in targets]
    lines = []
    for r in rows:
        reached = [first_reached(r["trace"], t) for t in targets]
        lines.append(
            [
                r["setting"],
                f"{r['best']:.2f}",
                f"{r['train_s']:.0f}",
                f"{r['epochs']:.1f}",
                f"{r['cells_per_s']:,.0f}",
            ]
            + ["-" if v is None else f"{v:.0f}" for v in reached]
        )
    return md_table(header, lines, "l" + "r" * (len(header) - 1))


def main(argv: list[str] | None = None) -> None:
    """Resample the cells, run every setting in parallel and write the result file."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--n-cells", type=int, default=300_000)
    parser.add_argument("--budget", type=float, default=300.0, help="training CPU s each")
    parser.add_argument("--every", type=float, default=15.0, help="training s between scorings")
    parser.add_argument("--targets", type=float, nargs="*", default=None)
    parser.add_argument("--parallel", type=int, default=0, help="settings at once (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--accelerator", default="cpu", help="cpu, or cuda: wall-clock budget, synchronized"
    )
    parser.add_argument("--work", type=Path, default=None, help="keep the job files here")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    load_before = load_average()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        adata = resample_cells(pbmc3k_genes(2000), args.n_cells, args.seed)
        h5ad = work / "pbmc_resampled.h5ad"
        adata.write_h5ad(h5ad)
        n_cells, n_genes = adata.n_obs, adata.n_vars
        nnz = int(adata.X.nnz)
        del adata
        print(f"{n_cells:,} cells x {n_genes:,} genes, {nnz:,} non-zeros", flush=True)

        def one(setting: str) -> dict[str, Any]:
            size, rate = setting.split(",")
            stem = work / setting.replace(",", "_")
            job = {
                "h5ad": str(h5ad),
                "settings": "defaults",
                "overrides": {"batch_size": int(size), "lr": float(rate)},
                "clock": "cpu" if args.accelerator == "cpu" else "wall",
                "accelerator": args.accelerator,
                "elbo_clock": {
                    "every_s": args.every,
                    "budget_s": args.budget,
                    "trace_path": str(stem.with_suffix(".trace.json")),
                },
                "threads": 1,
                "seed": args.seed,
            }
            meta, _ = run_worker("scvae", job, stem)
            row = summarise(setting, meta)
            print(
                f"{setting}: best {row['best']:.2f} in {row['train_s']:.0f} CPU s, "
                f"{row['cells_per_s']:,.0f} cells/s, {row['epochs']:.1f} epochs",
                flush=True,
            )
            return row

        with ThreadPoolExecutor(max_workers=args.parallel or len(args.settings)) as pool:
            rows = list(pool.map(one, args.settings))
    targets = list(args.targets) if args.targets else auto_targets(rows)
    print(table(rows, targets), flush=True)
    payload = {
        "settings": {
            "n_cells": n_cells,
            "n_genes": n_genes,
            "nnz": nnz,
            "budget_cpu_s": args.budget,
            "every_s": args.every,
            "threads": 1,
            "parallel": args.parallel or len(args.settings),
            "seed": args.seed,
            "accelerator": args.accelerator,
            "clock": "training-thread CPU s" if args.accelerator == "cpu" else "wall s",
        },
        "targets": targets,
        "load_before_after": [load_before, load_average()],
        "total_s": time.perf_counter() - t_start,
        "rows": rows,
    }
    write_result(
        "defaults_large", payload, script="defaults_large", out_dir=args.out_dir, argv=argv
    )


if __name__ == "__main__":
    main()
