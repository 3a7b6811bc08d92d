"""One GPU, measured: training cells/s, peak GPU memory and held-out ELBO, scvae vs scvi-tools.

On the device it finds (``--device cuda|cpu``; CUDA when present), each fit in its own process
(``scvae_worker.py``, ``scvi_worker.py``, job key ``throughput``):

1. **Throughput** of the same model in both tools (ZINB, gene dispersion, latent library;
   10 latent dims, one hidden layer of 128, dropout 0.1, lr 1e-3, every cell trains) for
   2,000 highly variable and all 16,579 genes of PBMC 3k, at 30k and 1M cells made by
   resampling its real cells with binomial thinning (``_common.resample_cells``, in seeded
   chunks of ``--chunk-cells`` on all CPU cores; each cell keeps each UMI with a probability
   drawn from U(0.5, 1), so the sparsity is real). Per batch size (scvae: 128, 1024, 4096,
   8192, to find the largest that helps; scvi-tools: 128, 1024) a fresh fit runs
   ``--warmup-steps`` untimed steps, then is timed for ``--timed-s`` seconds or
   ``--max-timed-steps`` steps (``_common.step_clock``, device synchronized at both ends) and
   stopped: a fixed budget per configuration, not whole epochs of 1M cells. Peak GPU memory is
   ``torch.cuda.max_memory_allocated`` of each fit, in its worker.
2. **Held-out ELBO** of both after the same epochs (``--elbo-epochs``, batch size 128, KL
   warm-up over the first quarter of the epochs in both) on 30k cells x 2,000 genes with a
   seeded 10 % of the cells held out.

The whole run is budgeted (``--budget-s``, default 450 s, so that it ends inside 8 minutes
on an H100/H200): elapsed time is printed per configuration, each worker is given only the
time left (a killed worker keeps the batch sizes it finished) and configurations that no
longer fit are skipped and listed. Nothing is installed at run time: scvi-tools is used when
``--scvi-python`` (or ``benchmarks/.venv-scvi``) imports it, else its columns say "not
available" (``benchmarks/device_check.sh`` brings it to a machine without network).

It prints a markdown table and writes ``benchmarks/results/gpu.json`` (GPU name, versions,
load, every row) and ``gpu.md`` (the tables) beside it::

    python benchmarks/gpu.py                         # the full grid on the GPU (< 8 min)
    python benchmarks/gpu.py --quick --device cpu    # every code path, tiny sizes, CPU
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    BATCH_KEY,
    RESULTS_DIR,
    SCVI_VENV,
    WorkerError,
    WorkerTimeout,
    cuda_device_name,
    fmt_mean_se,
    highly_variable,
    load_average,
    md_table,
    mean_se,
    paired_difference,
    pbmc3k_genes,
    python_imports,
    read_job,
    resample_cells,
    run_worker,
    split_cells,
    thread_env,
    venv_python,
    write_result,
)

#: the model of the comparison, as ``speed.py``'s ``SAME`` (without its epoch clock)
SAME = {
    "settings": "same",
    "n_latent": 10,
    "n_hidden": 128,
    "n_layers": 1,
    "dropout_rate": 0.1,
    "lr": 1e-3,
}
#: what ``--quick`` sets: tiny sizes that run every code path in about a minute on a CPU
QUICK = {
    "genes": ["300", "all"],
    "sizes": [6000],
    "chunk_cells": 3000,
    "scvae_batch_sizes": [64, 256],
    "scvi_batch_sizes": [64, 256],
    "warmup_steps": 2,
    "timed_s": 1.0,
    "max_timed_steps": 10,
    "elbo_cells": 6000,
    "elbo_genes": "300",
    "elbo_epochs": 2,
    "budget_s": 240.0,
}
MIN_WORKER_S = 20.0  # no worker is started with less time left than this
RESERVE_S = 10.0  # kept back for the tables and the result file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (``--quick`` replaces the sizes by :data:`QUICK`).

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
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if any")
    p.add_argument("--quick", action="store_true", help="tiny sizes: every code path, ~1 min")
    p.add_argument("--genes", nargs="+", default=["2000", "all"], help="'all' or a number of HVGs")
    p.add_argument("--sizes", type=int, nargs="+", default=[30_000, 1_000_000])
    p.add_argument("--chunk-cells", type=int, default=65_536, help="cells per resampling chunk")
    p.add_argument("--scvae-batch-sizes", type=int, nargs="+", default=[128, 1024, 4096, 8192])
    p.add_argument("--scvi-batch-sizes", type=int, nargs="+", default=[128, 1024])
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--timed-s", type=float, default=4.0, help="timed seconds per batch size")
    p.add_argument("--max-timed-steps", type=int, default=2000)
    p.add_argument("--elbo-cells", type=int, default=30_000, help="0: no held-out ELBO")
    p.add_argument("--elbo-genes", default="2000")
    p.add_argument("--elbo-epochs", type=int, default=20)
    p.add_argument("--elbo-batch-size", type=int, default=128)
    p.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget of the run")
    p.add_argument("--threads", type=int, default=4, help="torch threads per worker")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-scvi", action="store_true", help="measure scvae only")
    p.add_argument("--scvi-python", type=Path, default=None, help="an interpreter with scvi")
    p.add_argument("--scvi-venv", type=Path, default=SCVI_VENV)
    p.add_argument("--work-dir", type=Path, default=None, help="data files (default: a tmp dir)")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default="gpu", help="result file <out-dir>/<name>.json")
    args = p.parse_args(argv)
    if args.quick:
        given = {a.lstrip("-").split("=")[0].replace("-", "_") for a in (argv or [])}
        for key, value in QUICK.items():
            if key not in given:
                setattr(args, key, value)
    return args


# --------------------------------------------------------------------------------- the data
_BASE = None  # the PBMC 3k cells (all genes), inherited by the forked resampling processes


def _resample_chunk(task: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One chunk of resampled cells (CSR parts), in a pool process."""
    n_cells, seed = task
    X = resample_cells(_BASE, n_cells, seed).X
    return X.indptr, X.indices, X.data, X.shape[1]


def resampled_counts(base, n_cells: int, seed: int, chunk_cells: int):
    """``n_cells`` PBMC 3k cells resampled with binomial thinning, as one CSR (all genes).

    Up to ``chunk_cells`` cells are one :func:`_common.resample_cells` call with ``seed``;
    more are split into equal chunks of at most ``chunk_cells`` (each larger than PBMC 3k, so
    every chunk is resampled), seeded by ``SeedSequence(seed).spawn`` and drawn on all CPU
    cores. The cells depend on ``seed`` and ``chunk_cells``, not on the machine. Cells left
    empty by the thinning are dropped, so a few fewer than ``n_cells`` may come back.

    Returns
    -------
    scipy.sparse.csr_matrix
        (about n_cells, 16,579) float32 counts.
    """
    import scipy.sparse as sp

    global _BASE
    if n_cells <= chunk_cells:
        return sp.csr_matrix(resample_cells(base, n_cells, seed).X)
    n_chunks = math.ceil(n_cells / chunk_cells)
    sizes = np.diff(np.linspace(0, n_cells, n_chunks + 1).round().astype(np.int64))
    if sizes.min() <= base.n_obs:
        raise ValueError(f"chunks of {sizes.min()} cells would not be resampled: raise chunk_cells")
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n_chunks)]
    _BASE = base
    workers = max(1, min(n_chunks, (os.cpu_count() or 1)))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        parts = list(pool.map(_resample_chunk, zip(sizes.tolist(), seeds, strict=True)))
    _BASE = None
    return sp.vstack(
        [sp.csr_matrix((d, i, p), shape=(len(p) - 1, g)) for p, i, d, g in parts], format="csr"
    )


def write_gene_sets(
    counts, base, genes: list[str], masks: dict[str, np.ndarray], stem: Path
) -> dict[str, dict[str, Any]]:
    """Write one ``.h5ad`` per gene set of the resampled cells (empty cells dropped).

    Returns
    -------
    dict
        Gene set -> ``{"path", "n_cells", "n_genes", "nnz", "density"}``.
    """
    import anndata as ad
    import scipy.sparse as sp

    out = {}
    for gene_set in genes:
        X = counts if gene_set == "all" else counts[:, masks[gene_set]]
        X = sp.csr_matrix(X[np.asarray(X.sum(axis=1)).ravel() > 0])
        var = base.var if gene_set == "all" else base.var[masks[gene_set]]
        path = stem.with_name(f"{stem.name}_{gene_set}.h5ad")
        obs = {BATCH_KEY: np.repeat("pbmc3k", X.shape[0])}
        ad.AnnData(X=X, obs=obs, var=var).write_h5ad(path)
        n, g = X.shape
        out[gene_set] = {
            "path": path,
            "n_cells": n,
            "n_genes": g,
            "nnz": int(X.nnz),
            "density": X.nnz / (n * g),
        }
    return out


# -------------------------------------------------------------------------------- the clock
class Budget:
    """The run's wall-clock budget: elapsed and remaining seconds, worker time limits."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.start

    @property
    def left(self) -> float:
        """Seconds left, less the reserve for the report."""
        return self.seconds - self.elapsed - RESERVE_S

    def worker_limit(self, share: float = 1.0) -> float | None:
        """A worker's time limit: ``share`` of what is left (None when too little is left)."""
        left = self.left
        if left < MIN_WORKER_S:
            return None
        return max(MIN_WORKER_S, share * left)


def run_tool(
    tool: str, job: dict[str, Any], stem: Path, limit: float | None, args: argparse.Namespace
) -> dict[str, Any]:
    """Run one worker within ``limit`` seconds; a failure becomes ``{"error": ...}``.

    A worker killed at its limit returns the rows it wrote before (``"timed_out": True``).
    """
    if limit is None:
        return {"error": "skipped: the budget was spent"}
    kw: dict[str, Any] = {"scvi_venv": args.scvi_venv, "timeout": limit}
    if tool == "scvi":
        kw["scvi_python"] = args.scvi_python_found
    try:
        meta, arrays = run_worker(tool, job, stem, **kw)
        return {**meta, "arrays": arrays}
    except WorkerTimeout as err:
        partial = stem.with_suffix(".json")
        meta = read_job(partial) if partial.exists() else {}
        return {**meta, "timed_out": True, "error": str(err)}
    except WorkerError as err:
        return {"error": str(err)}


# ----------------------------------------------------------------------------------- parts
def throughput_rows(
    data: dict[str, Any], genes: str, args: argparse.Namespace, budget: Budget, work: Path
) -> list[dict[str, Any]]:
    """Both tools at every batch size on one data set; one row per tool and batch size."""
    base_job = {
        **SAME,
        "h5ad": str(data["path"]),
        "threads": args.threads,
        "seed": args.seed,
        "accelerator": args.accelerator,
    }
    timing = {
        "warmup_steps": args.warmup_steps,
        "timed_s": args.timed_s,
        "max_timed_steps": args.max_timed_steps,
    }
    tools = [("scvae", args.scvae_batch_sizes)]
    if args.scvi_python_found is not None:
        tools.append(("scvi", args.scvi_batch_sizes))
    rows = []
    for i, (tool, batch_sizes) in enumerate(tools):
        t0 = time.perf_counter()
        share = 0.6 if i + 1 < len(tools) else 1.0
        job = {**base_job, "throughput": {**timing, "batch_sizes": batch_sizes}}
        stem = work / f"tp_{genes}_{data['n_cells']}_{tool}"
        out = run_tool(tool, job, stem, budget.worker_limit(share), args)
        found = {r["batch_size"]: r for r in out.get("rows", [])}
        if out.get("versions"):
            args.worker_versions[tool] = out["versions"]
        for batch_size in batch_sizes:
            row = dict(found.get(batch_size, {"batch_size": batch_size}))
            row["timed_cells"] = row.pop("cells", None)  # "cells" names the data set's
            if batch_size not in found:
                row["error"] = out.get("error", "not measured")
            rows.append(
                {
                    "tool": tool,
                    "tool_version": out.get("tool"),
                    "genes": data["n_genes"],
                    "cells": data["n_cells"],
                    "nnz": data["nnz"],
                    **row,
                }
            )
        rates = ", ".join(
            f"{r['batch_size']}: {r['cells_per_s']:,.0f}" if r.get("cells_per_s") else
            f"{r['batch_size']}: {r.get('error', '-')[:60]}"
            for r in rows[-len(batch_sizes):]
        )  # fmt: skip
        print(
            f"  {tool:5s} {data['n_genes']:>6,} genes x {data['n_cells']:>9,} cells: cells/s "
            f"{rates} ({time.perf_counter() - t0:.0f} s; elapsed {budget.elapsed:.0f} s)",
            flush=True,
        )
    return rows


def heldout_elbo(
    data: dict[str, Any], args: argparse.Namespace, budget: Budget, work: Path
) -> dict[str, Any]:
    """Both tools' held-out ELBO after the same epochs, batch size and KL warm-up."""
    train_idx, heldout_idx = split_cells(data["n_cells"], 0.1, args.seed)
    split = work / "elbo_split.npz"
    np.savez(split, train_idx=train_idx, heldout_idx=heldout_idx)
    steps_per_epoch = math.ceil(len(train_idx) / args.elbo_batch_size)
    warmup_epochs = max(1, args.elbo_epochs // 4)
    job = {
        **SAME,
        "h5ad": str(data["path"]),
        "split": str(split),
        "max_epochs": args.elbo_epochs,
        "batch_size": args.elbo_batch_size,
        "heldout_elbo": True,
        "threads": args.threads,
        "seed": args.seed,
        "accelerator": args.accelerator,
    }
    # the same warm-up in each tool's unit: scvae counts optimizer steps, scvi-tools epochs
    warmups = {"scvae": warmup_epochs * steps_per_epoch, "scvi": warmup_epochs}
    result: dict[str, Any] = {
        "genes": data["n_genes"],
        "cells": data["n_cells"],
        "n_train": len(train_idx),
        "n_heldout": len(heldout_idx),
        "epochs": args.elbo_epochs,
        "batch_size": args.elbo_batch_size,
        "kl_warmup_epochs": warmup_epochs,
    }
    tools = ["scvae"] + (["scvi"] if args.scvi_python_found is not None else [])
    for i, tool in enumerate(tools):
        t0 = time.perf_counter()
        share = 0.5 if i + 1 < len(tools) else 1.0
        tool_job = {**job, "kl_warmup": warmups[tool]}
        limit = budget.worker_limit(share)
        out = run_tool(tool, tool_job, work / f"elbo_{tool}", limit, args)
        arrays = out.pop("arrays", {})
        result[tool] = {
            "tool": out.get("tool"),
            "heldout_elbo": mean_se(arrays.get("heldout_elbo")),
            "fit_time_s": out.get("fit_time_s"),
            "epochs": out.get("epochs"),
            "peak_gpu_gb": out.get("peak_gpu_gb"),
            "error": out.get("error"),
            "per_cell": arrays.get("heldout_elbo"),
        }
        print(
            f"  {tool:5s} held-out ELBO after {args.elbo_epochs} epochs: "
            f"{fmt_mean_se(result[tool]['heldout_elbo'], 2, out.get('error', '-')[:80])} "
            f"({time.perf_counter() - t0:.0f} s; elapsed {budget.elapsed:.0f} s)",
            flush=True,
        )
    a, b = (result.get(t, {}).get("per_cell") for t in ("scvae", "scvi"))
    if a is not None and b is not None:
        result["paired_difference"] = paired_difference(a, b)
    for tool in tools:
        result[tool].pop("per_cell")
    return result


# ---------------------------------------------------------------------------------- report
def fmt_rate(row: dict[str, Any] | None) -> str:
    """Cells/s of a row, ``"-"`` when not run, or the reason it has none."""
    if row is None:
        return "-"
    if row.get("cells_per_s"):
        return f"{row['cells_per_s']:,.0f}"
    error = str(row.get("error") or "failed")
    return "out of memory" if "out of memory" in error.lower() else error.split(":")[0][:40]


def fmt_gb(row: dict[str, Any] | None) -> str:
    """Peak GPU memory of a row in GiB, or ``"-"``."""
    return "-" if row is None or row.get("peak_gpu_gb") is None else f"{row['peak_gpu_gb']:.2f}"


def tables(payload: dict[str, Any]) -> str:
    """The markdown of a result: throughput by data set and batch size, then held-out ELBO."""
    rows = payload.get("throughput", [])
    scvi_missing = payload["scvi"]["available"] is False
    keys = sorted({(r["genes"], r["cells"]) for r in rows})
    lines = []
    body = []
    for genes, cells in keys:
        here = [r for r in rows if (r["genes"], r["cells"]) == (genes, cells)]
        by = {(r["tool"], r["batch_size"]): r for r in here}
        best = {}
        for tool in ("scvae", "scvi"):
            rated = [r for r in here if r["tool"] == tool and r.get("cells_per_s")]
            if rated:
                best[tool] = max(rated, key=lambda r: r["cells_per_s"])["batch_size"]
        for batch_size in sorted({r["batch_size"] for r in here}):
            ours, theirs = by.get(("scvae", batch_size)), by.get(("scvi", batch_size))
            ratio = "-"
            if ours and theirs and ours.get("cells_per_s") and theirs.get("cells_per_s"):
                ratio = f"{ours['cells_per_s'] / theirs['cells_per_s']:.1f}x"
            a, b = fmt_rate(ours), "not available" if scvi_missing else fmt_rate(theirs)
            if best.get("scvae") == batch_size:
                a = f"**{a}**"
            if best.get("scvi") == batch_size:
                b = f"**{b}**"
            their_gb = "-" if scvi_missing else fmt_gb(theirs)
            cells_text = f"{cells:,}"
            body.append(
                [f"{genes:,}", cells_text, str(batch_size), a, b, ratio, fmt_gb(ours), their_gb]
            )
    header = ["genes", "cells", "batch", "scvae cells/s", "scvi-tools cells/s", "ratio"]
    header += ["scvae peak GiB", "scvi-tools peak GiB"]
    lines.append(md_table(header, body, "rrrrrrrr"))
    lines.append(
        "\nBold: the batch size with the most cells/s for that tool and data set. Peak GiB: "
        "`torch.cuda.max_memory_allocated` of the fit (scvae keeps the counts on the GPU, "
        "scvi-tools on the host)."
    )
    elbo = payload.get("heldout_elbo")
    if elbo:
        body = []
        for tool, label in (("scvae", "scvae"), ("scvi", "scvi-tools")):
            r = elbo.get(tool)
            if r is None:
                body.append([label, "not available", "-", "-"])
                continue
            fit = "-" if r.get("fit_time_s") is None else f"{r['fit_time_s']:.1f}"
            error = (r.get("error") or "-").split(":")[0][:40]
            body.append([label, fmt_mean_se(r["heldout_elbo"], 2, error), fit, fmt_gb(r)])
        lines.append(
            f"\nHeld-out ELBO (nats per cell, higher is better) on {elbo['n_heldout']:,} of "
            f"{elbo['cells']:,} cells x {elbo['genes']:,} genes after {elbo['epochs']} epochs "
            f"at batch size {elbo['batch_size']} (KL warm-up {elbo['kl_warmup_epochs']} "
            "epochs in both):\n"
        )
        lines.append(md_table(["tool", "held-out ELBO", "fit s", "peak GiB"], body, "lrrr"))
        d = elbo.get("paired_difference")
        if d:
            lines.append(
                f"\nscvae - scvi-tools, per held-out cell: {d['mean']:+.2f} ± {d['se']:.2f} "
                f"nats (higher for {100 * d['frac_higher']:.0f} % of the cells)."
            )
    if payload.get("skipped"):
        lines.append("\nSkipped (budget): " + "; ".join(payload["skipped"]) + ".")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- main
def find_scvi(args: argparse.Namespace) -> tuple[Path | None, str]:
    """An interpreter that imports scvi-tools (nothing is installed), and why not if none."""
    if args.no_scvi:
        return None, "not run (--no-scvi)"
    candidates = [args.scvi_python] if args.scvi_python else [venv_python(args.scvi_venv)]
    for python in candidates:
        if Path(python).exists() and python_imports(python, "scvi", thread_env(1)):
            return Path(python), f"scvi-tools from {python}"
    return (
        None,
        f"not available: no interpreter that imports scvi ({', '.join(map(str, candidates))})",
    )


def main(argv: list[str] | None = None) -> None:
    """Run the grid within the budget, print the tables, write the result files."""
    import torch

    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    args.accelerator = "gpu" if device == "cuda" else "cpu"
    gpu = cuda_device_name() if device == "cuda" else None
    args.scvi_python_found, scvi_note = find_scvi(args)
    args.worker_versions = {}
    print(f"device: {gpu or 'CPU'}; scvi-tools: {scvi_note}", flush=True)
    payload: dict[str, Any] = {
        "device": device,
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "scvi": {"available": args.scvi_python_found is not None, "note": scvi_note},
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("out_dir", "name", "scvi_python_found", "worker_versions")
        },
        "model": SAME,
        "load_before_after": [load_average(), None],
        "throughput": [],
        "skipped": [],
    }
    base = pbmc3k_genes(None)
    wanted = sorted({g for g in [*args.genes, args.elbo_genes] if g != "all"}, key=int)
    masks = {g: highly_variable(base.X, int(g)) for g in wanted}
    sizes = sorted(set(args.sizes))
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        work = Path(tmp)
        for n_cells in sizes:
            genes = list(args.genes)
            if n_cells == args.elbo_cells and args.elbo_genes not in genes:
                genes.append(args.elbo_genes)
            if budget.left < MIN_WORKER_S * 2:
                payload["skipped"].append(f"{n_cells:,} cells (all gene sets)")
                continue
            t0 = time.perf_counter()
            counts = resampled_counts(base, n_cells, args.seed, args.chunk_cells)
            data = write_gene_sets(counts, base, genes, masks, work / f"cells_{n_cells}")
            del counts
            print(
                f"{n_cells:,} cells resampled and written ({time.perf_counter() - t0:.0f} s; "
                f"elapsed {budget.elapsed:.0f} s)",
                flush=True,
            )
            for gene_set in args.genes:
                if budget.left < MIN_WORKER_S:
                    payload["skipped"].append(f"{n_cells:,} cells x {gene_set} genes")
                    continue
                payload["throughput"] += throughput_rows(
                    data[gene_set], gene_set, args, budget, work
                )
                if n_cells == args.elbo_cells and gene_set == args.elbo_genes:
                    payload["heldout_elbo"] = heldout_elbo(data[gene_set], args, budget, work)
            if n_cells == args.elbo_cells and "heldout_elbo" not in payload:
                if budget.left < MIN_WORKER_S:
                    payload["skipped"].append("held-out ELBO")
                else:
                    payload["heldout_elbo"] = heldout_elbo(
                        data[args.elbo_genes], args, budget, work
                    )
            payload.setdefault("data", {})[str(n_cells)] = {
                g: {k: v for k, v in d.items() if k != "path"} for g, d in data.items()
            }
            for d in data.values():
                d["path"].unlink(missing_ok=True)
        if args.elbo_cells and args.elbo_cells not in sizes:
            payload["skipped"].append(f"held-out ELBO ({args.elbo_cells:,} cells not in --sizes)")
    payload["load_before_after"][1] = load_average()
    payload["worker_versions"] = args.worker_versions
    payload["elapsed_s"] = budget.elapsed
    text = tables(payload)
    title = f"{gpu or 'CPU'} ({device}), torch {torch.__version__}, {budget.elapsed:.0f} s"
    print(f"\n{title}\n\n{text}\n", flush=True)
    payload["markdown"] = text
    path = write_result(args.name, payload, script="gpu", argv=argv, out_dir=args.out_dir)
    path.with_suffix(".md").write_text(f"{title}\n\n{text}\n")


if __name__ == "__main__":
    main()
