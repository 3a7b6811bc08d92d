"""Differential expression: scvae against scvi-tools and scanpy, on a simulation and PBMC 3k.

Four parts, each runnable alone (``--part sim markers null time``; default all):

``sim``
    ``scvae.datasets.simulate_de(seed=s)`` (4,000 cells, 2,000 genes, 5 groups, 2 partly
    confounded batches, 5 % DE genes per group): each group against the rest. Positives: the
    group's own DE genes; negatives: genes DE in no group; genes DE in another group are left
    out (their difference to the rest is a diluted mixture). Per group and method: AUROC and
    AUPRC of the two-sided ranking, observed FDR and power of the calls at the nominal 5 %,
    Spearman correlation of the estimated and true log2 fold changes over the positives.
``markers``
    PBMC 3k (2,000 seurat-flavour HVGs plus any canonical marker they miss): every cell type
    against the rest; the rank of each canonical marker in its type's list.
``null``
    Two random halves of the largest cell type of PBMC 3k, and of the cells of the largest
    group in one batch of the simulation: genes called at the nominal 5 %.
``time``
    Every type against the rest on PBMC 3k: DE time only (trained models), at the same number
    of posterior samples and at each tool's default, 3 repeats.

Methods: scanpy ``rank_genes_groups`` (Wilcoxon, t-test) on log-normalized counts
(``normalize_total(1e4)``, ``log1p``); scvi-tools 1.4.2 ``SCVI`` and scvae ``ZINBVAE`` with the
same settings (10 latent, 1 x 128 hidden, ZINB, gene dispersion, latent library,
``batch_key="batch"`` on the simulation, ``--max-epochs``, KL warm-up a tenth of the epochs),
each fitted in its own process by ``de_worker.py``, then ``differential_expression`` in
``mode="change"`` and ``"vanilla"`` with ``batch_correction=True``. A fit is cached in
``benchmarks/results/de/`` and reused while its job is unchanged. ::

    OMP_WAIT_POLICY=PASSIVE nice python benchmarks/de.py --part sim --seeds 0 1
    python benchmarks/render.py --print de --from benchmarks/results

Writes ``benchmarks/results/de.json`` (a part run alone replaces only its part).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    REPO_ROOT,
    RESULTS_DIR,
    SCVI_VENV,
    TARGET_SUM,
    ensure_scvi_venv,
    git_commit,
    highly_variable,
    load_average,
    read_result,
    thread_env,
    write_result,
)

BENCH_DIR = Path(__file__).resolve().parent
WORKER = BENCH_DIR / "de_worker.py"
WORK_DIR = RESULTS_DIR / "de"
FDR = 0.05
VANILLA_BF = 3.0  # |log Bayes factor| > 3 is scvi-tools' usual call in vanilla mode
#: canonical markers of the PBMC 3k types (labels of ``obs["cell_type"]``)
MARKERS: dict[str, list[str]] = {
    "B": ["MS4A1", "CD79A"],
    "CD14+ Mono": ["CD14", "LYZ"],
    "FCGR3A+ Mono": ["FCGR3A", "MS4A7"],
    "CD8 T": ["CD8A", "CD8B"],
    "NK": ["GNLY", "NKG7"],
    "DC": ["FCER1A", "CST3"],
    "Platelet": ["PPBP"],
    "Naive CD4 T": ["IL7R", "CCR7"],
    "Memory CD4 T": ["IL7R", "S100A4"],
}
SCANPY_METHODS = ("wilcoxon", "t-test")
SAME_SAMPLES = 5000  # scvi-tools' default n_samples_overall


# ------------------------------------------------------------------------------------ data
def log_normalized_copy(adata):
    """A copy with ``normalize_total(1e4)`` and ``log1p`` of the counts in ``X``."""
    import scanpy as sc

    out = adata.copy()
    sc.pp.normalize_total(out, target_sum=TARGET_SUM)
    sc.pp.log1p(out)
    return out


def halves(mask: np.ndarray, seed: int) -> np.ndarray:
    """``"half1"``/``"half2"`` for a random split of the cells in ``mask``, ``"other"`` else."""
    rng = np.random.default_rng(seed)
    cells = rng.permutation(np.flatnonzero(mask))
    out = np.full(mask.size, "other", dtype=object)
    out[cells[: cells.size // 2]] = "half1"
    out[cells[cells.size // 2 :]] = "half2"
    return out


def sim_data(seed: int, quick: bool):
    """The simulation of ``seed`` with ``obs["null_split"]`` (halves of g0 in batch0)."""
    import scvae

    kw = {"n_cells": 600, "n_genes": 600} if quick else {}
    adata = scvae.datasets.simulate_de(seed=seed, **kw)
    pool = (adata.obs["group"] == "g0").to_numpy() & (adata.obs["batch"] == "batch0").to_numpy()
    adata.obs["null_split"] = halves(pool, seed).astype(str)
    adata.obs["null_split"] = adata.obs["null_split"].astype("category")
    del adata.layers["counts"]
    return adata


def pbmc_data(quick: bool):
    """PBMC 3k: 2,000 HVGs (seurat flavour) plus missing markers, ``obs["null_split"]``."""
    import anndata as ad
    import scipy.sparse as sp

    import scvae

    full = scvae.datasets.pbmc3k()
    keep = highly_variable(full.X, 300 if quick else 2000)
    names = np.asarray(full.var_names)
    wanted = sorted({g for genes in MARKERS.values() for g in genes})
    missing = [g for g in wanted if g not in set(names)]
    if missing:
        raise SystemExit(f"markers not in PBMC 3k: {missing}")
    added = [g for g in wanted if not keep[names == g][0]]
    keep |= np.isin(names, added)
    cells = full.obs["cell_type"].astype(str).to_numpy()
    largest = full.obs["cell_type"].value_counts().index[0]
    obs = full.obs[["cell_type"]].astype(str).astype("category")
    obs["null_split"] = halves(cells == largest, 0)
    obs["null_split"] = obs["null_split"].astype("category")
    adata = ad.AnnData(X=sp.csr_matrix(full.X[:, keep], dtype=np.float32), obs=obs)
    adata.var_names = names[keep]
    nonempty = np.asarray(adata.X.sum(axis=1)).ravel() > 0
    adata = adata[nonempty].copy()
    return adata, {
        "added_markers": added,
        "null_type": str(largest),
        "n_genes": int(keep.sum()),
        "n_cells": int(adata.n_obs),
        "n_empty_dropped": int((~nonempty).sum()),
    }


# --------------------------------------------------------------------------------- workers
def run_worker_cached(tool: str, job: dict[str, Any], stem: Path, threads: int) -> dict:
    """Run ``de_worker.py`` for ``tool`` unless ``stem`` already holds this very job's output."""
    import subprocess

    job_path = stem.with_suffix(".job.json")
    out_json = stem.with_suffix(".json")
    if job_path.exists() and out_json.exists() and json.loads(job_path.read_text()) == job:
        print(f"reusing {out_json}", flush=True)
        return json.loads(out_json.read_text())
    stem.parent.mkdir(parents=True, exist_ok=True)
    job_path.write_text(json.dumps(job, indent=1))
    out_json.unlink(missing_ok=True)
    python = str(ensure_scvi_venv(SCVI_VENV)) if tool == "scvi" else sys.executable
    command = [python, str(WORKER), "--tool", tool, "--job", str(job_path), "--out", str(stem)]
    env = {**thread_env(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    if tool == "scvi":  # scvi-tools' environment must not see the scvae export
        env.pop("PYTHONPATH", None)
    print(f"running {shlex.join(command)}", flush=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-30:])
        raise RuntimeError(f"{tool} worker failed:\n{tail}")
    return json.loads(out_json.read_text())


def read_table(stem: Path, task: str):
    """A table a worker kept: gene-indexed (long tables keep their ``group1`` column)."""
    import pandas as pd

    return pd.read_csv(f"{stem}.{task}.csv", keep_default_na=False, na_values=[""])


def use_committed_scvae(commit: str) -> tuple[Path, str]:
    """Export ``scvae/`` of ``commit`` (``git archive``) and import scvae from there.

    The work tree may hold other people's unfinished edits; the measurements are of committed
    code only. The export's folder goes first on ``sys.path`` (this process) and on
    ``PYTHONPATH`` (the scvae worker). Returns the folder and the full commit hash.
    """
    import subprocess
    import tarfile
    from io import BytesIO

    full = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", commit],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    where = WORK_DIR / f"src-{full[:10]}"
    if not (where / "scvae" / "__init__.py").exists():
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", full, "scvae"],
            capture_output=True,
            check=True,
        ).stdout
        where.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(where, filter="data")
    os.environ.setdefault("SCVAE_DATA_DIR", str(REPO_ROOT / "data"))  # the bundled data
    sys.path.insert(0, str(where))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(where), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    return where, full


def scvae_source_hash() -> str:
    """SHA-1 of scvae's Python sources: a cached scvae fit is redone when the code changed."""
    import hashlib

    import scvae

    digest = hashlib.sha1()
    for path in sorted(Path(scvae.__file__).resolve().parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def fit_job(h5ad: Path, batch_key: str | None, args, tasks: list[dict]) -> dict[str, Any]:
    """The worker job: the shared fit settings and the tasks."""
    return {
        "h5ad": str(h5ad),
        "batch_key": batch_key,
        "max_epochs": args.max_epochs,
        "kl_warmup_epochs": max(1, args.max_epochs // 10),
        "batch_size": 128,
        "lr": 1e-3,
        "seed": 0,
        "threads": args.threads,
        "tasks": tasks,
    }


def worker_stems(h5ad: Path, args) -> dict[str, Path]:
    """Cache stems of the two fits; scvae's names its commit (runs of two commits coexist)."""
    return {
        "scvae": WORK_DIR / f"{h5ad.stem}_scvae-{args.scvae_commit_short}_e{args.max_epochs}",
        "scvi": WORK_DIR / f"{h5ad.stem}_scvi_e{args.max_epochs}",
    }


def write_once(adata, path: Path) -> None:
    """Write the (seeded, deterministic) data set unless another run already has."""
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp.h5ad")
        adata.write_h5ad(tmp)
        tmp.replace(path)


def run_both(jobs: dict[str, dict], stems: dict[str, Path], threads: int, parallel: bool):
    """Run the scvae and scvi jobs, at once (one thread each) or one after the other."""
    tools = ["scvae", "scvi"]
    if parallel:
        with ThreadPoolExecutor(2) as pool:
            futures = {
                t: pool.submit(run_worker_cached, t, jobs[t], stems[t], threads) for t in tools
            }
            return {t: f.result() for t, f in futures.items()}
    return {t: run_worker_cached(t, jobs[t], stems[t], threads) for t in tools}


# ------------------------------------------------------------------------------ per-method
def scanpy_tables(adata, groupby: str, method: str, groups=None, reference="rest"):
    """scanpy's ``rank_genes_groups`` on a log-normalized copy: ``{group: table by gene}``."""
    import pandas as pd
    import scanpy as sc

    ln = log_normalized_copy(adata)
    kw = {"groups": groups} if groups is not None else {}
    sc.tl.rank_genes_groups(
        ln, groupby, method=method, reference=reference, n_genes=ln.n_vars, use_raw=False, **kw
    )
    out = {}
    for group in ln.uns["rank_genes_groups"]["names"].dtype.names:
        df = sc.get.rank_genes_groups_df(ln, group=group)
        out[group] = pd.DataFrame(
            {
                "score": df["scores"].to_numpy(),
                "pval": df["pvals"].to_numpy(),
                "padj": df["pvals_adj"].to_numpy(),
                "lfc": df["logfoldchanges"].to_numpy(),
            },
            index=df["names"].astype(str).to_numpy(),
        )
    return out


def ordered_score(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """A score whose order is ``primary`` descending, ties broken by ``secondary`` descending."""
    order = np.lexsort((-secondary, -primary))
    score = np.empty(primary.size)
    score[order] = np.arange(primary.size, 0, -1, dtype=np.float64)
    return score


def method_view(kind: str, table) -> dict[str, np.ndarray]:
    """``score`` (two-sided ranking), ``call`` and ``lfc`` of one group's table, by gene.

    scanpy: p-value ascending (ties by ``|z|``), call ``pvals_adj < 0.05`` (Benjamini-Hochberg);
    change mode: ``proba_de`` (ties by ``|lfc_mean|``), call ``is_de_fdr_0.05``; vanilla:
    ``|bayes_factor|`` (ties by ``|lfc_mean|``), call ``|bayes_factor| > 3``. The LFC is
    ``lfc_mean`` (log2), or where a table has none (scvi-tools' vanilla mode)
    ``log2(scale1 / scale2)``.
    """
    if kind == "scanpy":
        p = np.nan_to_num(table["pval"].to_numpy(), nan=1.0)
        z = np.nan_to_num(np.abs(table["score"].to_numpy()))
        return {
            "score": ordered_score(-p, z),
            "call": np.nan_to_num(table["padj"].to_numpy(), nan=1.0) < FDR,
            "lfc": table["lfc"].to_numpy(dtype=np.float64),
        }
    if "lfc_mean" in table:
        lfc = table["lfc_mean"].to_numpy(dtype=np.float64)
    else:  # scvi-tools' vanilla mode reports no LFC: that of the posterior mean scales
        lfc = np.log2(table["scale1"].to_numpy(dtype=np.float64)) - np.log2(
            table["scale2"].to_numpy(dtype=np.float64)
        )
    if kind == "change":
        return {
            "score": ordered_score(table["proba_de"].to_numpy(), np.abs(lfc)),
            "call": table[f"is_de_fdr_{FDR}"].astype(str).str.lower().eq("true").to_numpy(),
            "lfc": lfc,
        }
    bf = np.abs(table["bayes_factor"].to_numpy(dtype=np.float64))
    return {"score": ordered_score(bf, np.abs(lfc)), "call": bf > VANILLA_BF, "lfc": lfc}


def split_long(table, key: str = "group1") -> dict[str, Any]:
    """``{group: gene-indexed table}`` of a stacked every-group-against-the-rest table."""
    return {
        str(g): sub.set_index("gene") for g, sub in table.groupby(key, sort=False, observed=True)
    }


# ---------------------------------------------------------------------------------- metrics
def sim_scores(adata, views: dict[str, dict[str, dict[str, np.ndarray]]]) -> list[dict]:
    """Rows (method, group, AUROC, AUPRC, FDR, power, Spearman) of the simulation."""
    from scipy.stats import spearmanr
    from sklearn.metrics import average_precision_score, roc_auc_score

    groups = list(adata.obs["group"].cat.categories)
    de = np.stack([adata.var[f"de_{g}"].to_numpy() for g in groups])  # (K, G)
    never = ~de.any(axis=0)
    rows = []
    for method, per_group in views.items():
        for k, g in enumerate(groups):
            v = per_group[g]
            keep = de[k] | never
            y = de[k][keep]
            score, call = v["score"][keep], v["call"][keep]
            n_calls = int(call.sum())
            tp = int((call & y).sum())
            truth = adata.var[f"lfc_{g}"].to_numpy()[de[k]]
            est = v["lfc"][de[k]]
            ok = np.isfinite(est)
            rows.append(
                {
                    "method": method,
                    "group": g,
                    "n_cells": int((adata.obs["group"] == g).sum()),
                    "n_pos": int(y.sum()),
                    "n_neg": int((~y).sum()),
                    "auroc": float(roc_auc_score(y, score)),
                    "auprc": float(average_precision_score(y, score)),
                    "n_calls": n_calls,
                    "fdr": (n_calls - tp) / n_calls if n_calls else 0.0,
                    "power": tp / int(y.sum()),
                    "spearman_lfc": float(spearmanr(est[ok], truth[ok]).statistic),
                    "lfc_mae": float(np.mean(np.abs(est[ok] - truth[ok]))),
                }
            )
    return rows


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean over groups of every metric, per method."""
    out: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        out[method] = {
            m: float(np.mean([r[m] for r in mine]))
            for m in ("auroc", "auprc", "fdr", "power", "spearman_lfc", "lfc_mae", "n_calls")
        }
    return out


def view_by_gene(kind: str, table, genes) -> dict[str, np.ndarray]:
    """:func:`method_view` of ``table`` aligned to ``genes``."""
    return method_view(kind, table.reindex(genes))


def marker_ranks(order_by_group: dict[str, list[str]]) -> list[dict]:
    """Rank (1 = first) of each canonical marker in its type's ordered gene list."""
    rows = []
    for cell_type, genes in MARKERS.items():
        order = order_by_group[cell_type]
        position = {g: i + 1 for i, g in enumerate(order)}
        rows += [{"type": cell_type, "gene": g, "rank": position.get(g)} for g in genes]
    return rows


def up_order(kind: str, table) -> list[str]:
    """Genes of one type's table, the markers' order: up-regulated first, best first.

    scanpy: its own order (z-score descending). Change mode (scvi-tools; scvae when
    ``scvae.tl.rank_genes_groups`` is not used): genes with ``lfc_mean > 0`` first, by
    ``proba_de`` then ``lfc_mean``.
    """
    if kind == "scanpy":
        return list(table.sort_values("score", ascending=False, kind="stable").index)
    up = (table["lfc_mean"] > 0).astype(int)
    frame = table.assign(_up=up)
    frame = frame.sort_values(["_up", "proba_de", "lfc_mean"], ascending=False, kind="stable")
    return list(frame.index)


# ------------------------------------------------------------------------------------ parts
def part_sim_and_null(args, seed: int, want_sim: bool, want_null: bool) -> dict[str, Any]:
    """Fit both VAEs on the simulation of ``seed``; score every method; the null halves."""
    adata = sim_data(seed, args.quick)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    h5ad = WORK_DIR / f"sim{seed}{'_quick' if args.quick else ''}.h5ad"
    write_once(adata, h5ad)
    tasks = [
        {"name": "ovr_change", "groupby": "group", "mode": "change"},
        {"name": "ovr_vanilla", "groupby": "group", "mode": "vanilla"},
        {"name": "null_change", "groupby": "null_split", "group1": "half1", "group2": "half2"},
        {
            "name": "null_vanilla",
            "groupby": "null_split",
            "group1": "half1",
            "group2": "half2",
            "mode": "vanilla",
        },
    ]
    for t in tasks:
        t.setdefault("mode", "change")
        t["batch_correction"] = True
    job = fit_job(h5ad, "batch", args, tasks)
    stems = worker_stems(h5ad, args)
    jobs = {"scvae": {**job, "scvae_source": scvae_source_hash()}, "scvi": job}
    fits = run_both(jobs, stems, args.threads, args.parallel)
    genes = np.asarray(adata.var_names)
    out: dict[str, Any] = {
        "seed": seed,
        "fits": {t: {k: fits[t][k] for k in ("tool", "fit_time_s", "epochs")} for t in fits},
        "simulation": {
            "n_cells": int(adata.n_obs),
            "n_genes": int(adata.n_vars),
            "group_sizes": adata.obs["group"].value_counts(sort=False).to_dict(),
            "cells_per_batch_and_group": adata.uns["simulation"]["cells_per_batch_and_group"],
            "down_scales": adata.uns["simulation"]["down_scales"],
        },
    }
    if want_sim:
        views: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        for method in SCANPY_METHODS:
            tables = scanpy_tables(adata, "group", method)
            views[f"scanpy {method}"] = {
                g: view_by_gene("scanpy", t, genes) for g, t in tables.items()
            }
        for tool, label in (("scvi", "scvi-tools"), ("scvae", "scvae")):
            for mode in ("change", "vanilla"):
                long = split_long(read_table(stems[tool], f"ovr_{mode}"))
                views[f"{label} {mode}"] = {
                    g: view_by_gene(mode, t, genes) for g, t in long.items()
                }
        rows = sim_scores(adata, views)
        out["rows"] = rows
        out["summary"] = summarize(rows)
    if want_null:
        out["null"] = null_counts(adata, stems, n_genes=adata.n_vars)
        out["null"]["cells"] = "the cells of g0 in batch0, split at random into halves"
    return out


def null_counts(adata, stems: dict[str, Path], n_genes: int) -> dict[str, Any]:
    """Genes called at the nominal 5 % between the two halves, per method."""
    sizes = adata.obs["null_split"].value_counts().to_dict()
    calls: dict[str, int] = {}
    for method in SCANPY_METHODS:
        t = scanpy_tables(adata, "null_split", method, groups=["half1"], reference="half2")
        calls[f"scanpy {method}"] = int(method_view("scanpy", t["half1"])["call"].sum())
    for tool, label in (("scvi", "scvi-tools"), ("scvae", "scvae")):
        for mode in ("change", "vanilla"):
            table = read_table(stems[tool], f"null_{mode}").set_index("gene")
            calls[f"{label} {mode}"] = int(method_view(mode, table)["call"].sum())
    return {
        "n_half1": int(sizes.get("half1", 0)),
        "n_half2": int(sizes.get("half2", 0)),
        "n_genes": int(n_genes),
        "calls": calls,
    }


def part_pbmc(args, parts: set[str]) -> dict[str, Any]:
    """Fit both VAEs on PBMC 3k one after the other (timed DE); markers, null, time."""
    adata, info = pbmc_data(args.quick)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    h5ad = WORK_DIR / f"pbmc3k{'_quick' if args.quick else ''}.h5ad"
    write_once(adata, h5ad)
    repeats = 1 if args.quick else 3
    same = min(200, args.same_samples) if args.quick else args.same_samples
    null = {"groupby": "null_split", "group1": "half1", "group2": "half2"}
    # scvi-tools decodes `same` samples for each of the two groups of every comparison; scvae's
    # n_samples is posterior draws per cell, each cell decoded once for all comparisons
    n_groups = int(adata.obs["cell_type"].nunique())
    per_cell = math.ceil(n_groups * 2 * same / adata.n_obs) if same else 0
    common = [
        {"name": "time_default", "groupby": "cell_type", "repeats": repeats},
        {"name": "null_change", **null},
        {"name": "null_vanilla", **null, "mode": "vanilla"},
    ]
    jobs = {}
    for tool in ("scvae", "scvi"):
        tasks = [dict(t) for t in common]
        if tool == "scvae":  # scvi-tools' default is the shared number of samples
            tasks.append({"name": "rank", "kind": "rank", "groupby": "cell_type"})
            if same:  # the same number of decoded (cell, z) samples as scvi-tools' run
                timed = {"groupby": "cell_type", "repeats": repeats, "n_samples": per_cell}
                tasks.insert(1, {"name": "time_same", **timed})
        for t in tasks:
            t.setdefault("mode", "change")
            t["batch_correction"] = True
        jobs[tool] = fit_job(h5ad, None, args, tasks)
    jobs["scvae"]["scvae_source"] = scvae_source_hash()
    stems = worker_stems(h5ad, args)
    fits = run_both(jobs, stems, args.threads, parallel=False)  # timed: never concurrently
    out: dict[str, Any] = {
        "data": info,
        "fits": {t: {k: fits[t][k] for k in ("tool", "fit_time_s", "epochs")} for t in fits},
    }
    if "markers" in parts:
        orders: dict[str, dict[str, list[str]]] = {}
        for method in SCANPY_METHODS:
            tables = scanpy_tables(adata, "cell_type", method)
            orders[f"scanpy {method}"] = {g: up_order("scanpy", t) for g, t in tables.items()}
        for tool, label in (("scvi", "scvi-tools"), ("scvae", "scvae")):
            long = split_long(read_table(stems[tool], "time_default"))
            orders[f"{label} change"] = {g: up_order("change", t) for g, t in long.items()}
        if (Path(f"{stems['scvae']}.rank.csv")).exists():
            ranked = read_table(stems["scvae"], "rank")
            orders["scvae rank_genes_groups"] = {
                str(g): list(sub.sort_values("rank")["gene"])
                for g, sub in ranked.groupby("group", observed=True)
            }
        out["markers"] = {
            method: {
                "ranks": marker_ranks(order),
                "top10": float(np.mean([r["rank"] <= 10 for r in marker_ranks(order)])),
                "top25": float(np.mean([r["rank"] <= 25 for r in marker_ranks(order)])),
            }
            for method, order in orders.items()
        }
    if "null" in parts:
        out["null"] = null_counts(adata, stems, n_genes=adata.n_vars)
        out["null"]["cells"] = f"the {info['null_type']} cells, split at random into halves"
    if "time" in parts:
        t_scvae, t_scvi = fits["scvae"]["tasks"], fits["scvi"]["tasks"]
        out["time"] = {
            "threads": args.threads,
            "n_groups": int(adata.obs["cell_type"].nunique()),
            "same_n_samples": same,
            "scvae_same_n_samples_per_cell": per_cell,
            "scvae_default_n_samples": 10,
            "scvi_default_n_samples": SAME_SAMPLES,
            "scvae_same": t_scvae.get("time_same", {}).get("times_s"),
            "scvae_default": t_scvae["time_default"]["times_s"],
            "scvi_default": t_scvi["time_default"]["times_s"],
            "scanpy_wilcoxon": time_scanpy(adata, repeats),
        }
    return out


def time_scanpy(adata, repeats: int) -> list[float]:
    """Wall times of scanpy's Wilcoxon, every type against the rest (normalization included)."""
    import time

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        scanpy_tables(adata, "cell_type", "wilcoxon")
        times.append(time.perf_counter() - t0)
    return times


# ------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    """Run the chosen parts, print their tables, write ``results/de.json``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--part",
        nargs="+",
        choices=["sim", "markers", "null", "time"],
        default=["sim", "markers", "null", "time"],
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--parallel", action="store_true", help="fit scvae and scvi at once on the simulation"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test")
    p.add_argument("--name", default="de")
    p.add_argument(
        "--same-samples",
        type=int,
        default=SAME_SAMPLES,
        help="n_samples of scvae's timing at scvi-tools' default (0: skip that timing)",
    )
    p.add_argument(
        "--scvae-commit",
        default="HEAD",
        help="measure scvae as committed here (exported with git archive), not the work tree",
    )
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if args.quick:
        args.max_epochs = min(args.max_epochs, 3)
    source, scvae_commit = use_committed_scvae(args.scvae_commit)
    args.scvae_commit_short = scvae_commit[:7]
    print(f"scvae from {source} (commit {scvae_commit[:10]})", flush=True)
    parts = set(args.part)
    payload: dict[str, Any] = {}
    stamp = {
        "command": shlex.join(["python", "benchmarks/de.py", *argv]),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "scvae_commit": scvae_commit[:10],
        "load_before": load_average(),
        "max_epochs": args.max_epochs,
    }
    if parts & {"sim", "null"}:
        sims = [part_sim_and_null(args, s, "sim" in parts, "null" in parts) for s in args.seeds]
        if "sim" in parts:
            payload["sim"] = {
                **stamp,
                "seeds": [{k: v for k, v in s.items() if k != "null"} for s in sims if "rows" in s],
            }
            for s in payload["sim"]["seeds"]:
                print(f"\nsimulation seed {s['seed']} (mean over groups)")
                for method, m in s["summary"].items():
                    print(
                        f"  {method:20s} AUROC {m['auroc']:.3f} AUPRC {m['auprc']:.3f} "
                        f"FDR {m['fdr']:.3f} power {m['power']:.3f} "
                        f"rho {m['spearman_lfc']:.3f}"
                    )
        if "null" in parts:
            payload.setdefault("null", {})
            seeds = [{"seed": s["seed"], **s["null"]} for s in sims]
            payload["null"]["sim"] = {**stamp, "seeds": seeds}
    if parts & {"markers", "null", "time"}:
        pbmc = part_pbmc(args, parts)
        if "markers" in parts:
            payload["markers"] = {
                **stamp,
                "data": pbmc["data"],
                "fits": pbmc["fits"],
                "methods": pbmc["markers"],
            }
            for method, m in pbmc["markers"].items():
                print(f"  markers {method:25s} top10 {m['top10']:.2f} top25 {m['top25']:.2f}")
        if "null" in parts:
            payload.setdefault("null", {})
            payload["null"]["pbmc"] = {**stamp, **pbmc["null"]}
            print("null pbmc:", pbmc["null"]["calls"])
        if "time" in parts:
            payload["time"] = {**stamp, **pbmc["time"]}
            print("time:", json.dumps(pbmc["time"]))
    # merged into the previous result only now: another part may have finished meanwhile
    previous = RESULTS_DIR / f"{args.name}.json"
    if previous.exists():
        old = read_result(previous)
        merged = {k: old[k] for k in ("sim", "null", "markers", "time") if k in old}
        null = {**merged.get("null", {}), **payload.get("null", {})}
        payload = {**merged, **payload, **({"null": null} if null else {})}
    write_result(args.name, payload, script="de", argv=argv)


if __name__ == "__main__":
    main()
