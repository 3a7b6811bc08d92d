"""Held-out log p(x): scvae's ZINBVAE against scvi-tools' SCVI on the same cells.

What it measures
----------------
pbmc3k (2,638 cells, raw counts) is split once, seeded, into 90 % train and 10 %
held-out cells. Both implementations of the same model (scVI: ZINB likelihood,
gene-wise dispersion, latent LogNormal library with the per-batch empirical prior
from the train cells, batch covariate; 10 latent dims, 1 x 128 hidden layer,
dropout 0.1) are trained on the train cells only, with the same epochs, minibatch
size and learning rate, no validation split and no early stopping. Each then scores
the held-out cells with

* the per-cell ELBO (nats), and
* the per-cell importance-weighted (IWAE) estimate of log p(x) with K posterior
  samples (nats; a lower bound that tightens with K),

and the script prints a markdown table (model, epochs, KL warm-up, fit time,
cells/s, held-out mean ELBO per cell, held-out mean log p(x) per cell, and the
difference scvae - scVI with its paired standard error over cells). Higher is
better. Nothing is asserted.

Each library keeps its own default KL warm-up: scvi-tools anneals the z-KL
weight over 400 epochs (so after 100 epochs it has only reached 0.25), scvae over
the first quarter of the optimizer steps. ``--matched-warmup`` adds a second scVI
row warmed up over the first quarter of the epochs, like scvae.

scvi-tools lives only in its own virtual environment, ``benchmarks/.venv-scvi``
(gitignored), which this script creates when it is missing (``python -m venv``,
then ``pip install torch==2.13.0`` and ``pip install scvi-tools==1.4.2``, the newest
scvi-tools for Python 3.11: 1.4.3 and later need Python >= 3.12, and the CPU torch
2.13 wheel is for 3.11). scVI is trained by ``benchmarks/scvi_reference.py`` in a
subprocess. Nothing else is downloaded.

Run from the repository root, in the environment where scvae's dependencies are
installed::

    /work/venv/bin/python benchmarks/heldout_vs_scvi.py

(defaults: ``--max-epochs 100 --n-samples 100 --seed 0``, all 16,579 genes; add
``--n-top-genes 2000`` to first subset to highly variable genes chosen on the train
cells). The table is also written to ``benchmarks/results/heldout_vs_scvi.md``; the
split, the per-cell values (``*.npz``) and a copy of the report go to
``benchmarks/results/genes-<all|topN>_epochs-<E>_K-<K>_seed-<seed>/``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_H5AD = REPO_ROOT / "data" / "pbmc3k_raw_annotated.h5ad"
DEFAULT_VENV = BENCH_DIR / ".venv-scvi"
RESULTS_DIR = BENCH_DIR / "results"
REFERENCE_SCRIPT = BENCH_DIR / "scvi_reference.py"
TORCH_SPEC = "torch==2.13.0"
SCVI_SPEC = "scvi-tools==1.4.2"


@dataclass
class RunResult:
    """One model's fit and held-out scores.

    Attributes
    ----------
    name
        Row label.
    epochs
        Epochs trained.
    kl_warmup
        Human-readable KL warm-up schedule.
    fit_time_s
        Wall time of the fit call.
    n_train
        Train cells.
    elbo
        Per-cell held-out ELBO.
    marginal_ll
        Per-cell held-out IWAE estimate of log p(x).
    score_time_s
        Wall time of the held-out ELBO + log p(x) scoring.
    extra
        Anything else worth keeping (versions, checks).
    """

    name: str
    epochs: int
    kl_warmup: str
    fit_time_s: float
    n_train: int
    elbo: np.ndarray
    marginal_ll: np.ndarray
    score_time_s: float
    extra: dict = field(default_factory=dict)

    @property
    def cells_per_s(self) -> float:
        """Training throughput: cell passes per second of fit wall time."""
        return self.n_train * self.epochs / self.fit_time_s


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
    p.add_argument("--h5ad", type=Path, default=DEFAULT_H5AD)
    p.add_argument("--batch-key", default="batch")
    p.add_argument(
        "--group-key", default="cell_type", help="obs column for a per-group breakdown (if present)"
    )
    p.add_argument("--n-top-genes", type=int, default=None, help="HVG subset (train cells)")
    p.add_argument("--heldout-fraction", type=float, default=0.1)
    p.add_argument("--n-latent", type=int, default=10)
    p.add_argument("--n-hidden", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=1)
    p.add_argument("--dropout-rate", type=float, default=0.1)
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-samples", type=int, default=100, help="importance samples K")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--matched-warmup",
        action="store_true",
        help="also train scVI with its KL warm-up over the first quarter of the epochs",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads for both (default: torch's)"
    )
    p.add_argument("--models", choices=["both", "scvae", "scvi"], default="both")
    p.add_argument("--scvi-venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--out-md", type=Path, default=RESULTS_DIR / "heldout_vs_scvi.md")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------ data
def prepare_data(args: argparse.Namespace) -> tuple[ad.AnnData, np.ndarray, np.ndarray, dict]:
    """Load the counts, optionally subset genes, drop empty cells, split.

    Parameters
    ----------
    args
        Options (``h5ad``, ``n_top_genes``, ``heldout_fraction``, ``seed``, ``batch_key``).

    Returns
    -------
    tuple
        ``(adata, train_idx, heldout_idx, info)``: a lean AnnData (counts in CSR
        float32 ``X``, the batch column), the split, and a description.
    """
    from baselines import highly_variable, split_cells  # the split and genes every benchmark uses

    full = ad.read_h5ad(args.h5ad)
    keep = [k for k in (args.batch_key, args.group_key) if k in full.obs]
    obs = full.obs[list(dict.fromkeys(keep))].copy()
    adata = ad.AnnData(X=sp.csr_matrix(full.X, dtype=np.float32), obs=obs, var=full.var[[]])
    train_idx, heldout_idx = split_cells(adata.n_obs, args.heldout_fraction, args.seed)
    info = {"n_cells_file": int(full.n_obs), "n_genes_file": int(full.n_vars)}
    if args.n_top_genes:
        mask = highly_variable(adata[train_idx].X, args.n_top_genes)
        adata = adata[:, mask].copy()
        nonempty = np.asarray(adata.X.sum(axis=1)).ravel() > 0
        info["dropped_empty_cells"] = int((~nonempty).sum())
        position = np.cumsum(nonempty) - 1  # old row -> new row
        train_idx = position[train_idx[nonempty[train_idx]]]
        heldout_idx = position[heldout_idx[nonempty[heldout_idx]]]
        adata = adata[nonempty].copy()
    info.update(
        n_genes=int(adata.n_vars), n_train=int(train_idx.size), n_heldout=int(heldout_idx.size)
    )
    return adata, train_idx, heldout_idx, info


# ----------------------------------------------------------------------------------- scvae
def import_scvae():  # -> module
    """Import scvae, from the installed package or else from this source tree.

    Returns
    -------
    module
        The ``scvae`` package.
    """
    try:
        import scvae

        scvae.ZINBVAE  # noqa: B018  (a namespace package from the cwd has no ZINBVAE)
    except (ImportError, AttributeError):
        sys.modules.pop("scvae", None)
        sys.path.insert(0, str(REPO_ROOT))
        import scvae
    return scvae


def run_scvae(
    adata: ad.AnnData, train_idx: np.ndarray, heldout_idx: np.ndarray, args: argparse.Namespace
) -> RunResult:
    """Train scvae's ZINBVAE on the train cells and score the held-out cells.

    Parameters
    ----------
    adata
        All cells (counts in ``X``).
    train_idx, heldout_idx
        The split.
    args
        Options.

    Returns
    -------
    RunResult
        Fit time, epochs and per-cell held-out scores.
    """
    scvae = import_scvae()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    adata_train, adata_heldout = adata[train_idx].copy(), adata[heldout_idx].copy()
    batch_key = args.batch_key if args.batch_key in adata.obs else None
    model = scvae.ZINBVAE(
        adata_train,
        layer=None,
        batch_key=batch_key,
        n_latent=args.n_latent,
        n_hidden=args.n_hidden,
        n_layers=args.n_layers,
        dropout_rate=args.dropout_rate,
        dispersion="gene",
        library="latent",
    )
    fit_kwargs = {
        "max_epochs": args.max_epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "early_stopping": False,
        "seed": args.seed,
        "train_size": 1.0,
    }
    optional = {"accelerator": "cpu", "progress_bar": False}
    accepted = inspect.signature(model.fit).parameters
    fit_kwargs.update({k: v for k, v in optional.items() if k in accepted})
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    model.fit(**fit_kwargs)
    fit_time = time.perf_counter() - t0
    load_after = os.getloadavg()[0]
    t0 = time.perf_counter()
    elbo = np.asarray(model.elbo(adata_heldout), dtype=np.float64)
    mll = np.asarray(
        model.marginal_log_likelihood(adata_heldout, n_samples=args.n_samples), dtype=np.float64
    )
    score_time = time.perf_counter() - t0
    latent = np.asarray(model.get_latent(adata_heldout))
    fit_params = getattr(model, "fit_params", {}) or {}
    warmup_steps = fit_params.get("n_steps_kl_warmup")
    steps = model.history["step"] if "step" in model.history else None
    steps_per_epoch = (
        float(steps.iloc[0])
        if steps is not None and len(steps)
        else len(adata_train) / args.batch_size
    )
    warmup = (
        f"{warmup_steps} steps (~{warmup_steps / steps_per_epoch:.1f} epochs), z and l"
        if warmup_steps
        else "n/a"
    )
    history = {
        f"history_{col}": model.history[col].to_numpy(dtype=np.float64)
        for col in model.history.columns
        if np.issubdtype(model.history[col].dtype, np.number)
    }
    np.savez(
        args.run_dir / "scvae_result.npz",
        elbo=elbo,
        marginal_ll=mll,
        latent=latent,
        fit_time_s=fit_time,
        **history,
    )
    return RunResult(
        name=f"scvae {scvae.__version__} ZINBVAE",
        epochs=len(model.history) or args.max_epochs,
        kl_warmup=warmup,
        fit_time_s=fit_time,
        n_train=adata_train.n_obs,
        elbo=elbo,
        marginal_ll=mll,
        score_time_s=score_time,
        extra={
            "load_avg_1min_before_after_fit": [round(load_before, 2), round(load_after, 2)],
            "fit_params": {k: str(v) for k, v in fit_params.items()},
        },
    )


# ------------------------------------------------------------------------------------ scvi
def venv_python(venv: Path) -> Path:
    """Path of the interpreter inside a virtual environment.

    Parameters
    ----------
    venv
        The environment's directory.

    Returns
    -------
    Path
        ``<venv>/bin/python``.
    """
    return venv / "bin" / "python"


def ensure_scvi_venv(venv: Path) -> Path:
    """Create the scvi-tools environment unless it already imports scvi.

    Parameters
    ----------
    venv
        Where the environment lives (``benchmarks/.venv-scvi``).

    Returns
    -------
    Path
        Its Python interpreter.
    """
    python = venv_python(venv)
    probe = [str(python), "-c", "import scvi"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating {venv} with {SCVI_SPEC} (CPU {TORCH_SPEC}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, TORCH_SPEC], check=True)  # the local CPU wheel, first
    subprocess.run([*pip, SCVI_SPEC, TORCH_SPEC], check=True)  # torch pinned: no CUDA wheels
    return python


def run_scvi(
    python: Path, h5ad: Path, split: Path, args: argparse.Namespace, kl_warmup: int | None
) -> RunResult:
    """Train and score scVI in its own environment via ``scvi_reference.py``.

    Parameters
    ----------
    python
        Interpreter of the scvi-tools environment.
    h5ad
        Counts the split refers to.
    split
        npz with ``train_idx`` and ``heldout_idx``.
    args
        Options shared with the scvae run.
    kl_warmup
        ``n_epochs_kl_warmup`` for scVI; ``None`` keeps scvi-tools' default.

    Returns
    -------
    RunResult
        Fit time, epochs and per-cell held-out scores.
    """
    tag = "default" if kl_warmup is None else f"warmup{kl_warmup}"
    out = args.run_dir / f"scvi_result_{tag}.npz"
    cmd = [
        str(python), str(REFERENCE_SCRIPT), "--h5ad", str(h5ad), "--split", str(split),
        "--batch-key", args.batch_key, "--n-latent", str(args.n_latent),
        "--n-hidden", str(args.n_hidden), "--n-layers", str(args.n_layers),
        "--dropout-rate", str(args.dropout_rate), "--max-epochs", str(args.max_epochs),
        "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--n-samples", str(args.n_samples), "--seed", str(args.seed), "--out", str(out),
    ]  # fmt: skip
    if kl_warmup is not None:
        cmd += ["--n-epochs-kl-warmup", str(kl_warmup)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    load_before = os.getloadavg()[0]
    subprocess.run(cmd, check=True, env=env)
    load_after = os.getloadavg()[0]
    res = np.load(out)
    meta = json.loads(str(res["meta_json"]))
    warm = meta["n_epochs_kl_warmup"]
    return RunResult(
        name=f"scvi-tools {meta['versions']['scvi-tools']} SCVI",
        epochs=int(meta["epochs_run"]),
        kl_warmup=f"{warm} epochs, z only" if warm else "none",
        fit_time_s=float(res["fit_time_s"]),
        n_train=int(meta["n_train"]),
        elbo=res["elbo"],
        marginal_ll=res["marginal_ll"],
        score_time_s=float(res["elbo_time_s"]) + float(res["marginal_ll_time_s"]),
        extra={
            "load_avg_1min_before_after_run": [round(load_before, 2), round(load_after, 2)],
            "torch_threads": meta["torch_threads"],
            "versions": meta["versions"],
            "marginal_ll_mean_api": float(res["marginal_ll_mean_api"]),
            "marginal_ll_check_max_abs_diff": float(res["marginal_ll_check_max_abs_diff"]),
            "n_cells_validation": meta["n_cells_validation"],
        },
    )


# ---------------------------------------------------------------------------------- report
def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the per-cell difference ``a - b``.

    Parameters
    ----------
    a, b
        Per-cell values on the same cells.

    Returns
    -------
    tuple of float
        ``(mean, standard error)``.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))


def format_table(results: list[RunResult], k: int) -> str:
    """Markdown table of the runs plus scvae - scVI difference rows.

    Parameters
    ----------
    results
        The runs; an scvae run, if any, is compared with every scVI run.
    k
        Importance samples used for log p(x).

    Returns
    -------
    str
        The table.
    """
    head = (
        "| model | epochs | KL warm-up | fit time (s) | cells/s | held-out ELBO / cell "
        f"| held-out log p(x) / cell (IWAE, K={k}) |\n"
        "|---|---:|---|---:|---:|---:|---:|\n"
    )
    rows = [
        f"| {r.name} | {r.epochs} | {r.kl_warmup} | {r.fit_time_s:.1f} | {r.cells_per_s:.0f} "
        f"| {r.elbo.mean():.2f} | {r.marginal_ll.mean():.2f} |"
        for r in results
    ]
    ours = [r for r in results if r.name.startswith("scvae")]
    for theirs in (r for r in results if not r.name.startswith("scvae")):
        if not ours:
            break
        d_elbo, se_elbo = paired_difference(ours[0].elbo, theirs.elbo)
        d_mll, se_mll = paired_difference(ours[0].marginal_ll, theirs.marginal_ll)
        rows.append(
            f"| scvae - scVI ({theirs.kl_warmup}) | | | "
            f"{ours[0].fit_time_s - theirs.fit_time_s:+.1f} | "
            f"| {d_elbo:+.2f} ± {se_elbo:.2f} | {d_mll:+.2f} ± {se_mll:.2f} |"
        )
    return head + "\n".join(rows) + "\n"


def per_cell_lines(results: list[RunResult]) -> list[str]:
    """Per-cell view of the log p(x) difference: median and share of cells scvae wins.

    Parameters
    ----------
    results
        The runs.

    Returns
    -------
    list of str
        One markdown bullet per scvae/scVI pair (empty without an scvae run).
    """
    ours = [r for r in results if r.name.startswith("scvae")]
    lines = []
    for theirs in (r for r in results if ours and not r.name.startswith("scvae")):
        d = ours[0].marginal_ll - theirs.marginal_ll
        lines.append(
            f"- per cell, log p(x) scvae - scVI ({theirs.kl_warmup}): median {np.median(d):+.2f}, "
            f"scvae higher on {np.mean(d > 0):.0%} of {d.size} held-out cells"
        )
    return [*lines, ""] if lines else []


def group_table(results: list[RunResult], groups: np.ndarray | None) -> str:
    """Mean held-out log p(x) per group (e.g. cell type) for every run.

    Parameters
    ----------
    results
        The runs.
    groups
        Group label of each held-out cell, or ``None`` for no breakdown.

    Returns
    -------
    str
        Markdown table (empty string without groups).
    """
    if groups is None or not results:
        return ""
    labels = sorted(set(groups.tolist()), key=str)
    head = "| group | cells | " + " | ".join(r.name + f" ({r.kl_warmup})" for r in results)
    lines = [head + " |", "|---|---:|" + "---:|" * len(results)]
    for label in labels:
        mask = groups == label
        means = " | ".join(f"{r.marginal_ll[mask].mean():.1f}" for r in results)
        lines.append(f"| {label} | {int(mask.sum())} | {means} |")
    return "Mean held-out log p(x) per cell, by group:\n\n" + "\n".join(lines) + "\n"


def format_report(
    results: list[RunResult], info: dict, args: argparse.Namespace, total_s: float
) -> str:
    """The markdown report: settings, table, notes.

    Parameters
    ----------
    results
        The runs.
    info
        Data description from :func:`prepare_data`.
    args
        Options.
    total_s
        Wall time of the whole benchmark.

    Returns
    -------
    str
        Markdown text.
    """
    lines = [
        "# Held-out log p(x): scvae ZINBVAE vs scvi-tools SCVI",
        "",
        f"- data: `{args.h5ad.name}`, {info['n_train']} train / {info['n_heldout']} held-out "
        f"cells (seed {args.seed}), {info['n_genes']} genes"
        + (f" (top {args.n_top_genes} HVGs of the train cells)" if args.n_top_genes else ""),
        f"- model: ZINB, dispersion gene, latent library (empirical prior), n_latent "
        f"{args.n_latent}, {args.n_layers} x {args.n_hidden} hidden, dropout {args.dropout_rate}",
        f"- training: {args.max_epochs} epochs, batch {args.batch_size}, Adam lr {args.lr}, "
        "all train cells (no validation split), no early stopping",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, CPU only; "
        f"total benchmark wall time {total_s:.0f} s",
        "- ± is the standard error of the paired per-cell difference; higher is better",
        "",
        format_table(results, args.n_samples),
    ]
    lines += per_cell_lines(results)
    lines += [group_table(results, getattr(args, "heldout_groups", None))]
    for r in results:
        timing = f"scoring (ELBO + log p(x)) {r.score_time_s:.1f} s"
        lines.append(f"- {r.name} ({r.kl_warmup}): {timing}; " + json.dumps(r.extra))
    return "\n".join(lines) + "\n"


def run_tag(args: argparse.Namespace) -> str:
    """Name of the folder under ``benchmarks/results`` that holds one configuration's files.

    Parameters
    ----------
    args
        Options.

    Returns
    -------
    str
        E.g. ``genes-all_epochs-100_K-100_seed-0``.
    """
    genes = f"top{args.n_top_genes}" if args.n_top_genes else "all"
    return f"genes-{genes}_epochs-{args.max_epochs}_K-{args.n_samples}_seed-{args.seed}"


def main(argv: list[str] | None = None) -> None:
    """Run both models on the same split and report.

    Parameters
    ----------
    argv
        Command-line arguments; ``None`` reads ``sys.argv``.
    """
    t_start = time.perf_counter()
    args = parse_args(argv)
    args.run_dir = RESULTS_DIR / run_tag(args)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    adata, train_idx, heldout_idx, info = prepare_data(args)
    print(json.dumps(info), flush=True)
    if args.group_key in adata.obs:
        args.heldout_groups = adata.obs[args.group_key].astype(str).to_numpy()[heldout_idx]
    h5ad = args.h5ad
    if args.n_top_genes:
        h5ad = args.run_dir / "counts.h5ad"
        adata.write_h5ad(h5ad)
    split = args.run_dir / "split.npz"
    np.savez(split, train_idx=train_idx, heldout_idx=heldout_idx)
    results: list[RunResult] = []
    if args.models in ("both", "scvae"):
        results.append(run_scvae(adata, train_idx, heldout_idx, args))
        print(format_table(results, args.n_samples), flush=True)
    if args.models in ("both", "scvi"):
        python = ensure_scvi_venv(args.scvi_venv)
        warmups = [None] + ([max(1, args.max_epochs // 4)] if args.matched_warmup else [])
        for warmup in warmups:
            results.append(run_scvi(python, h5ad, split, args, warmup))
    report = format_report(results, info, args, time.perf_counter() - t_start)
    args.out_md.parent.mkdir(parents=True, exist_ok=True)
    args.out_md.write_text(report)
    (args.run_dir / "report.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
