"""Fit one model and run its differential-expression tasks, in its own process (de.py's worker).

``de.py`` writes a job (JSON) and runs it here: with ``--tool scvae`` in scvae's environment
(``ZINBVAE`` and ``model.differential_expression``), with ``--tool scvi`` inside
``benchmarks/.venv-scvi`` (scvi-tools' ``SCVI`` and its ``differential_expression``). Public API
of both tools only. Not meant to be run by hand::

    python benchmarks/de_worker.py --tool scvae --job JOB.json --out STEM

Job keys
--------
``h5ad``
    Counts in ``X``, the ``obs`` columns that the tasks group by, the batch column.
``batch_key``
    ``obs`` column of the batches, or null.
``max_epochs``, ``kl_warmup_epochs``, ``batch_size``, ``lr``, ``seed``, ``threads``
    The fit, the same for both tools: 10 latent dimensions, 1 x 128 hidden, dropout 0.1,
    ZINB, gene dispersion, latent library, every cell trained on, no early stopping; the KL
    warm-up lasts ``kl_warmup_epochs`` epochs (scvae counts it in optimizer steps: epochs x
    minibatches per epoch).
``tasks``
    A list of ``{"name", "groupby", "group1", "group2", "mode", "batch_correction",
    "n_samples", "repeats", "keep", "delta", "kind"}``: ``group1`` null is every group against
    the rest; ``delta`` absent is the tool's default, null has the tool estimate it; ``kind``
    ``"rank"`` runs ``scvae.tl.rank_genes_groups`` instead (scvae only);
    ``n_samples`` null is the tool's default (scvi-tools: ``n_samples_overall``); each task runs
    ``repeats`` times (timed with ``time.perf_counter``); with ``keep`` the last table is
    written.

Output
------
``STEM.json``: fit time, epochs, tool, versions, per task the wall times of its repeats;
``STEM.<task>.csv``: the kept tables, one row per gene (and comparison), gene in column
``gene``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from _common import load_average, read_job, versions, write_worker_output

SCVI_TOOL_VERSIONS = ("scvi-tools", "torch", "lightning", "anndata", "numpy", "pandas")
SCVAE_TOOL_VERSIONS = ("scvae", "torch", "lightning", "anndata", "numpy", "pandas")


def fit_scvae(job: dict[str, Any], adata):
    """scvae ``ZINBVAE`` with the job's settings; returns ``(model, facts)``."""
    import scvae

    model = scvae.ZINBVAE(
        adata,
        batch_key=job.get("batch_key"),
        n_latent=10,
        n_hidden=128,
        n_layers=1,
        dropout_rate=0.1,
        dispersion="gene",
        library="latent",
    )
    batch_size = int(job.get("batch_size", 128))
    steps = int(job["kl_warmup_epochs"]) * math.ceil(adata.n_obs / batch_size)
    t0 = time.perf_counter()
    model.fit(
        max_epochs=int(job["max_epochs"]),
        batch_size=batch_size,
        lr=float(job.get("lr", 1e-3)),
        train_size=1.0,
        early_stopping=False,
        n_steps_kl_warmup=steps,
        seed=int(job.get("seed", 0)),
        progress_bar=False,
        accelerator="cpu",
    )
    facts = {
        "tool": f"scvae {scvae.__version__} ZINBVAE",
        "fit_time_s": time.perf_counter() - t0,
        "epochs": len(model.history),
        "kl_warmup": f"{steps} steps ({job['kl_warmup_epochs']} epochs)",
    }
    return model, facts


def fit_scvi(job: dict[str, Any], adata):
    """scvi-tools ``SCVI`` with the job's settings; returns ``(model, facts)``."""
    import scvi

    scvi.settings.seed = int(job.get("seed", 0))
    scvi.model.SCVI.setup_anndata(adata, batch_key=job.get("batch_key"))
    model = scvi.model.SCVI(
        adata,
        n_hidden=128,
        n_latent=10,
        n_layers=1,
        dropout_rate=0.1,
        dispersion="gene",
        gene_likelihood="zinb",
        use_observed_lib_size=False,
        latent_distribution="normal",
    )
    warmup = int(job["kl_warmup_epochs"])
    t0 = time.perf_counter()
    model.train(
        max_epochs=int(job["max_epochs"]),
        accelerator="cpu",
        devices=1,
        train_size=1.0,
        validation_size=None,
        batch_size=int(job.get("batch_size", 128)),
        early_stopping=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plan_kwargs={
            "lr": float(job.get("lr", 1e-3)),
            "n_epochs_kl_warmup": warmup or None,
            "n_steps_kl_warmup": None,
        },
    )
    facts = {
        "tool": f"scvi-tools {scvi.__version__} SCVI",
        "fit_time_s": time.perf_counter() - t0,
        "epochs": len(model.history["elbo_train"]),
        "kl_warmup": f"{warmup} epochs",
    }
    return model, facts


def run_task(tool: str, model, adata, task: dict[str, Any]):
    """One call of the tool's ``differential_expression``; returns the table."""
    kwargs: dict[str, Any] = {
        "groupby": task["groupby"],
        "group1": task.get("group1"),
        "group2": task.get("group2"),
        "mode": task.get("mode", "change"),
        "batch_correction": bool(task.get("batch_correction", True)),
    }
    if "delta" in task:  # null: the tool estimates it from the data
        kwargs["delta"] = task["delta"]
    if task.get("kind") == "rank":  # scvae.tl.rank_genes_groups: its ordering of every group
        return rank_table(model, adata, task)
    n_samples = task.get("n_samples")
    if tool == "scvi":
        if kwargs["group1"] is not None:
            kwargs["group1"] = [kwargs["group1"]]
        if n_samples is not None:
            kwargs["n_samples_overall"] = int(n_samples)
        return model.differential_expression(silent=True, **kwargs)
    if n_samples is not None:
        kwargs["n_samples"] = int(n_samples)
    return model.differential_expression(seed=int(task.get("seed", 0)), **kwargs)


def rank_table(model, adata, task: dict[str, Any]):
    """``scvae.tl.rank_genes_groups``'s order as a table: ``group``, ``rank`` (1 = first), gene."""
    import numpy as np
    import pandas as pd

    import scvae

    adata = adata.copy()
    scvae.tl.rank_genes_groups(adata, model, task["groupby"])
    names = adata.uns["rank_genes_groups"]["names"]
    frames = []
    for group in names.dtype.names:
        genes = np.asarray(names[group]).astype(str)
        frames.append(
            pd.DataFrame({"group": group, "rank": np.arange(1, genes.size + 1)}, index=genes)
        )
    return pd.concat(frames)


def main(argv: list[str] | None = None) -> None:
    """Fit, run every task, write the measurements and the kept tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tool", choices=["scvae", "scvi"], required=True)
    p.add_argument("--job", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    job = read_job(args.job)

    import anndata as ad
    import numpy as np
    import torch

    torch.set_num_threads(int(job.get("threads", 1)))
    adata = ad.read_h5ad(job["h5ad"])
    load_before = load_average()
    model, meta = (fit_scvi if args.tool == "scvi" else fit_scvae)(job, adata)
    meta["load_after_fit"] = load_average()
    meta["load_before"] = load_before
    meta["torch_threads"] = torch.get_num_threads()
    meta["tasks"] = {}
    for task in job["tasks"]:
        times = []
        table = None
        for _ in range(int(task.get("repeats", 1))):
            load = load_average()
            t0 = time.perf_counter()
            table = run_task(args.tool, model, adata, task)
            times.append(time.perf_counter() - t0)
        meta["tasks"][task["name"]] = {"times_s": times, "load_before": load}
        if task.get("keep", True) and table is not None:
            table = table.copy()
            table.insert(0, "gene", np.asarray(table.index).astype(str))
            table.to_csv(f"{args.out}.{task['name']}.csv", index=False)
        print(f"{args.tool} {task['name']}: {np.round(times, 2).tolist()} s", flush=True)
    meta["versions"] = versions(SCVI_TOOL_VERSIONS if args.tool == "scvi" else SCVAE_TOOL_VERSIONS)
    write_worker_output(args.out, meta, {})


if __name__ == "__main__":
    main()
