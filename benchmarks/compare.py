"""Held-out log p(x) and embeddings: scvae's ZINBVAE against scvi-tools' SCVI and scanpy's PCA.

What it measures
----------------
For each ``*.h5ad`` file in ``--data-dir`` (raw counts in ``X``, ``obs["cell_type"]``,
``obs["batch"]``): a seeded 90 % / 10 % split into train and held-out cells, the
``--n-top-genes`` most highly variable genes of the train cells (scanpy ``flavor="seurat"``; 0
keeps all genes, and so does a file with fewer), ``batch_key="batch"`` when the file has more
than one batch. Then up to five methods, each fitted on the train cells in its own process
(``scvae_worker.py``, ``scvi_worker.py`` in ``benchmarks/.venv-scvi``):

* ``scvae-same`` and ``scvi-same``: the same model and schedule: ZINB, gene dispersion, latent
  library with the empirical per-batch prior, 10 latent dims, 1 x 128 hidden, dropout 0.1,
  ``--max-epochs`` epochs, batch size 128, Adam lr 1e-3, every train cell trained on (no
  validation split), no early stopping. KL warm-up: scvae's default, the first tenth of the
  optimizer steps (on KL(z) only, as scVI, since 75d0d28; on KL(z) and KL(l) before, which the
  records of ``docs/benchmarks.md`` measured); for scVI (KL(z)) over the first tenth of the
  epochs (``--scvi-kl-warmup matched``) or scvi-tools' own default of 400 epochs
  (``scvi-default``);
* ``scvae-defaults``: ``ZINBVAE(train, batch_key=...)`` and ``model.fit()``;
* ``scvi-defaults``: ``SCVI(train)`` after ``setup_anndata(batch_key=...)`` and ``model.train()``
  (it conditions on the observed library size, so its log p(x) is log p(x | l));
* ``pca``: scanpy's ``normalize_total(1e4)``, ``log1p``, ``pca(n_comps=50)`` on all cells.

Each worker reports the fit wall time, cells/s (cells trained on x epochs / fit time), its
peak resident memory at the end of the fit, the posterior means of all cells, and per
held-out cell the ELBO and the IWAE estimate of log p(x) with ``--iwae-samples`` importance
samples. ``scvae.tl.evaluate`` (scIB's metrics, Leiden and GMM clusters) scores every
embedding of all cells, and UMAPs go to ``<out-dir>/compare_<dataset>.png`` (``--no-scores``
skips both). The measurements go to ``<out-dir>/compare.json``; ``render.py`` makes the docs
tables from it. Nothing is asserted.

Run from the repository root, in the environment where scvae is installed::

    python benchmarks/compare.py                        # every data set, 100 epochs, K = 100
    python benchmarks/compare.py --datasets pbmc3k_raw_annotated --methods scvae-same \\
        --no-scores                                     # the held-out log p(x) of scvae only
    python benchmarks/compare.py --datasets pbmc3k_raw_annotated --n-top-genes 0 \\
        --methods scvae-same scvi-same --scvi-kl-warmup scvi-default   # all genes
    python benchmarks/compare.py --quick --datasets pbmc_3chemistries_small  # smoke test

``--quick`` trains 2 epochs (the "defaults" runs too), uses K = 5 and 200 genes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    DATA_DIR,
    LABEL_KEY,
    RESULTS_DIR,
    SCVI_VENV,
    Dataset,
    WorkerError,
    dataset_paths,
    load_dataset,
    mean_se,
    paired_difference,
    run_worker,
)

METHODS = ("scvae-same", "scvi-same", "scvae-defaults", "scvi-defaults", "pca")
TITLES = {
    "scvae-same": "scvae (same)",
    "scvi-same": "scVI (same)",
    "scvae-defaults": "scvae (defaults)",
    "scvi-defaults": "scVI (defaults)",
    "pca": "scanpy PCA",
}
ARCHITECTURE = {"n_latent": 10, "n_hidden": 128, "n_layers": 1, "dropout_rate": 0.1}


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
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--datasets", nargs="+", default=None, help="file stems (default: all)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--max-epochs", type=int, default=100, help="epochs of the 'same' runs")
    p.add_argument("--iwae-samples", type=int, default=100, help="importance samples K")
    p.add_argument("--n-top-genes", type=int, default=2000, help="0: all genes")
    p.add_argument("--heldout-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS threads of every fit")
    p.add_argument(
        "--scvi-kl-warmup",
        choices=["matched", "scvi-default"],
        default="matched",
        help="scVI (same)'s KL warm-up: a tenth of the epochs, or scvi-tools' 400 epochs",
    )
    p.add_argument("--no-scores", action="store_true", help="skip scIB scores and UMAPs")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    p.add_argument("--scvi-venv", type=Path, default=SCVI_VENV)
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default="compare", help="result file <out-dir>/<name>.json")
    args = p.parse_args(argv)
    args.defaults_max_epochs = None
    if args.quick:
        args.max_epochs, args.iwae_samples, args.n_top_genes = 2, 5, 200
        args.defaults_max_epochs = 2
    return args


def job_for(method: str, work: Path, data: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """The worker job of one method on one data set (keys: see ``scvae_worker.py``)."""
    job: dict[str, Any] = {
        "h5ad": str(work / "counts.h5ad"),
        "split": str(work / "split.npz"),
        "batch_key": data.batch_key,
        "threads": args.threads,
        "seed": args.seed,
        "iwae_samples": args.iwae_samples,
        "heldout_elbo": True,
        "latent": "all",
    }
    if method == "pca":
        return {**job, "model": "pca", "iwae_samples": 0, "heldout_elbo": False}
    if method.endswith("-same"):
        job.update(settings="same", max_epochs=args.max_epochs, batch_size=128, lr=1e-3)
        job.update(ARCHITECTURE)
        if method == "scvi-same":
            matched = max(1, args.max_epochs // 10)
            job["kl_warmup"] = matched if args.scvi_kl_warmup == "matched" else None
            job["check_iwae"] = True
    else:
        job.update(settings="defaults", defaults_max_epochs=args.defaults_max_epochs)
    return job


def scores_of(latent: np.ndarray, data: Dataset, seed: int) -> dict[str, float]:
    """``scvae.tl.evaluate``'s scores of an embedding of all cells, by metric name."""
    import anndata as ad

    import scvae

    holder = ad.AnnData(obs=data.adata.obs[[LABEL_KEY, "batch"]].copy())
    holder.obsm["X_latent"] = latent
    table = scvae.tl.evaluate(
        holder, use_rep="X_latent", label_key=LABEL_KEY, batch_key=data.batch_key, seed=seed
    )
    return {str(k): float(v) for k, v in table.set_index("metric")["value"].items()}


def umap_figure(latents: dict[str, np.ndarray], data: Dataset, path: Path, seed: int) -> None:
    """UMAPs of every embedding (columns) coloured by cell type and batch (rows), as PNG.

    Parameters
    ----------
    latents
        Method -> embedding of all cells.
    data
        The data set.
    path
        PNG file.
    seed
        Seed of the neighbour graph and the layout.
    """
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    if not latents:
        return
    fig, axes = plt.subplots(2, len(latents), figsize=(3.6 * len(latents), 7), squeeze=False)
    for j, (method, latent) in enumerate(latents.items()):
        holder = ad.AnnData(obs=data.adata.obs[[LABEL_KEY, "batch"]].copy())
        holder.obsm["X_latent"] = latent
        sc.pp.neighbors(holder, use_rep="X_latent", n_neighbors=15, random_state=seed)
        sc.tl.umap(holder, random_state=seed)
        for i, key in enumerate((LABEL_KEY, "batch")):
            sc.pl.umap(
                holder,
                color=key,
                ax=axes[i, j],
                show=False,
                title=f"{TITLES[method]}: {key}",
                legend_loc="right margin" if j == len(latents) - 1 else None,
                frameon=False,
                size=8,
            )
    fig.suptitle(data.name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_dataset(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every selected method on one data set; the data set's part of the result file.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    args
        Options.

    Returns
    -------
    dict
        ``summary`` (cells, genes, split), ``methods`` (per method: the worker's measurements,
        held-out log p(x) and ELBO as mean / s.e., scores, or the error), ``paired`` (scvae -
        scVI per held-out cell, per setting) and the figure's file name.
    """
    from threadpoolctl import threadpool_limits

    data = load_dataset(path, args.n_top_genes or None, args.heldout_fraction, args.seed)
    work = args.out_dir / "compare_work" / data.name
    work.mkdir(parents=True, exist_ok=True)
    data.adata.write_h5ad(work / "counts.h5ad")
    np.savez(work / "split.npz", train_idx=data.train_idx, heldout_idx=data.heldout_idx)
    print(f"{data.name}: {data.adata.n_obs} cells x {data.adata.n_vars} genes", flush=True)
    methods: dict[str, dict[str, Any]] = {}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for method in args.methods:
        tool = "scvi" if method.startswith("scvi") else "scvae"
        started = time.perf_counter()
        try:
            meta, out = run_worker(
                tool, job_for(method, work, data, args), work / method, scvi_venv=args.scvi_venv
            )
        except WorkerError as err:
            print(f"  {method} FAILED: {err}", flush=True)
            methods[method] = {"error": str(err).splitlines()[-1]}
            continue
        arrays[method] = out
        for bulky in ("library_log_means", "library_log_vars"):
            meta.pop(bulky, None)
        epochs = meta.get("epochs")
        methods[method] = {
            "meta": meta,
            "cells_per_s": meta["n_fit_cells"] * epochs / meta["fit_time_s"] if epochs else None,
            "heldout_ll": mean_se(out.get("heldout_ll")),
            "heldout_elbo": mean_se(out.get("heldout_elbo")),
        }
        line = f"  {method}: fit {meta['fit_time_s']:.1f} s"
        if methods[method]["heldout_ll"]:
            line += f", held-out log p(x) {methods[method]['heldout_ll']['mean']:.2f}"
        print(f"{line} ({time.perf_counter() - started:.0f} s in all)", flush=True)
    paired = {}
    for mode in ("same", "defaults"):
        ours, theirs = arrays.get(f"scvae-{mode}", {}), arrays.get(f"scvi-{mode}", {})
        if "heldout_ll" in ours and "heldout_ll" in theirs:
            paired[mode] = {
                "heldout_ll": paired_difference(ours["heldout_ll"], theirs["heldout_ll"])
            }
            if "heldout_elbo" in ours and "heldout_elbo" in theirs:
                d = paired_difference(ours["heldout_elbo"], theirs["heldout_elbo"])
                paired[mode]["heldout_elbo"] = d
    figure = None
    if not args.no_scores:
        latents = {m: np.asarray(a["latent"], np.float64) for m, a in arrays.items()}
        with threadpool_limits(limits=args.threads):
            for method, latent in latents.items():
                try:
                    methods[method]["scores"] = scores_of(latent, data, args.seed)
                except ValueError as err:  # e.g. NaN latents of a diverged fit
                    methods[method]["meta"]["notes"] += f"; scoring failed: {err}"
            figure = f"compare_{data.name}.png"
            umap_figure(latents, data, args.out_dir / figure, args.seed)
    return {"summary": data.summary(), "methods": methods, "paired": paired, "figure": figure}


def main(argv: list[str] | None = None) -> None:
    """Run every selected method on every selected data set; write the result file."""
    from _common import write_result

    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    datasets = [run_dataset(path, args) for path in dataset_paths(args.data_dir, args.datasets)]
    settings = {
        k: v
        for k, v in vars(args).items()
        if k not in ("data_dir", "scvi_venv", "out_dir", "datasets", "name")
    }
    payload = {
        "settings": {**settings, "matched_kl_warmup_epochs": max(1, args.max_epochs // 10)},
        "total_s": time.perf_counter() - start,
        "datasets": datasets,
    }
    write_result(args.name, payload, script="compare", out_dir=args.out_dir, argv=argv)


if __name__ == "__main__":
    main()
