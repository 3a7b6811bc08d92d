"""Training on an AnnData backed on disk (issue 14): peak memory flat in the cells, throughput.

What it measures
----------------
1. Writes h5ad files of ``--sizes`` cells (default 0.5M, 1M, 2M) x PBMC 3k's 2,000 highly
   variable genes, resampled with binomial thinning (:func:`_common.resample_cells`), in chunks
   of ``--chunk`` cells (anndata's ``write_elem`` and the backed sparse dataset's ``append``: the
   writer never holds more than one chunk). The smaller files are prefixes of the largest. They
   go to ``--tmp`` and are deleted at the end (``--keep`` keeps them).
2. In its own process for each file: ``read_h5ad(path, backed="r")``, a ``ZINBVAE`` (10 latent,
   one hidden layer of 128, batch 128) and ``fit(max_epochs=1, train_size=1.0)`` that stops
   after ``--max-cells`` training cells (a callback raises there, so the BatchNorm
   recalibration pass of a complete fit is not run or timed). Recorded: the seconds to read and
   validate the counts (one pass over the file), the training cells/s (clock started after 20
   steps), and the peak RSS of the process (``VmHWM``).
3. The same on the smallest file loaded into memory (``read_h5ad(path)``): the in-memory path's
   cells/s and peak RSS.

Writes ``<out-dir>/backed.json`` and prints a table. Nothing is asserted.

Run from the repository root::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/backed.py
    python benchmarks/backed.py --sizes 20000 50000 --max-cells 20000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    RESULTS_DIR,
    load_average,
    md_table,
    pbmc3k_genes,
    peak_rss_gb,
    resample_cells,
    thread_env,
    write_result,
)

WARMUP_STEPS = 20


def write_files(sizes: list[int], tmp: Path, chunk: int, seed: int) -> dict[int, Path]:
    """h5ad files of each size, written chunk by chunk (the smaller ones are prefixes)."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    base = pbmc3k_genes(2000)
    var = pd.DataFrame(index=[str(v) for v in base.var_names])
    paths = {n: tmp / f"backed_{n}.h5ad" for n in sizes}
    files = {n: h5py.File(path, "w") for n, path in paths.items()}
    written = dict.fromkeys(sizes, 0)
    rng_seed = seed
    try:
        while min(written.values()) < max(sizes) and any(written[n] < n for n in sizes):
            X = resample_cells(base, chunk, seed=rng_seed).X  # (<= chunk, G) CSR float32
            rng_seed += 1
            for n, f in files.items():
                take = min(X.shape[0], n - written[n])
                if take <= 0:
                    continue
                part = sp.csr_matrix(X[:take])
                if written[n] == 0:
                    ad.io.write_elem(f, "X", part)  # resizable: appendable
                else:
                    ad.io.sparse_dataset(f["X"]).append(part)
                written[n] += take
        for n, f in files.items():
            obs = pd.DataFrame(
                {"batch": pd.Categorical(np.repeat("pbmc3k", n))},
                index=[f"cell{i}" for i in range(n)],
            )
            for key, elem in (("obs", obs), ("var", var)):
                ad.io.write_elem(f, key, elem)
            for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
                ad.io.write_elem(f, key, {})
            f.attrs["encoding-type"] = "anndata"
            f.attrs["encoding-version"] = "0.1.0"
    finally:
        for f in files.values():
            f.close()
    return paths


def measure(path: Path, mode: str, max_cells: int, seed: int) -> dict[str, Any]:
    """One fit in this process (``--worker``): setup seconds, cells/s, peak RSS."""
    import anndata as ad
    import lightning.pytorch as pl

    import scvae

    class Enough(Exception):
        pass

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.steps = self.cells = 0
            self.start: float | None = None
            self.seconds = 0.0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.steps += 1
            if self.steps == WARMUP_STEPS:
                self.start = time.perf_counter()
            elif self.start is not None:
                self.cells += batch.n_cells
            if self.steps * batch.n_cells >= max_cells:
                self.seconds = time.perf_counter() - self.start
                raise Enough

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if self.start is not None:  # the epoch ended before max_cells
                self.seconds = time.perf_counter() - self.start

    t0 = time.perf_counter()
    adata = ad.read_h5ad(path, backed="r" if mode == "backed" else None)
    model = scvae.ZINBVAE(adata, n_latent=10, n_hidden=128, n_layers=1)
    setup_s = time.perf_counter() - t0
    clock = Clock()
    try:
        model.fit(
            max_epochs=1,
            batch_size=128,
            train_size=1.0,
            early_stopping=False,
            seed=seed,
            progress_bar=False,
            callbacks=[clock],
        )
    except Enough:
        pass
    return {
        "mode": mode,
        "n_cells": int(adata.n_obs),
        "nnz": int(model._data.X.nnz),
        "setup_s": setup_s,
        "trained_cells": clock.steps * 128,
        "timed_cells": clock.cells,
        "timed_s": clock.seconds,
        "cells_per_s": clock.cells / clock.seconds if clock.seconds else None,
        "peak_rss_gb": peak_rss_gb(),
    }


def run_worker(path: Path, mode: str, max_cells: int, seed: int, threads: int) -> dict:
    """:func:`measure` in a fresh process (its own peak RSS)."""
    out = subprocess.run(
        [sys.executable, __file__, "--worker", str(path), mode, str(max_cells), str(seed)],
        capture_output=True,
        text=True,
        env=thread_env(threads),
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"worker failed ({mode}, {path}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500_000, 1_000_000, 2_000_000])
    parser.add_argument("--max-cells", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", type=Path, default=Path("/tmp/scvae_backed_bench"))
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    sizes = sorted(args.sizes)
    args.tmp.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    t0 = time.perf_counter()
    paths = write_files(sizes, args.tmp, args.chunk, args.seed)
    write_s = time.perf_counter() - t0
    print(f"wrote {len(paths)} files in {write_s:.0f} s", flush=True)
    rows = []
    try:
        for n in sizes:
            row = run_worker(paths[n], "backed", args.max_cells, args.seed, args.threads)
            row["file_gb"] = paths[n].stat().st_size / 2**30
            rows.append(row)
            print(row, flush=True)
        row = run_worker(paths[sizes[0]], "memory", args.max_cells, args.seed, args.threads)
        row["file_gb"] = paths[sizes[0]].stat().st_size / 2**30
        rows.append(row)
        print(row, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.tmp, ignore_errors=True)
    memory_rate = rows[-1]["cells_per_s"]
    for row in rows:
        row["vs_memory"] = row["cells_per_s"] / memory_rate if memory_rate else None
    table = md_table(
        ["path", "cells", "file GiB", "read+validate s", "trained cells", "cells/s", "vs memory",
         "peak RSS GiB"],
        [
            [
                r["mode"], f"{r['n_cells']:,}", f"{r['file_gb']:.2f}", f"{r['setup_s']:.0f}",
                f"{r['trained_cells']:,}", f"{r['cells_per_s']:,.0f}", f"{r['vs_memory']:.2f}",
                f"{r['peak_rss_gb']:.2f}",
            ]
            for r in rows
        ],
        "lrrrrrrr",
    )  # fmt: skip
    print(table)
    payload = {
        "options": {
            "sizes": sizes,
            "max_cells": args.max_cells,
            "chunk": args.chunk,
            "threads": args.threads,
            "seed": args.seed,
            "model": "ZINBVAE(n_latent=10, n_hidden=128, n_layers=1), batch_size=128",
            "warmup_steps": WARMUP_STEPS,
        },
        "write_s": write_s,
        "rows": rows,
        "table": table,
        "load_before_after": [load_before, load_average()],
    }
    path = write_result("backed", payload, script="backed", argv=argv, out_dir=args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        path, mode, max_cells, seed = sys.argv[2:6]
        print(json.dumps(measure(Path(path), mode, int(max_cells), int(seed))))
    else:
        main(sys.argv[1:])
