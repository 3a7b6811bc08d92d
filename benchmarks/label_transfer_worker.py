"""Fit one tool's label-transfer models on one split, in its own process (label_transfer.py's).

``label_transfer.py`` writes a split (``.h5ad``) and a job (JSON) and runs this script: with
``--tool scvae`` in scvae's environment (the committed scvae on ``PYTHONPATH``), with ``--tool
scvi`` inside ``benchmarks/.venv-scvi`` (scvi-tools 1.4.2). Public API of both tools only. Not
meant to be run by hand::

    python benchmarks/label_transfer_worker.py --tool scvae --job JOB.json --out STEM

The split's ``obs``: ``labels`` (the reference cells' cell type, ``"Unknown"`` for the query
cells and for the reference cells whose label is hidden), ``batch``, ``is_query`` (bool).

Job keys
--------
``h5ad``, ``batch_key``, ``seed``, ``threads``
    The split, the batch column, the seed of every fit, torch's thread count.
``max_epochs``
    Epochs of the VAEs: scvae's ``SSVAE`` (joint or reference) and scvi-tools' ``SCVI``.
``scanvi_epochs``, ``n_samples_per_label``, ``scanvi_batch_size``
    scvi-tools' semi-supervised stage (``SCANVI.from_scvi_model(...).train``); its
    ``batch_size`` only when ``scanvi_batch_size`` is set (else the default, 128).
``query_epochs``
    Epochs of the reference mapping: scvae ``map_query(max_epochs=...)``, scvi-tools
    ``SCANVI.load_query_data(...).train(max_epochs=..., plan_kwargs={"weight_decay": 0.0})``.
``tasks``
    ``"joint"`` (reference and query trained together, query unlabelled), ``"reference"``
    (trained on the reference, the query mapped), ``"large"`` (scvae only: the reference
    model maps ``n_large`` query cells resampled with replacement, default options, timed).
``n_large``
    Cells of the ``large`` query.

Output
------
``STEM.json``: per task the seconds (``fit_s``: training; ``map_s``: mapping and prediction
of the query; ``predict_s``: prediction alone), epochs, label order of the probabilities, the
error if the task crashed; ``STEM.npz``: ``<task>_proba`` (query cells x labels),
``<task>_latent_ref`` and ``<task>_latent_query`` (scvae).
"""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from _common import load_average, read_job, resample_cells, versions, write_worker_output

UNKNOWN = "Unknown"
SCVI_TOOL_VERSIONS = ("scvi-tools", "torch", "lightning", "anndata", "numpy")
SCVAE_TOOL_VERSIONS = ("scvae", "torch", "lightning", "anndata", "numpy")


def split(adata):
    """``(reference, query)`` copies; the query's ``labels`` all ``"Unknown"``."""
    is_query = adata.obs["is_query"].to_numpy().astype(bool)
    return adata[~is_query].copy(), adata[is_query].copy(), is_query


def proba_array(frame, order: list[str]) -> np.ndarray:
    """The probabilities of a ``predict(soft=True)`` frame as (cells, labels) in ``order``."""
    return frame[order].to_numpy(dtype=np.float64)


# -------------------------------------------------------------------------------- scvae
def scvae_model(job, adata):
    import scvae

    return scvae.SSVAE(
        adata,
        labels_key="labels",
        unlabeled_category=UNKNOWN,
        batch_key=job["batch_key"],
    )


def scvae_fit(job, model) -> float:
    t0 = time.perf_counter()
    model.fit(
        max_epochs=int(job["max_epochs"]),
        seed=int(job["seed"]),
        progress_bar=False,
        accelerator="cpu",
    )
    return time.perf_counter() - t0


def scvae_joint(job, adata, arrays) -> dict[str, Any]:
    """SSVAE on reference + query (query unlabelled); the query's calibrated q(y | x)."""
    _, _, is_query = split(adata)
    model = scvae_model(job, adata)
    fit_s = scvae_fit(job, model)
    t0 = time.perf_counter()
    frame = model.predict(soft=True)
    predict_s = time.perf_counter() - t0
    order = [str(c) for c in frame.columns]
    arrays["joint_proba"] = proba_array(frame, order)[is_query]
    latent = model.get_latent()
    arrays["joint_latent_ref"] = latent[~is_query]
    arrays["joint_latent_query"] = latent[is_query]
    return {
        "fit_s": fit_s,
        "map_s": predict_s,
        "predict_s": predict_s,
        "epochs": len(model.history),
        "labels": order,
        "calibration": model.calibration,
        "alpha": model.alpha,
    }


def scvae_reference(job, adata, arrays, state) -> dict[str, Any]:
    """SSVAE on the reference; ``map_query(query)``; the query's calibrated q(y | x)."""
    reference, query, _ = split(adata)
    query.obs = query.obs[["batch"]]  # the query has no labels
    model = scvae_model(job, reference)
    fit_s = scvae_fit(job, model)
    state["reference"], state["query"] = model, query
    t0 = time.perf_counter()
    mapped = model.map_query(
        query, max_epochs=int(job["query_epochs"]), progress_bar=False, accelerator="cpu"
    )
    t1 = time.perf_counter()
    frame = mapped.predict(query, soft=True)
    t2 = time.perf_counter()
    order = [str(c) for c in frame.columns]
    arrays["reference_proba"] = proba_array(frame, order)
    arrays["reference_latent_ref"] = model.get_latent()
    arrays["reference_latent_query"] = mapped.get_latent(query)
    return {
        "fit_s": fit_s,
        "map_s": t2 - t0,
        "map_query_s": t1 - t0,
        "predict_s": t2 - t1,
        "epochs": len(model.history),
        "map_epochs": mapped.training.get("n_epochs_trained"),
        "n_new_batches": mapped.training.get("n_new_batches"),
        "labels": order,
        "calibration": model.calibration,
        "alpha": model.alpha,
    }


def scvae_large(job, state) -> dict[str, Any]:
    """Map ``n_large`` resampled query cells (a new batch) with ``map_query``'s defaults."""
    model, query = state["reference"], state["query"]
    big = resample_cells(query, int(job["n_large"]), int(job["seed"]))
    big.obs["batch"] = "large_query"  # a batch the reference does not know: rows are learned
    big.obs_names = [f"large{i}" for i in range(big.n_obs)]
    cpu0, t0 = time.process_time(), time.perf_counter()
    mapped = model.map_query(big, progress_bar=False, accelerator="cpu")
    t1 = time.perf_counter()
    mapped.predict(big, soft=True)
    t2, cpu2 = time.perf_counter(), time.process_time()
    return {
        "n_cells": int(big.n_obs),
        "map_cpu_s": cpu2 - cpu0,
        "map_query_s": t1 - t0,
        "predict_s": t2 - t1,
        "map_s": t2 - t0,
        "map_epochs": mapped.training.get("n_epochs_trained"),
        "max_epochs": mapped.training.get("max_epochs"),
    }


# --------------------------------------------------------------------------------- scvi
def scvi_pair(job, adata):
    """SCVI (``max_epochs``) then ``SCANVI.from_scvi_model`` (``scanvi_epochs``) on ``adata``."""
    import scvi

    scvi.settings.seed = int(job["seed"])
    scvi.model.SCVI.setup_anndata(adata, batch_key=job["batch_key"], labels_key="labels")
    vae = scvi.model.SCVI(adata)
    t0 = time.perf_counter()
    vae.train(
        max_epochs=int(job["max_epochs"]),
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    scanvi = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=UNKNOWN)
    extra = {}
    if job.get("scanvi_batch_size"):  # the workaround of a one-cell labelled minibatch
        extra["batch_size"] = int(job["scanvi_batch_size"])
    scanvi.train(
        max_epochs=int(job["scanvi_epochs"]),
        n_samples_per_label=int(job["n_samples_per_label"]),
        **extra,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return scanvi, time.perf_counter() - t0, len(vae.history["elbo_train"])


def scvi_joint(job, adata, arrays) -> dict[str, Any]:
    """SCVI + SCANVI on reference + query (query unlabelled); SCANVI's soft prediction."""
    _, _, is_query = split(adata)
    model, fit_s, epochs = scvi_pair(job, adata)
    t0 = time.perf_counter()
    frame = model.predict(soft=True)
    predict_s = time.perf_counter() - t0
    order = [str(c) for c in frame.columns]
    arrays["joint_proba"] = proba_array(frame, order)[is_query]
    return {
        "fit_s": fit_s,
        "map_s": predict_s,
        "predict_s": predict_s,
        "epochs": epochs,
        "scanvi_epochs": len(model.history["elbo_train"]),
        "labels": order,
    }


def scvi_reference(job, adata, arrays) -> dict[str, Any]:
    """scArches: SCVI + SCANVI on the reference, ``load_query_data`` + ``train`` + predict."""
    import scvi

    reference, query, _ = split(adata)
    model, fit_s, epochs = scvi_pair(job, reference)
    query.obs["labels"] = UNKNOWN
    t0 = time.perf_counter()
    scvi.model.SCANVI.prepare_query_anndata(query, model)
    mapped = scvi.model.SCANVI.load_query_data(query, model)
    mapped.train(
        max_epochs=int(job["query_epochs"]),
        plan_kwargs={"weight_decay": 0.0},
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    t1 = time.perf_counter()
    frame = mapped.predict(soft=True)
    t2 = time.perf_counter()
    order = [str(c) for c in frame.columns]
    arrays["reference_proba"] = proba_array(frame, order)
    return {
        "fit_s": fit_s,
        "map_s": t2 - t0,
        "map_query_s": t1 - t0,
        "predict_s": t2 - t1,
        "epochs": epochs,
        "map_epochs": len(mapped.history["elbo_train"]),
        "labels": order,
    }


# --------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    """Run the job's tasks (each one's crash recorded, the others still run)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tool", choices=["scvae", "scvi"], required=True)
    p.add_argument("--job", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    job = read_job(args.job)

    import anndata as ad
    import torch

    torch.set_num_threads(int(job.get("threads", 1)))
    adata = ad.read_h5ad(job["h5ad"])
    arrays: dict[str, np.ndarray] = {}
    state: dict[str, Any] = {}
    meta: dict[str, Any] = {
        "tool": args.tool,
        "tasks": {},
        "torch_threads": torch.get_num_threads(),
    }
    for task in job["tasks"]:
        load, cpu = load_average(), time.process_time()
        try:
            if args.tool == "scvae":
                if task == "joint":
                    out = scvae_joint(job, adata, arrays)
                elif task == "reference":
                    out = scvae_reference(job, adata, arrays, state)
                elif task == "large":
                    if "reference" not in state:
                        raise RuntimeError("the large query needs the reference task first")
                    out = scvae_large(job, state)
                else:
                    raise ValueError(task)
            else:
                if task == "joint":
                    out = scvi_joint(job, adata, arrays)
                elif task == "reference":
                    out = scvi_reference(job, adata, arrays)
                else:
                    raise ValueError(task)
        except Exception as error:  # recorded, as the issue asks for crashes
            out = {
                "error": f"{type(error).__name__}: {error}".strip()[:600],
                "traceback_tail": traceback.format_exc().strip().splitlines()[-6:],
            }
        out["load_before"] = load
        out["load_after"] = load_average()
        out["task_cpu_s"] = time.process_time() - cpu
        meta["tasks"][task] = out
        brief = out.get("error") or {k: round(v, 1) for k, v in out.items() if k.endswith("_s")}
        print(f"{args.tool} {task}: {brief}", flush=True)
    meta["versions"] = versions(SCVI_TOOL_VERSIONS if args.tool == "scvi" else SCVAE_TOOL_VERSIONS)
    write_worker_output(args.out, meta, arrays)


if __name__ == "__main__":
    main()
