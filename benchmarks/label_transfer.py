"""Label transfer: scvae's SSVAE against scANVI, scArches, logistic regression and 15-NN.

Splits (``--splits``; a reference with labels, a query whose labels are predicted):

``2source_query_zheng`` / ``2source_query_pbmc3k``
    ``pbmc_2source_zheng_sorted``, leave one source (``obs["batch"]``) out: each source is
    the query in turn (the zheng2017_sorted reference has no FCGR3A+ Mono, DC or Platelet).
``3chem_query_5p`` (and ``3chem_query_3pv1``, ``3chem_query_3pv2``)
    ``pbmc_3chemistries_small``, one chemistry (``obs["batch"]``) as the query.
``cellbench_query_dropseq``
    ``cellbench_lung_celllines``, the Drop-seq batch as the query (labels: ``cell_type``,
    demuxlet's cell line).
``pbmc3k_half``
    PBMC 3k (``scvae.datasets.pbmc3k()``), half the cells' labels hidden at random
    (``default_rng(0).random(n) < 0.5``, as ``ssvae_alpha.py``); one batch.

Genes: 2,000 highly variable genes (scanpy ``seurat`` flavour on a log-normalized copy) of the
reference cells, or every gene when there are fewer (``pbmc_3chemistries_small``: 1,767). A
label with fewer than two reference cells is hidden (``"Unknown"``) for every method (the SSVAE
needs two labelled cells per label). Query cells whose type the reference lacks count as errors
for every method.

Methods, on the same split and genes:

1. ``scvae SSVAE joint``: ``scvae.SSVAE`` on reference (labelled) + query (unlabelled),
   ``batch_key="batch"``, ``--max-epochs``; ``predict(soft=True)`` (calibrated).
2. ``scvae SSVAE + map_query``: the SSVAE on the reference, ``map_query(query,
   max_epochs=--query-epochs)``, ``predict(query, soft=True)``.
3. ``scANVI joint``: scvi-tools ``SCVI`` (``--max-epochs``) on all cells, then
   ``SCANVI.from_scvi_model(unlabeled_category="Unknown")`` trained ``--scanvi-epochs`` with
   ``n_samples_per_label=100`` (the tutorials'), ``predict(soft=True)``; ``scArches (scANVI)``:
   the same on the reference, then ``SCANVI.load_query_data(query)``, ``train(max_epochs=
   --query-epochs, plan_kwargs=dict(weight_decay=0.0))``, ``predict(soft=True)``. A crash
   is recorded; when it is the one-cell BatchNorm minibatch of SCANVI's stage, that task is
   run again with ``SCANVI.train(batch_size=--scanvi-workaround)`` (127) as extra rows.
4. ``logistic regression``: scikit-learn ``LogisticRegression(max_iter=1000)`` on
   ``log1p(counts per 10,000)`` of the reference cells.
5. ``15-NN``: majority vote of the 15 nearest reference cells (Euclidean) in the latent of
   the joint SSVAE, and of the reference SSVAE with the query mapped.

Per split and method: accuracy and macro-F1 (``f1_score(average="macro")``, over the labels in
truth or prediction) on the query cells; expected calibration error of the top probability in
15 equal-width bins (15-NN: the vote share); fit seconds (training, reference or joint) and map
seconds (mapping and prediction of the query; joint models: prediction only). Each tool's
models run in their own process (``label_transfer_worker.py``), one torch thread each,
``OMP_WAIT_POLICY=PASSIVE``; scvae as committed (``git archive`` export of ``--scvae-commit``).
Worker outputs are cached in ``benchmarks/results/label_transfer/`` while the job is unchanged.
``--n-large`` times ``map_query`` of a 10k-cell query (the query cells of ``--large-split``
resampled, a new batch, default options) on that split's SSVAE reference, once after the
split's other scvae fits and ``--large-repeats`` times more in a scvae process of its own (the
reference refitted, the same seed), while no other fit of this benchmark runs. ::

    OMP_WAIT_POLICY=PASSIVE nice python benchmarks/label_transfer.py
    python benchmarks/render.py --print label_transfer --from benchmarks/results

Writes ``benchmarks/results/label_transfer.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    DATA_DIR,
    REPO_ROOT,
    RESULTS_DIR,
    SCVI_VENV,
    ensure_scvi_venv,
    git_commit,
    highly_variable,
    load_average,
    log_normalized,
    thread_env,
    versions,
    write_result,
)

BENCH_DIR = Path(__file__).resolve().parent
WORKER = BENCH_DIR / "label_transfer_worker.py"
WORK_DIR = RESULTS_DIR / "label_transfer"
UNKNOWN = "Unknown"
K = 15
ECE_BINS = 15
N_TOP_GENES = 2000
#: split name -> (file stem or "pbmc3k", query batch or None for the random half)
SPLITS: dict[str, tuple[str, str | None]] = {
    "2source_query_zheng": ("pbmc_2source_zheng_sorted", "zheng2017_sorted"),
    "2source_query_pbmc3k": ("pbmc_2source_zheng_sorted", "pbmc3k"),
    "3chem_query_5p": ("pbmc_3chemistries_small", "5p"),
    "3chem_query_3pv1": ("pbmc_3chemistries_small", "3pv1"),
    "3chem_query_3pv2": ("pbmc_3chemistries_small", "3pv2"),
    "cellbench_query_dropseq": ("cellbench_lung_celllines", "sc_dropseq"),
    "pbmc3k_half": ("pbmc3k", None),
}
DEFAULT_SPLITS = (
    "2source_query_zheng",
    "2source_query_pbmc3k",
    "3chem_query_5p",
    "cellbench_query_dropseq",
    "pbmc3k_half",
)
METHODS = (
    "scvae SSVAE joint",
    "scvae SSVAE + map_query",
    "scANVI joint",
    "scArches (scANVI)",
    "logistic regression",
    "15-NN, joint SSVAE latent",
    "15-NN, mapped SSVAE latent",
)


# -------------------------------------------------------------------------------- data
def make_split(name: str, quick: bool):
    """The split's AnnData (counts of the chosen genes; obs truth, labels, batch, is_query)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    stem, query_batch = SPLITS[name]
    if stem == "pbmc3k":
        import scvae

        full = scvae.datasets.pbmc3k()
        is_query = np.random.default_rng(0).random(full.n_obs) < 0.5
    else:
        full = ad.read_h5ad(DATA_DIR / f"{stem}.h5ad")
        is_query = (full.obs["batch"].astype(str) == query_batch).to_numpy()
    counts = sp.csr_matrix(full.X, dtype=np.float32)
    genes = highly_variable(counts[~is_query], 300 if quick else N_TOP_GENES)
    counts = counts[:, genes]
    truth = full.obs["cell_type"].astype(str).to_numpy()
    batch = full.obs["batch"].astype(str).to_numpy()
    if quick:  # a smoke test: a few hundred cells
        keep = np.random.default_rng(1).random(full.n_obs) < min(1.0, 600 / full.n_obs)
        counts, truth, batch, is_query = counts[keep], truth[keep], batch[keep], is_query[keep]
    nonempty = np.asarray(counts.sum(axis=1)).ravel() > 0
    counts, truth, batch, is_query = (
        counts[nonempty],
        truth[nonempty],
        batch[nonempty],
        is_query[nonempty],
    )
    ref_counts = pd.Series(truth[~is_query]).value_counts()
    kept = sorted(ref_counts.index[ref_counts >= 2])
    hidden = sorted(ref_counts.index[ref_counts < 2])
    labels = np.where(~is_query & np.isin(truth, kept), truth, UNKNOWN)
    obs = pd.DataFrame(
        {
            "truth": truth,
            "labels": pd.Categorical(labels, categories=[*kept, UNKNOWN]),
            "batch": pd.Categorical(batch),
            "is_query": is_query,
        },
        index=[f"cell{i}" for i in range(len(truth))],
    )
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs)
    adata.var_names = np.asarray(full.var_names)[genes]
    query_truth = truth[is_query]
    info = {
        "dataset": stem,
        "query": query_batch or "random half (seed 0)",
        "n_reference": int((~is_query).sum()),
        "n_query": int(is_query.sum()),
        "n_genes": int(adata.n_vars),
        "n_genes_file": int(full.n_vars),
        "n_empty_dropped": int((~nonempty).sum()),
        "reference_labels": kept,
        "labels_hidden_too_few": hidden,
        "n_query_unseen_type": int((~np.isin(query_truth, kept)).sum()),
        "query_unseen_types": sorted(set(query_truth) - set(kept)),
        "n_batches": len(set(batch)),
    }
    return adata, info


# ----------------------------------------------------------------------------- metrics
def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray) -> float:
    """``sum_b n_b / n |acc_b - conf_b|`` over ``ECE_BINS`` equal-width bins of [0, 1]."""
    bins = np.minimum((confidence * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    ece = 0.0
    for b in range(ECE_BINS):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def scores(truth: np.ndarray, proba: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and ECE of ``argmax proba`` against ``truth``."""
    from sklearn.metrics import f1_score

    pred = np.asarray(labels, dtype=object)[proba.argmax(axis=1)]
    correct = pred == truth
    return {
        "accuracy": float(correct.mean()),
        "macro_f1": float(f1_score(truth, pred, average="macro")),
        "ece": expected_calibration_error(proba.max(axis=1), correct),
        "mean_confidence": float(proba.max(axis=1).mean()),
    }


def knn_row(ref_latent, ref_labels, query_latent, truth) -> dict[str, Any]:
    """15-NN majority vote of the reference cells in a latent space."""
    from sklearn.neighbors import KNeighborsClassifier

    t0 = time.perf_counter()
    knn = KNeighborsClassifier(n_neighbors=K).fit(ref_latent, ref_labels)
    proba = knn.predict_proba(query_latent)
    seconds = time.perf_counter() - t0
    return {**scores(truth, proba, [str(c) for c in knn.classes_]), "map_s": seconds}


def logreg_row(adata, truth) -> dict[str, Any]:
    """LogisticRegression(max_iter=1000) on log1p(CP10k) of the labelled reference cells."""
    from sklearn.linear_model import LogisticRegression

    is_query = adata.obs["is_query"].to_numpy()
    labels = adata.obs["labels"].astype(str).to_numpy()
    train = ~is_query & (labels != UNKNOWN)
    X = log_normalized(adata.X)
    t0 = time.perf_counter()
    clf = LogisticRegression(max_iter=1000).fit(X[train], labels[train])
    t1 = time.perf_counter()
    proba = clf.predict_proba(X[is_query])
    t2 = time.perf_counter()
    row = scores(truth, proba, [str(c) for c in clf.classes_])
    return {**row, "fit_s": t1 - t0, "map_s": t2 - t1, "n_iter": int(np.max(clf.n_iter_))}


# ----------------------------------------------------------------------------- workers
def run_worker_cached(tool: str, job: dict[str, Any], stem: Path, threads: int):
    """Run the worker for ``tool`` unless ``stem`` already holds this very job's output."""
    job_path, out_json = stem.with_suffix(".job.json"), stem.with_suffix(".json")
    if job_path.exists() and out_json.exists() and json.loads(job_path.read_text()) == job:
        print(f"reusing {out_json}", flush=True)
    else:
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
        print(done.stdout.strip(), flush=True)
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-30:])
            raise RuntimeError(f"{tool} worker failed:\n{tail}")
    meta = json.loads(out_json.read_text())
    arrays = {}
    if stem.with_suffix(".npz").exists():
        with np.load(stem.with_suffix(".npz")) as stored:
            arrays = {k: stored[k] for k in stored.files}
    return meta, arrays


def use_committed_scvae(commit: str) -> tuple[Path, str]:
    """Export ``scvae/`` of ``commit`` (``git archive``) and import scvae from there.

    The work tree may hold other people's unfinished edits; only committed code is measured.
    The export goes first on ``sys.path`` (this process) and ``PYTHONPATH`` (the scvae worker).
    """
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


# -------------------------------------------------------------------------------- split
def prepare_split(name: str, args, what: str = "") -> tuple[Any, dict, dict[str, Any], str]:
    """Make the split, write its h5ad for the workers: ``(adata, info, job, tag)``.

    ``job`` holds the worker settings every task shares (``tasks``: joint and reference);
    ``tag`` marks the file names of a ``--quick`` run.
    """
    adata, info = make_split(name, args.quick)
    print(f"\n== {name}{what}: {json.dumps(info)}", flush=True)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    tag = "_quick" if args.quick else ""
    h5ad = WORK_DIR / f"{name}{tag}.h5ad"
    adata.write_h5ad(h5ad)
    job = {
        "h5ad": str(h5ad),
        "batch_key": "batch",
        "seed": 0,
        "threads": args.threads,
        "max_epochs": args.max_epochs,
        "scanvi_epochs": args.scanvi_epochs,
        "n_samples_per_label": 100,
        "query_epochs": args.query_epochs,
        "tasks": ["joint", "reference"],
    }
    return adata, info, job, tag


def run_split(name: str, args, scvae_commit: str, large: bool) -> dict[str, Any]:
    """Every method on one split: the two workers, then logistic regression and 15-NN."""
    adata, info, job, tag = prepare_split(name, args)
    jobs = {
        "scvae": {
            **job,
            "tasks": ["joint", "reference", *(["large"] if large else [])],
            "n_large": args.n_large,
            "scvae_commit": scvae_commit,
        },
        "scvi": job,
    }
    stems = {t: WORK_DIR / f"{name}{tag}_{t}" for t in ("scvae", "scvi")}
    if args.parallel:
        with ThreadPoolExecutor(2) as pool:
            futures = {
                t: pool.submit(run_worker_cached, t, jobs[t], stems[t], args.threads)
                for t in ("scvae", "scvi")
            }
            fits = {t: f.result() for t, f in futures.items()}
    else:
        fits = {t: run_worker_cached(t, jobs[t], stems[t], args.threads) for t in ("scvi", "scvae")}
    crashed = [
        task
        for task, t in fits["scvi"][0]["tasks"].items()
        if "more than 1 value per channel" in t.get("error", "")
    ]
    if crashed and args.scanvi_workaround:  # SCANVI's stage again, one cell fewer a minibatch
        job_bs = {**job, "tasks": crashed, "scanvi_batch_size": args.scanvi_workaround}
        stem = WORK_DIR / f"{name}{tag}_scvi_bs{args.scanvi_workaround}"
        fits["scvi_workaround"] = run_worker_cached("scvi", job_bs, stem, args.threads)
    is_query = adata.obs["is_query"].to_numpy()
    truth = adata.obs["truth"].to_numpy()[is_query]
    ref_labels = adata.obs["labels"].astype(str).to_numpy()[~is_query]
    rows: dict[str, dict[str, Any]] = {}
    names = {
        ("scvae", "joint"): "scvae SSVAE joint",
        ("scvae", "reference"): "scvae SSVAE + map_query",
        ("scvi", "joint"): "scANVI joint",
        ("scvi", "reference"): "scArches (scANVI)",
    }
    if "scvi_workaround" in fits:
        bs = args.scanvi_workaround
        for task in fits["scvi_workaround"][0]["tasks"]:
            what = "scANVI joint" if task == "joint" else "scArches (scANVI)"
            names[("scvi_workaround", task)] = f"{what}, SCANVI batch_size={bs}"
    for (tool, task), method in names.items():
        meta, arrays = fits[tool]
        t = meta["tasks"].get(task, {"error": "not run"})
        facts = {k: v for k, v in t.items() if k not in ("labels",)}
        if "error" in t:
            rows[method] = facts
            continue
        rows[method] = {**scores(truth, arrays[f"{task}_proba"], t["labels"]), **facts}
    rows["logistic regression"] = logreg_row(adata, truth)
    scvae_meta, scvae_arrays = fits["scvae"]
    known = ref_labels != UNKNOWN
    for task, method in (("joint", METHODS[5]), ("reference", METHODS[6])):
        if "error" in scvae_meta["tasks"].get(task, {"error": ""}):
            rows[method] = {"error": f"no latent: {scvae_meta['tasks'].get(task, {}).get('error')}"}
            continue
        ref_latent = scvae_arrays[f"{task}_latent_ref"][known]
        rows[method] = knn_row(
            ref_latent, ref_labels[known], scvae_arrays[f"{task}_latent_query"], truth
        )
        rows[method]["fit_s"] = scvae_meta["tasks"][task]["fit_s"]
        rows[method]["latent_from"] = names[("scvae", task)]
    out = {
        "name": name,
        "data": info,
        "rows": rows,
        "scvae_versions": scvae_meta.get("versions"),
        "scvi_versions": fits["scvi"][0].get("versions"),
    }
    if large:
        out["large_query"] = scvae_meta["tasks"].get("large")
        repeats = []
        for i in range(1, args.large_repeats + 1):  # the reference refitted, the 10k mapped again
            again = {**jobs["scvae"], "tasks": ["reference", "large"], "repeat": i}
            meta, _ = run_worker_cached("scvae", again, stems["scvae"].with_name(
                f"{stems['scvae'].name}_large{i}"), args.threads)  # fmt: skip
            repeats.append(meta["tasks"].get("large"))
        out["large_query_repeats"] = repeats
    print_table(out)
    return out


def print_table(split: dict[str, Any]) -> None:
    """The split's table on stdout."""
    print(f"\n{split['name']} ({split['data']['n_reference']} reference, "
          f"{split['data']['n_query']} query cells)")  # fmt: skip
    print(f"  {'method':28s} {'acc':>6s} {'mF1':>6s} {'ECE':>6s} {'fit s':>7s} {'map s':>7s}")
    for method, r in split["rows"].items():
        if "error" in r:
            print(f"  {method:28s} ERROR {r['error'][:120]}")
            continue
        fit = f"{r['fit_s']:7.1f}" if r.get("fit_s") is not None else "      -"
        print(
            f"  {method:28s} {r['accuracy']:6.3f} {r['macro_f1']:6.3f} {r['ece']:6.3f} "
            f"{fit} {r['map_s']:7.2f}"
        )
    if split.get("large_query"):
        print(f"  10k query: {json.dumps(split['large_query'])}")


def run_large_only(args, scvae_commit: str) -> dict[str, Any]:
    """The 10k-cell mapping alone: ``--large-repeats`` scvae workers, each a process of its own
    that fits the split's SSVAE reference and then maps the resampled query."""
    name = args.large_split
    _, info, job, tag = prepare_split(name, args, f" (the {args.n_large:,}-cell mapping only)")
    job = {
        **job,
        "tasks": ["reference", "large"],
        "n_large": args.n_large,
        "scvae_commit": scvae_commit,
    }
    runs = []
    for i in range(max(1, args.large_repeats)):
        stem = WORK_DIR / f"{name}{tag}_scvae_large_only{i}"
        meta, _ = run_worker_cached("scvae", {**job, "repeat": i}, stem, args.threads)
        runs.append(meta["tasks"].get("large", {"error": "not run"}))
        print(f"run {i}: {json.dumps(runs[-1])}", flush=True)
    return {"name": name, "data": info, "large_query": runs[0], "large_query_repeats": runs[1:]}


# --------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    """Run the splits, print their tables, write ``results/<name>.json``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--splits", nargs="+", choices=list(SPLITS), default=list(DEFAULT_SPLITS))
    p.add_argument("--max-epochs", type=int, default=100, help="SSVAE and SCVI epochs")
    p.add_argument("--scanvi-epochs", type=int, default=20)
    p.add_argument("--query-epochs", type=int, default=100, help="map_query / scArches epochs")
    p.add_argument("--n-large", type=int, default=10_000, help="0: skip the 10k-cell mapping")
    p.add_argument(
        "--large-repeats", type=int, default=1, help="times the 10k mapping is run again alone"
    )
    p.add_argument(
        "--large-split", default="2source_query_zheng", help="whose reference maps the 10k query"
    )
    p.add_argument(
        "--scanvi-workaround",
        type=int,
        default=127,
        help="when SCANVI crashes on a one-cell minibatch, train it again with this batch_size "
        "(0: don't)",
    )
    p.add_argument(
        "--large-only",
        action="store_true",
        help="only the 10k mapping of --large-split, in --large-repeats processes of its own "
        "(each fits the reference, then maps)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parallel", action="store_true", help="run the two tools' workers at once")
    p.add_argument("--quick", action="store_true", help="tiny sizes and 2 epochs: a smoke test")
    p.add_argument("--name", default="label_transfer")
    p.add_argument("--scvae-commit", default="HEAD")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if args.quick:
        args.max_epochs = args.scanvi_epochs = args.query_epochs = 2
        args.n_large = min(args.n_large, 1000)
    source, scvae_commit = use_committed_scvae(args.scvae_commit)
    print(f"scvae from {source} (commit {scvae_commit[:10]})", flush=True)
    load_before = load_average()
    splits = []
    if args.large_only:
        splits.append(run_large_only(args, scvae_commit[:10]))
    for name in [] if args.large_only else args.splits:
        large = bool(args.n_large) and name == args.large_split
        splits.append(run_split(name, args, scvae_commit[:10], large))
    scvi_versions = next((s["scvi_versions"] for s in splits if s.get("scvi_versions")), None)
    payload = {
        "commit": git_commit(),
        "scvae_commit": scvae_commit[:10],
        "settings": {
            "max_epochs": args.max_epochs,
            "scanvi_epochs": args.scanvi_epochs,
            "n_samples_per_label": 100,
            "query_epochs": args.query_epochs,
            "scanvi_workaround": args.scanvi_workaround,
            "threads": args.threads,
            "parallel": args.parallel,
            "n_top_genes": N_TOP_GENES,
            "k": K,
            "ece_bins": ECE_BINS,
            "n_large": args.n_large,
            "large_split": args.large_split,
            "large_repeats": args.large_repeats,
            "large_only": args.large_only,
            "seed": 0,
            "quick": args.quick,
        },
        "load_before": load_before,
        "load_after": load_average(),
        "scvi_versions": scvi_versions,
        "sklearn_versions": versions(("scikit-learn", "scanpy", "numpy")),
        "splits": splits,
    }
    write_result(args.name, payload, script="label_transfer", argv=argv)


if __name__ == "__main__":
    main()
