"""scvae's ZINBVAE against scvi-tools' SCVI and scanpy's PCA: speed, memory, fit, integration.

What it measures
----------------
For each ``*.h5ad`` file in ``--data-dir`` (raw counts in ``X``, ``obs["cell_type"]``,
``obs["batch"]``), with the data preparation of ``benchmarks/baselines.py`` (imported, not
copied): a seeded 90 % / 10 % split into train and held-out cells, the 2,000 most highly
variable genes of the train cells (a file with fewer genes keeps all), ``batch_key="batch"``
when the file has more than one batch. Then five methods:

* ``scvae (same)`` and ``scVI (same)``: identical settings: ZINB, gene dispersion, latent
  library with the empirical per-batch prior, 10 latent dims, 1 x 128 hidden, dropout 0.1,
  ``--max-epochs`` epochs, batch size 128, Adam lr 1e-3, every train cell used for training (no
  validation split, so both see the same cells), no early stopping, KL warm-up over the first
  tenth of training (scvae's default; scVI's ``n_epochs_kl_warmup`` set to match);
* ``scvae (defaults)``: ``ZINBVAE(train, batch_key=...)`` and ``model.fit()``;
* ``scVI (defaults)``: ``SCVI(train)`` (after ``setup_anndata(batch_key=...)``) and
  ``model.train()``: what users get (note: scVI's default uses the observed library size, so
  its log p(x) is conditional on it);
* ``scanpy PCA``: ``normalize_total(1e4)``, ``log1p``, ``pca(n_comps=50)`` on all cells (the
  standard pipeline; no held-out likelihood of counts, reported as n/a).

Each method runs in its own process (scVI in ``benchmarks/.venv-scvi``, created by
``heldout_vs_scvi.ensure_scvi_venv`` when missing; scvi-tools is never a dependency of scvae),
which reports the fit wall time, the cells/s (cells trained on x epochs / fit time), the peak
resident memory of that process at the end of the fit (imports + data + fit), the posterior
means of all cells and the per-cell IWAE estimate of log p(x) of the held-out cells with
``--iwae-samples`` importance samples. The scores of ``scvae.tl.evaluate`` (scIB's metrics,
Leiden and GMM clusters) are computed on the embedding of all cells. UMAPs of every embedding,
coloured by cell type and batch, go to ``benchmarks/results/compare_<dataset>.png``; the
tables to ``benchmarks/results/compare.md``. Nothing is asserted.

Run from the repository root, in the environment where scvae is installed::

    python benchmarks/compare.py                      # every data set, 100 epochs, K = 100
    python benchmarks/compare.py --quick --datasets pbmc_3chemistries_small   # smoke test

``--quick`` trains 2 epochs (also for the "defaults" rows), uses K = 5 and 200 genes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from _common import DOCS, peak_rss_gb, write_section

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_VENV = BENCH_DIR / ".venv-scvi"
LABEL_KEY, BATCH_KEY = "cell_type", "batch"
METHODS = ("scvae-same", "scvi-same", "scvae-defaults", "scvi-defaults", "pca")
TITLES = {
    "scvae-same": "scvae (same)",
    "scvi-same": "scVI (same)",
    "scvae-defaults": "scvae (defaults)",
    "scvi-defaults": "scVI (defaults)",
    "pca": "scanpy PCA",
}
# rows of the per-data-set table: (label, metric name in scvae.tl.evaluate)
METRIC_ROWS = (
    ("Leiden ARI", "leiden_ari"),
    ("Leiden NMI", "leiden_nmi"),
    ("GMM ARI", "gmm_ari"),
    ("GMM NMI", "gmm_nmi"),
    ("cell-type silhouette", "silhouette_label"),
    ("cLISI", "clisi"),
    ("batch silhouette", "silhouette_batch"),
    ("iLISI", "ilisi"),
    ("kBET", "kbet"),
    ("graph connectivity", "graph_connectivity"),
    ("bio conservation", "bio_conservation"),
    ("batch correction", "batch_correction"),
    ("total (0.6 bio + 0.4 batch)", "total"),
)


@dataclass
class Result:
    """One method on one data set.

    Attributes
    ----------
    method
        Key in :data:`METHODS`.
    meta
        What the worker reported (fit time, epochs, cells, peak memory, notes, versions).
    latent
        (n_cells, n_dims) embedding of all cells, or None when the run failed.
    heldout_ll
        Per-cell held-out IWAE log p(x), or None (PCA, failure).
    scores
        ``scvae.tl.evaluate`` table of the embedding.
    error
        Why the run failed, if it did.
    """

    method: str
    meta: dict = field(default_factory=dict)
    latent: np.ndarray | None = None
    heldout_ll: np.ndarray | None = None
    scores: pd.DataFrame | None = None
    error: str | None = None

    @property
    def cells_per_s(self) -> float | None:
        """Cells trained on x epochs / fit time (None without epochs)."""
        if not self.meta.get("epochs"):
            return None
        return self.meta["n_fit_cells"] * self.meta["epochs"] / self.meta["fit_time_s"]


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
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--datasets", nargs="+", default=None, help="file stems (default: all)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--max-epochs", type=int, default=100, help="epochs of the 'same' runs")
    p.add_argument("--iwae-samples", type=int, default=100, help="importance samples K")
    p.add_argument("--n-top-genes", type=int, default=2000)
    p.add_argument("--heldout-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS threads of every fit")
    p.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    p.add_argument("--scvi-venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument(
        "--worker", choices=["scvae-same", "scvae-defaults", "pca"], help=argparse.SUPPRESS
    )
    p.add_argument("--work-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.defaults_max_epochs = None
    if args.quick:
        args.max_epochs, args.iwae_samples, args.n_top_genes = 2, 5, 200
        args.defaults_max_epochs = 2
    return args


# ------------------------------------------------------------------------- worker processes
def _load_work(work_dir: Path) -> tuple[dict, ad.AnnData, np.ndarray, np.ndarray]:
    config = json.loads((work_dir / "config.json").read_text())
    adata = ad.read_h5ad(work_dir / "counts.h5ad")
    split = np.load(work_dir / "split.npz")
    return config, adata, split["train_idx"], split["heldout_idx"]


def scvae_worker(work_dir: Path, mode: str) -> None:
    """Fit scvae's ZINBVAE on the train cells, embed all cells, score the held-out cells.

    Parameters
    ----------
    work_dir
        Folder with ``counts.h5ad``, ``split.npz`` and ``config.json``; the result goes to
        ``scvae-<mode>.npz`` there.
    mode
        ``"same"`` (the shared settings) or ``"defaults"``.
    """
    import torch

    import scvae

    config, adata, train_idx, heldout_idx = _load_work(work_dir)
    torch.set_num_threads(config["threads"])
    train, heldout = adata[train_idx].copy(), adata[heldout_idx].copy()
    run = {"accelerator": "cpu", "progress_bar": False, "seed": config["seed"]}
    if mode == "same":
        model = scvae.ZINBVAE(
            train,
            batch_key=config["batch_key"],
            n_latent=config["n_latent"],
            n_hidden=config["n_hidden"],
            n_layers=config["n_layers"],
            dropout_rate=config["dropout_rate"],
            dispersion="gene",
            library="latent",
        )
        fit = {
            "max_epochs": config["max_epochs"],
            "batch_size": config["batch_size"],
            "lr": config["lr"],
            "train_size": 1.0,
            "early_stopping": False,
        }
    else:
        model = scvae.ZINBVAE(train, batch_key=config["batch_key"])
        fit = {"max_epochs": config["defaults_max_epochs"]}  # None: scvae's default
    t0 = time.perf_counter()
    model.fit(**fit, **run)
    fit_time = time.perf_counter() - t0
    peak = peak_rss_gb()
    params = model.fit_params
    t0 = time.perf_counter()
    heldout_ll = model.marginal_log_likelihood(
        heldout, n_samples=config["iwae_samples"], seed=config["seed"]
    )
    score_time = time.perf_counter() - t0
    best = params.get("best_epoch")
    meta = {
        "method": f"scvae-{mode}",
        "tool": f"scvae {scvae.__version__} ZINBVAE",
        "fit_time_s": fit_time,
        "score_time_s": score_time,
        "epochs": params["n_epochs_trained"],
        "n_fit_cells": len(model.train_indices),
        "peak_rss_gb": peak,
        "notes": f"KL warm-up {params['n_steps_kl_warmup']} steps (z, l), latent library"
        + (f", early stopping (best epoch {best})" if best is not None else ""),
        "torch_threads": torch.get_num_threads(),
    }
    np.savez(
        work_dir / f"scvae-{mode}.npz",
        latent=model.get_latent(adata),
        heldout_ll=np.asarray(heldout_ll, dtype=np.float64),
        meta_json=json.dumps(meta),
    )


def pca_worker(work_dir: Path) -> None:
    """scanpy's standard pipeline on all cells: normalize_total, log1p, 50-component PCA.

    Parameters
    ----------
    work_dir
        Folder with ``counts.h5ad`` and ``config.json``; the result goes to ``pca.npz``.
    """
    import scanpy as sc

    config, adata, _, _ = _load_work(work_dir)
    lean = ad.AnnData(X=adata.X.copy())
    n_comps = min(50, min(lean.shape) - 1)
    t0 = time.perf_counter()
    sc.pp.normalize_total(lean, target_sum=1e4)
    sc.pp.log1p(lean)
    sc.pp.pca(lean, n_comps=n_comps, random_state=config["seed"])
    fit_time = time.perf_counter() - t0
    meta = {
        "method": "pca",
        "tool": f"scanpy {sc.__version__} PCA",
        "fit_time_s": fit_time,
        "epochs": None,
        "n_fit_cells": lean.n_obs,
        "peak_rss_gb": peak_rss_gb(),
        "notes": f"normalize_total(1e4), log1p, pca(n_comps={n_comps}) on all cells",
    }
    np.savez(work_dir / "pca.npz", latent=lean.obsm["X_pca"], meta_json=json.dumps(meta))


# ------------------------------------------------------------------------------ orchestration
def prepare(path: Path, args: argparse.Namespace):  # -> baselines.Dataset
    """Load, split and gene-select one data set; write the workers' inputs.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    args
        Options.

    Returns
    -------
    baselines.Dataset
        The data (lean AnnData of the kept cells and genes) and the split.
    """
    from baselines import load_dataset

    data = load_dataset(path, args.n_top_genes, args.heldout_fraction, args.seed)
    work = args.out_dir / "compare_work" / data.name
    work.mkdir(parents=True, exist_ok=True)
    data.adata.write_h5ad(work / "counts.h5ad")
    np.savez(work / "split.npz", train_idx=data.train_idx, heldout_idx=data.heldout_idx)
    config = {
        "batch_key": data.batch_key,
        "n_latent": 10,
        "n_hidden": 128,
        "n_layers": 1,
        "dropout_rate": 0.1,
        "max_epochs": args.max_epochs,
        "batch_size": 128,
        "lr": 1e-3,
        "iwae_samples": args.iwae_samples,
        "seed": args.seed,
        "threads": args.threads,
        "defaults_max_epochs": args.defaults_max_epochs,
    }
    (work / "config.json").write_text(json.dumps(config, indent=1))
    args.work = work
    return data


def run_method(method: str, args: argparse.Namespace) -> Result:
    """Run one method in its own process and read what it wrote.

    Parameters
    ----------
    method
        Key in :data:`METHODS`.
    args
        Options (``work`` is the data set's work folder).

    Returns
    -------
    Result
        Its embedding, held-out scores and measurements, or the error.
    """
    threads = str(args.threads)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "PYTHONWARNINGS": "ignore",
    }
    if method.startswith("scvi"):
        from heldout_vs_scvi import ensure_scvi_venv

        python = ensure_scvi_venv(args.scvi_venv)
        script = BENCH_DIR / "scvi_compare.py"
        mode = method.split("-", 1)[1]
        command = [str(python), str(script), "--work-dir", str(args.work), "--mode", mode]
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", method]
        command += ["--work-dir", str(args.work)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        print(f"  {method} FAILED:\n    " + "\n    ".join(tail), flush=True)
        return Result(method, error=tail[-1] if tail else f"exit code {done.returncode}")
    with np.load(args.work / f"{method}.npz") as out:
        result = Result(
            method,
            meta=json.loads(str(out["meta_json"])),
            latent=np.asarray(out["latent"], dtype=np.float64),
            heldout_ll=out["heldout_ll"] if "heldout_ll" in out else None,
        )
    print(
        f"  {method}: fit {result.meta['fit_time_s']:.1f} s, run "
        f"{time.perf_counter() - started:.0f} s in all",
        flush=True,
    )
    return result


def score(result: Result, data, args: argparse.Namespace) -> None:  # data: baselines.Dataset
    """Add ``scvae.tl.evaluate``'s table of the embedding of all cells to ``result``."""
    import scvae

    holder = ad.AnnData(obs=data.adata.obs[[LABEL_KEY, BATCH_KEY]].copy())
    holder.obsm["X_latent"] = result.latent
    result.scores = scvae.tl.evaluate(
        holder, use_rep="X_latent", label_key=LABEL_KEY, batch_key=data.batch_key, seed=args.seed
    )


def umap_figure(results: list[Result], data, path: Path, seed: int) -> None:
    """UMAPs of every embedding (columns) coloured by cell type and batch (rows), as PNG.

    Parameters
    ----------
    results
        The runs; failed ones are left out.
    data
        The data set (``baselines.Dataset``).
    path
        PNG file.
    seed
        Seed of the neighbour graph and the layout.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    shown = [r for r in results if r.latent is not None]
    if not shown:
        return
    fig, axes = plt.subplots(2, len(shown), figsize=(3.6 * len(shown), 7), squeeze=False)
    for j, result in enumerate(shown):
        holder = ad.AnnData(obs=data.adata.obs[[LABEL_KEY, BATCH_KEY]].copy())
        holder.obsm["X_latent"] = result.latent
        sc.pp.neighbors(holder, use_rep="X_latent", n_neighbors=15, random_state=seed)
        sc.tl.umap(holder, random_state=seed)
        for i, key in enumerate((LABEL_KEY, BATCH_KEY)):
            sc.pl.umap(
                holder,
                color=key,
                ax=axes[i, j],
                show=False,
                title=f"{TITLES[result.method]}: {key}",
                legend_loc="right margin" if j == len(shown) - 1 else None,
                frameon=False,
                size=8,
            )
    fig.suptitle(data.name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------ report
def _mean_se(values: np.ndarray | None) -> str:
    if values is None or len(values) == 0:
        return "n/a"
    values = np.asarray(values, dtype=np.float64)
    return f"{values.mean():.1f} ± {values.std(ddof=1) / np.sqrt(values.size):.1f}"


def _paired(a: Result, b: Result) -> str | None:
    if a.heldout_ll is None or b.heldout_ll is None:
        return None
    d = a.heldout_ll - b.heldout_ll
    se = d.std(ddof=1) / np.sqrt(d.size)
    return f"{d.mean():+.2f} ± {se:.2f} nats/cell (scvae higher on {np.mean(d > 0):.0%} of cells)"


def table(results: list[Result], k: int) -> str:
    """Markdown table of one data set: one column per method, one row per measurement.

    Parameters
    ----------
    results
        The runs.
    k
        Importance samples of the IWAE estimates.

    Returns
    -------
    str
        The table.
    """

    def cell(result: Result, row: str) -> str:
        if not result.meta:
            return "failed"
        meta = result.meta
        if row == "fit":
            return f"{meta['fit_time_s']:.1f}"
        if row == "epochs":
            return str(meta["epochs"]) if meta.get("epochs") else "n/a"
        if row == "cells/s":
            return f"{result.cells_per_s:,.0f}" if result.cells_per_s else "n/a"
        if row == "rss":
            return f"{meta['peak_rss_gb']:.2f}"
        if row == "ll":
            mark = " †" if meta.get("use_observed_lib_size") else ""
            return _mean_se(result.heldout_ll) + (mark if result.heldout_ll is not None else "")
        if result.scores is None:
            return "n/a"
        value = result.scores.set_index("metric")["value"].get(row, np.nan)
        return "n/a" if not np.isfinite(value) else f"{value:.3f}"

    header = "| | " + " | ".join(TITLES[r.method] for r in results) + " |"
    lines = [header, "|---|" + "---:|" * len(results)]
    rows = [
        ("fit wall time (s)", "fit"),
        ("epochs", "epochs"),
        ("cells/s (training cells x epochs / fit time)", "cells/s"),
        ("peak RSS of the fitting process (GB)", "rss"),
        (f"held-out log p(x) / cell (IWAE, K={k}; mean ± s.e.)", "ll"),
        *METRIC_ROWS,
    ]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(cell(r, key) for r in results) + " |")
    return "\n".join(lines)


def dataset_section(data, results: list[Result], args: argparse.Namespace) -> str:
    """Heading, data description, table, paired log p(x) differences, notes and figure."""
    from baselines import describe

    by_method = {r.method: r for r in results}
    parts = [f"## {data.name}", describe(data), table(results, args.iwae_samples)]
    diffs = []
    for mode in ("same", "defaults"):
        ours, theirs = by_method.get(f"scvae-{mode}"), by_method.get(f"scvi-{mode}")
        if ours and theirs and (line := _paired(ours, theirs)):
            caveat = " (not comparable: †)" if theirs.meta.get("use_observed_lib_size") else ""
            diffs.append(f"- held-out log p(x), scvae - scVI ({mode}): {line}{caveat}")
    if any(r.meta.get("use_observed_lib_size") for r in results):
        diffs.append(
            "- † scVI's default conditions on the observed library size: its value is "
            "log p(x | l = observed total), not log p(x), and is not comparable with the others."
        )
    notes = [
        f"- {TITLES[r.method]}: {r.meta.get('tool', '')}; {r.meta.get('notes', '')}"
        + (
            f"; {r.meta['n_fit_cells']} cells trained on; scoring {r.meta['score_time_s']:.1f} s"
            if "score_time_s" in r.meta
            else ""
        )
        for r in results
        if r.meta
    ]
    notes += [f"- {TITLES[r.method]}: failed: {r.error}" for r in results if r.error]
    parts.append("\n".join(diffs + notes))
    parts.append(f"![UMAPs of {data.name}](compare_{data.name}.png)")
    return "\n\n".join(parts)


def report(sections: list[str], results: list[Result], args, command: str, total_s: float) -> str:
    """The whole markdown file: setup, machine, versions, command, one section per data set."""
    from baselines import machine, versions

    scvi_versions = next(
        (r.meta["versions"] for r in results if "versions" in r.meta and not r.error), None
    )
    setup = [
        f"Cells split once per data set (seed {args.seed}) into "
        f"{1 - args.heldout_fraction:.0%} train / {args.heldout_fraction:.0%} held-out; the "
        f"{args.n_top_genes:,} most highly variable genes of the train cells (scanpy "
        '`flavor="seurat"`; files with fewer genes keep all); `batch_key="batch"` when a file '
        "has more than one batch.",
        "*same*: ZINB, gene dispersion, latent library, 10 latent dims, 1 x 128 hidden, dropout "
        f"0.1, {args.max_epochs} epochs, batch 128, Adam lr 1e-3, every train cell trained on "
        "(no validation split), no early stopping, KL warm-up over the first tenth of "
        "training for both. *defaults*: `ZINBVAE(adata, batch_key=...).fit()` and "
        "`SCVI(adata).train()` as shipped"
        + (f" (capped at {args.defaults_max_epochs} epochs: --quick)" if args.quick else "")
        + "; scVI's default conditions on the observed library size.",
        "scanpy PCA: `normalize_total(target_sum=1e4)`, `log1p`, `pca(n_comps=50)` on all cells; "
        "it has no likelihood of the counts (n/a).",
        f"Held-out log p(x): per-cell importance-weighted estimate with K = {args.iwae_samples} "
        "on the same held-out cells (nats, higher is better).",
        "Scores (`scvae.tl.evaluate`, native backend) on the embedding of all cells: Leiden "
        "NMI/ARI at the best of resolutions 0.2..2.0 (15-NN graph), GMM (full covariances, K = "
        "number of cell types) NMI/ARI, cell-type and batch silhouettes, cLISI/iLISI (90-NN), "
        "kBET per cell type (50-NN), graph connectivity; bio conservation and batch correction "
        "are the means of the first and second group (Leiden, silhouette, cLISI / batch "
        "silhouette, iLISI, kBET, graph connectivity), total = 0.6 bio + 0.4 batch as in scIB.",
        "Fit wall time and peak resident memory (`VmHWM` at the end of the fit: imports, data "
        f"and fit) of each method's own process, {args.threads} torch/BLAS thread(s), CPU "
        "only, on a machine shared with other jobs.",
    ]
    parts = [
        "# scvae vs scvi-tools vs scanpy",
        "\n".join(f"- {item}" for item in setup),
        f"Machine: {machine()}.",
        f"Versions: {versions()}"
        + (
            "; scVI side: " + ", ".join(f"{k} {v}" for k, v in scvi_versions.items())
            if scvi_versions
            else ""
        )
        + ".",
        f"Command (from the repository root; {total_s / 60:.1f} min in all):",
        f"```bash\n{command}\n```",
        *sections,
    ]
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run every selected method on every selected data set; write the tables and figures."""
    args = parse_args(argv)
    if args.worker:
        if args.worker == "pca":
            pca_worker(args.work_dir)
        else:
            scvae_worker(args.work_dir, args.worker.split("-", 1)[1])
        return
    sys.path.insert(0, str(BENCH_DIR))
    from threadpoolctl import threadpool_limits

    paths = sorted(args.data_dir.glob("*.h5ad"))
    if args.datasets:
        paths = [p for p in paths if p.stem in set(args.datasets)]
        missing = set(args.datasets) - {p.stem for p in paths}
        if missing:
            raise SystemExit(f"not in {args.data_dir}: {', '.join(sorted(missing))}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/compare.py", *sys.argv[1:]])
    start = time.perf_counter()
    sections, every = [], []
    for path in paths:
        data = prepare(path, args)
        print(f"{data.name}: {data.adata.n_obs} cells x {data.adata.n_vars} genes", flush=True)
        results = [run_method(m, args) for m in args.methods]
        with threadpool_limits(limits=args.threads):
            for result in results:
                if result.latent is None:
                    continue
                try:
                    score(result, data, args)
                except ValueError as err:  # e.g. NaN latents of a diverged fit
                    result.meta["notes"] += f"; scoring failed: {err}"
            umap_figure(results, data, args.out_dir / f"compare_{data.name}.png", args.seed)
        section = dataset_section(data, results, args)
        print("\n" + section + "\n", flush=True)
        sections.append(section)
        every += results
    text = report(sections, every, args, command, time.perf_counter() - start)
    (args.out_dir / "compare.md").write_text(text)
    print(f"written to {args.out_dir / 'compare.md'}")
    if not args.quick and not args.no_docs:
        write_docs(text, [p.stem for p in paths], args.out_dir)


def write_docs(text: str, names: list[str], out_dir: Path) -> None:
    """The report as a section of ``docs/benchmarks.md``, its figures in ``docs/figures/``."""
    import shutil

    figures = DOCS.parent / "figures"
    figures.mkdir(exist_ok=True)
    for name in names:
        shutil.copyfile(out_dir / f"compare_{name}.png", figures / f"compare_{name}.png")
    body = text.split("\n", 1)[1]  # without the report's own title
    body = body.replace("\n## ", "\n### ").replace("](compare_", "](figures/compare_")
    write_section(body.strip(), tool="compare.py", heading="## scvae vs scvi-tools vs scanpy")
    print(f"written to {DOCS}")


if __name__ == "__main__":
    main()
