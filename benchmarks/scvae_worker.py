"""scvae side of every benchmark against scvi-tools: one fit per process, public API only.

The drivers (``compare.py``, ``speed.py``, ``defaults.py``) do not fit in their own process:
they write a *job* (JSON) and run it with ``_common.run_worker``, here for scvae (and scanpy's
PCA) and in ``scvi_worker.py`` for scvi-tools, which reads the same keys. A fresh process per
fit keeps each tool's peak memory its own. Not meant to be run by hand::

    python benchmarks/scvae_worker.py --job JOB.json --out STEM

Job keys (missing keys take the value in brackets)
--------------------------------------------------
``h5ad``
    Counts in ``X`` (and the batch column).
``split`` [null]
    npz with ``train_idx`` and ``heldout_idx``; null: every cell trains, none is held out.
``batch_key`` [null]
    ``obs`` column of the batches.
``model`` ["ZINBVAE"]
    ``"ZINBVAE"``, or ``"pca"``: scanpy's ``normalize_total(1e4)``, ``log1p``,
    ``pca(n_comps=50)`` on every cell (this worker only).
``settings`` ["same"]
    ``"same"``: ``n_latent``, ``n_hidden``, ``n_layers``, ``dropout_rate`` [10, 128, 1, 0.1],
    gene dispersion, latent library, ``max_epochs`` [100], ``batch_size`` [128], ``lr`` [1e-3],
    every train cell trained on (no validation split), no early stopping. ``"defaults"``:
    ``ZINBVAE(train, batch_key=...)`` and ``fit()`` as shipped, with ``defaults_max_epochs``
    [null] as a cap and ``overrides`` [{}] as extra ``fit`` keywords.
``kl_warmup`` [null]
    null: the tool's default warm-up; an integer: its length in the tool's own unit (scvae:
    optimizer steps, ``n_steps_kl_warmup``; scvi-tools: epochs, ``n_epochs_kl_warmup``).
``clock`` [null]
    ``"wall"`` or ``"cpu"``: time every training epoch (validation excluded) with
    ``_common.epoch_clock``.
``elbo_clock`` [null]
    ``{"every_s": E, "budget_s": B}``: score the fit's validation cells every ``E`` training
    seconds (the ``clock``'s kind, CPU by default) and stop the fit after ``B``
    (``_common.elbo_clock``); the trace goes to ``elbo_trace`` (and, with ``"trace_path"``,
    to that file after every scoring). Needs a validation split.
``iwae_samples`` [0], ``heldout_elbo`` [false], ``latent`` [null]
    Score the held-out cells by the IWAE estimate of log p(x) with K samples (0: not) and by
    the ELBO; return the posterior means of ``"all"`` cells (file order) or of the
    ``"heldout"`` cells.
``accelerator`` ["cpu"], ``threads`` [1], ``seed`` [0]
    Device, torch threads, seed of the fit and of the scoring.
``throughput`` [null]
    Instead of one fit: ``{"batch_sizes": [...], "warmup_steps": W, "timed_s": T,
    "max_timed_steps": S}`` fits the ``"same"`` model once per batch size on every cell and
    times the steps after ``W`` warm-up steps, for ``T`` seconds or ``S`` steps, whichever
    comes first (``_common.step_clock``), then stops the fit. Each batch size's row (cells/s,
    timed steps and cells, peak GPU memory, fit wall time, or the error) is written to
    ``STEM.json`` as soon as it is measured, so a worker killed at a time limit leaves the
    rows it finished. ``scvi_worker.py`` reads the same key.

Output
------
``STEM.json``: tool, versions, fit wall time, epochs, cells, peak resident memory at the end of
the fit (``VmHWM``: imports, data and fit), on a GPU the peak GPU memory of the fit
(``peak_gpu_gb``, ``torch.cuda.max_memory_allocated``) and the GPU's name, epoch times, the
per-epoch validation ELBO (from ``model.history``) when there is a validation split, notes.
``STEM.npz``: ``heldout_ll``, ``heldout_elbo``, ``latent``, and with a validation split
``train_indices`` and ``validation_indices`` (so that scvi-tools can be given the same cells).
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    cuda_device_name,
    cuda_peak_gb,
    elbo_clock,
    epoch_clock,
    fit_summary,
    load_average,
    peak_rss_gb,
    read_job,
    read_split,
    step_clock,
    versions,
    write_worker_output,
)


def fit_zinbvae(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit scvae's ZINBVAE on the job's train cells and score its held-out cells.

    Parameters
    ----------
    job
        See the module docstring.

    Returns
    -------
    tuple of dict
        ``(meta, arrays)`` as described in the module docstring.
    """
    import anndata as ad
    import torch

    import scvae

    torch.set_num_threads(int(job.get("threads", 1)))
    seed = int(job.get("seed", 0))
    adata = ad.read_h5ad(job["h5ad"])
    train_idx, heldout_idx = read_split(job, adata.n_obs)
    train = adata if not job.get("split") else adata[train_idx].copy()  # no copy if all train
    heldout = adata[heldout_idx].copy() if heldout_idx.size else None
    batch_key = job.get("batch_key")
    run: dict[str, Any] = {
        "progress_bar": False,
        "seed": seed,
        "accelerator": job.get("accelerator", "cpu"),
    }
    clock = None
    if job.get("clock"):
        clock = epoch_clock(time.thread_time if job["clock"] == "cpu" else time.perf_counter)
        run["callbacks"] = [clock]
    tracer = None
    if job.get("elbo_clock"):
        spec = job["elbo_clock"]
        timer = time.perf_counter if job.get("clock") == "wall" else time.thread_time
        tracer = elbo_clock(
            float(spec["every_s"]), float(spec["budget_s"]), timer, spec.get("trace_path")
        )
        run["callbacks"] = [*run.get("callbacks", []), tracer]
    if job.get("kl_warmup") is not None:
        run["n_steps_kl_warmup"] = int(job["kl_warmup"])
    if job.get("settings", "same") == "same":
        model = scvae.ZINBVAE(
            train,
            batch_key=batch_key,
            n_latent=job.get("n_latent", 10),
            n_hidden=job.get("n_hidden", 128),
            n_layers=job.get("n_layers", 1),
            dropout_rate=job.get("dropout_rate", 0.1),
            dispersion="gene",
            library="latent",
        )
        fit = {
            "max_epochs": job.get("max_epochs", 100),
            "batch_size": job.get("batch_size", 128),
            "lr": job.get("lr", 1e-3),
            "train_size": 1.0,
            "early_stopping": False,
        }
    else:
        model = scvae.ZINBVAE(train, batch_key=batch_key)
        fit = {"max_epochs": job.get("defaults_max_epochs"), **job.get("overrides", {})}
    load_before = load_average()
    cuda_peak_gb(reset=True)
    t0 = time.perf_counter()
    model.fit(**fit, **run)
    fit_time = time.perf_counter() - t0
    peak = peak_rss_gb()
    peak_gpu = cuda_peak_gb()
    load_after = load_average()
    facts = fit_summary(model)
    history = model.history
    arrays: dict[str, Any] = {}
    validation_elbo = None
    if "validation_elbo" in history:
        validation_elbo = history["validation_elbo"].to_numpy(dtype=np.float64)
        arrays["train_indices"] = getattr(model, "train_indices", None)
        arrays["validation_indices"] = getattr(model, "validation_indices", None)
    t0 = time.perf_counter()
    if heldout is not None and job.get("heldout_elbo"):
        arrays["heldout_elbo"] = np.asarray(model.elbo(heldout, seed=seed), dtype=np.float64)
    if heldout is not None and job.get("iwae_samples"):
        arrays["heldout_ll"] = np.asarray(
            model.marginal_log_likelihood(heldout, n_samples=int(job["iwae_samples"]), seed=seed),
            dtype=np.float64,
        )
    score_time = time.perf_counter() - t0
    if job.get("latent") == "all":
        arrays["latent"] = np.asarray(model.get_latent(adata), dtype=np.float32)
    elif job.get("latent") == "heldout" and heldout is not None:
        arrays["latent"] = np.asarray(model.get_latent(heldout), dtype=np.float32)
    n_fit = facts["n_fit_cells"] or train.n_obs
    warmup = facts["n_steps_kl_warmup"]
    best = facts["best_epoch"]
    notes = (f"KL warm-up {warmup} steps" if warmup is not None else "KL warm-up") + (
        ", latent library" + (f", early stopping (best epoch {best})" if best is not None else "")
    )
    meta = {
        "tool": f"scvae {scvae.__version__} ZINBVAE",
        "fit_time_s": fit_time,
        "epochs": facts["epochs"],
        "best_epoch": best,
        "n_train": int(train.n_obs),
        "n_fit_cells": int(n_fit),
        "peak_rss_gb": peak,
        "torch_threads": torch.get_num_threads(),
        "kl_warmup": f"{warmup} steps" if warmup is not None else None,
        "use_observed_lib_size": False,
        "notes": notes,
        "score_time_s": score_time,
        "validation_elbo": validation_elbo,
        "load_before_after": [load_before, load_after],
    }
    if peak_gpu is not None:
        meta["peak_gpu_gb"] = peak_gpu
        meta["gpu"] = cuda_device_name()
    if clock is not None:
        meta["epoch_times"] = clock.epoch_times
        meta["validation_times"] = clock.validation_times
        # every minibatch is full except perhaps the last: at most the training cells
        meta["cells_per_epoch"] = min(n_fit, clock.n_batches * fit.get("batch_size", 128))
    if tracer is not None:
        meta["elbo_trace"] = tracer.trace
    return meta, arrays


def fit_epochs(n_cells: int, batch_size: int, steps: int) -> int:
    """Epochs enough for ``steps`` optimizer steps over ``n_cells`` cells (one spare)."""
    return math.ceil(steps / max(1, math.ceil(n_cells / batch_size))) + 1


def throughput_zinbvae(job: dict[str, Any], out: Path) -> dict[str, Any]:
    """Cells per second of the ``"same"`` ZINBVAE at each of the job's batch sizes.

    The counts are read and validated once; each batch size is a fresh fit of the same model
    (``fit`` builds a new module) that ``_common.step_clock`` times and stops. The rows are
    written to ``out`` after each batch size.

    Parameters
    ----------
    job
        See the module docstring (``throughput``).
    out
        The output stem.

    Returns
    -------
    dict
        ``tool``, ``rows`` (one per batch size: ``batch_size``, ``steps``, ``cells``,
        ``seconds``, ``cells_per_s``, ``peak_gpu_gb``, ``fit_wall_s``, or ``error``),
        ``n_cells``, ``n_genes``, ``nnz``, ``read_s``, ``gpu``, ``peak_rss_gb``, ``versions``.
    """
    import anndata as ad
    import torch

    import scvae

    spec = job["throughput"]
    torch.set_num_threads(int(job.get("threads", 1)))
    t0 = time.perf_counter()
    adata = ad.read_h5ad(job["h5ad"])
    model = scvae.ZINBVAE(
        adata,
        batch_key=job.get("batch_key"),
        n_latent=job.get("n_latent", 10),
        n_hidden=job.get("n_hidden", 128),
        n_layers=job.get("n_layers", 1),
        dropout_rate=job.get("dropout_rate", 0.1),
        dispersion="gene",
        library="latent",
    )
    meta: dict[str, Any] = {
        "tool": f"scvae {scvae.__version__} ZINBVAE",
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "nnz": int(adata.X.nnz),
        "read_s": time.perf_counter() - t0,
        "gpu": cuda_device_name() if job.get("accelerator", "cpu") != "cpu" else None,
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        "rows": [],
    }
    del adata
    warmup, max_steps = int(spec["warmup_steps"]), int(spec["max_timed_steps"])
    for batch_size in spec["batch_sizes"]:
        row: dict[str, Any] = {"batch_size": int(batch_size)}
        clock = step_clock(warmup, float(spec["timed_s"]), max_steps)
        cuda_peak_gb(reset=True)
        t0 = time.perf_counter()
        try:
            model.fit(
                max_epochs=fit_epochs(meta["n_cells"], batch_size, warmup + max_steps + 1),
                batch_size=int(batch_size),
                lr=job.get("lr", 1e-3),
                train_size=1.0,
                early_stopping=False,
                accelerator=job.get("accelerator", "cpu"),
                seed=int(job.get("seed", 0)),
                progress_bar=False,
                callbacks=[clock],
            )
        except (RuntimeError, MemoryError) as err:  # torch.cuda.OutOfMemoryError included
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        row.update(
            steps=clock.steps,
            cells=clock.cells,
            seconds=clock.seconds,
            cells_per_s=clock.cells_per_s,
            peak_gpu_gb=cuda_peak_gb(),
            fit_wall_s=time.perf_counter() - t0,
        )
        meta["rows"].append(row)
        meta["peak_rss_gb"] = peak_rss_gb()
        model.module = None  # the next fit builds its own; free this one's GPU memory first
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        write_worker_output(out, meta, {})
    return meta


def fit_pca(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """scanpy's standard pipeline on every cell: normalize_total, log1p, 50-component PCA.

    Parameters
    ----------
    job
        See the module docstring (``h5ad``, ``seed``).

    Returns
    -------
    tuple of dict
        ``(meta, arrays)``; ``arrays["latent"]`` holds the PCA coordinates of all cells.
    """
    import anndata as ad
    import scanpy as sc

    adata = ad.read_h5ad(job["h5ad"])
    lean = ad.AnnData(X=adata.X.copy())
    n_comps = min(50, min(lean.shape) - 1)
    t0 = time.perf_counter()
    sc.pp.normalize_total(lean, target_sum=1e4)
    sc.pp.log1p(lean)
    sc.pp.pca(lean, n_comps=n_comps, random_state=int(job.get("seed", 0)))
    fit_time = time.perf_counter() - t0
    meta = {
        "tool": f"scanpy {sc.__version__} PCA",
        "fit_time_s": fit_time,
        "epochs": None,
        "n_fit_cells": int(lean.n_obs),
        "peak_rss_gb": peak_rss_gb(),
        "notes": f"normalize_total(1e4), log1p, pca(n_comps={n_comps}) on all cells",
    }
    return meta, {"latent": np.asarray(lean.obsm["X_pca"], dtype=np.float32)}


def main(argv: list[str] | None = None) -> None:
    """Run the job and write its output files."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--job", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    job = read_job(args.job)
    if job.get("throughput"):
        throughput_zinbvae(job, args.out)
        return
    meta, arrays = fit_pca(job) if job.get("model") == "pca" else fit_zinbvae(job)
    meta["versions"] = versions()
    write_worker_output(args.out, meta, arrays)


if __name__ == "__main__":
    main()
