"""Peak memory at atlas size: scvae's ZINBVAE, as committed before and after a change, against
scvi-tools' SCVI, side by side in one run.

For each gene set (``--genes``: all 16,579 PBMC 3k genes, or the N most highly variable) and
size (``--sizes``: real cells resampled with binomial thinning, ``_common.resample_cells``, as
in ``speed.py``) the counts are written to an h5ad once. Each fit then runs in a process of its
own (this script with ``--worker``) with ``speed.py``'s equal settings (ZINB, gene dispersion,
latent library, 10 latent dimensions, one hidden layer of 128, dropout 0.1, batch size 128,
learning rate 1e-3, every cell trains, one torch thread): it reads the h5ad, builds the model
(scvi-tools: ``setup_anndata`` too), trains ``--steps`` optimizer steps (both tools stopped by
the same Lightning callback; the peak comes from reading and setting up the counts, not from
the length of the fit), then embeds every cell (``get_latent`` / ``get_latent_representation``).
After each stage the worker records its resident memory (``VmRSS``) and its peak within the
stage (``VmHWM``, reset between stages through ``/proc/self/clear_refs``). The reference line
is the size of the counts themselves: the bytes of the CSR's data, indices and indptr.

scvae is imported from a ``git archive`` export of ``scvae/`` at ``--before`` (default
HEAD~1) and at ``--after`` (default HEAD), so that nobody's unfinished edits are measured.
scvi-tools lives in ``benchmarks/.venv-scvi`` (created when missing). Run from the repository
root::

    python benchmarks/memory.py --before 9d52a00~1 --after 9d52a00   # 300k cells, all genes, 2,000

Results go to ``benchmarks/results/memory.json``; ``render.py`` makes the docs table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

STAGES = ("imports", "read", "setup", "fit", "latent")
SAME = {"n_latent": 10, "n_hidden": 128, "n_layers": 1, "dropout_rate": 0.1}
BATCH_SIZE, LR = 128, 1e-3


# ----------------------------------------------------------------------------------- worker
def _memory() -> tuple[float, float]:
    """``(VmRSS, VmHWM)`` of this process in GiB."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":")
            found[key] = int(value.split()[0]) / 2**20  # kB -> GiB
    return found["VmRSS"], found["VmHWM"]


class _Stages:
    """Resident memory after each stage and the peak within it (``VmHWM`` reset after each)."""

    def __init__(self) -> None:
        self.rss: dict[str, float] = {}
        self.peak: dict[str, float] = {}

    def mark(self, stage: str) -> None:
        self.rss[stage], self.peak[stage] = _memory()
        Path("/proc/self/clear_refs").write_text("5")  # the peak restarts from the current RSS


def _stop_after(steps: int):  # -> lightning Callback
    """A Lightning callback that stops the fit after ``steps`` training steps and times them."""
    import lightning.pytorch as pl

    class StopAfter(pl.Callback):
        def __init__(self) -> None:
            self.steps = 0
            self.start: float | None = None
            self.seconds = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self.start is None:
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.steps += 1
            if self.steps >= steps:
                self.seconds = time.perf_counter() - (self.start or 0.0)
                trainer.should_stop = True

    return StopAfter()


def worker(tool: str, h5ad: Path, steps: int) -> dict[str, Any]:
    """One fit in this process: read, set up, train ``steps`` steps, embed; memory per stage.

    Parameters
    ----------
    tool
        ``"scvae"`` (whichever scvae is importable: the driver puts an export first on
        ``PYTHONPATH``) or ``"scvi"`` (inside the scvi-tools environment).
    h5ad
        The counts.
    steps
        Training steps.

    Returns
    -------
    dict
        ``tool``, ``version``, ``counts_gb``, ``rss_gb`` and ``peak_gb`` per stage
        (:data:`STAGES`), ``fit_peak_gb`` (the process's peak up to the end of the fit, what
        ``speed.py`` reports), ``peak_gb_with_latent``, ``steps``, ``cells_per_s``.
    """
    stages = _Stages()
    import anndata as ad
    import torch

    torch.set_num_threads(1)
    if tool == "scvae":
        import scvae as package
    else:
        import scvi as package

        package.settings.seed = 0
    stages.mark("imports")
    adata = ad.read_h5ad(h5ad)
    X = adata.X
    counts_gb = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2**30
    stages.mark("read")
    stop = _stop_after(steps)
    if tool == "scvae":
        model = package.ZINBVAE(adata, dispersion="gene", library="latent", **SAME)
        stages.mark("setup")
        model.fit(
            max_epochs=1,
            batch_size=BATCH_SIZE,
            lr=LR,
            train_size=1.0,
            early_stopping=False,
            progress_bar=False,
            seed=0,
            callbacks=[stop],
        )
        stages.mark("fit")
        model.get_latent(adata)
    else:
        package.model.SCVI.setup_anndata(adata)
        model = package.model.SCVI(
            adata,
            dispersion="gene",
            gene_likelihood="zinb",
            use_observed_lib_size=False,
            latent_distribution="normal",
            **SAME,
        )
        stages.mark("setup")
        model.train(
            max_epochs=1,
            accelerator="cpu",
            devices=1,
            train_size=1.0,
            validation_size=None,
            batch_size=BATCH_SIZE,
            early_stopping=False,
            plan_kwargs={"lr": LR},
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[stop],
        )
        stages.mark("fit")
        model.get_latent_representation(adata)
    stages.mark("latent")
    return {
        "tool": f"{'scvae' if tool == 'scvae' else 'scvi-tools'} {package.__version__}",
        "source": str(Path(package.__file__).parent),
        "counts_gb": counts_gb,
        "rss_gb": stages.rss,
        "peak_gb": stages.peak,
        "fit_peak_gb": max(stages.peak[s] for s in STAGES[:-1]),
        "peak_gb_with_latent": max(stages.peak.values()),
        "steps": stop.steps,
        "cells_per_s": stop.steps * BATCH_SIZE / stop.seconds if stop.seconds else None,
    }


# ----------------------------------------------------------------------------------- driver
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
    p.add_argument("--sizes", type=int, nargs="+", default=[300000])
    p.add_argument("--genes", nargs="+", default=["all", "2000"], help="'all' or a number of HVGs")
    p.add_argument("--steps", type=int, default=300, help="training steps of each fit")
    p.add_argument("--before", default="HEAD~1", help="scvae's commit before the change")
    p.add_argument("--after", default="HEAD", help="scvae's commit after the change")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampled cells")
    p.add_argument("--name", default="memory", help="result file results/<name>.json")
    p.add_argument("--worker", choices=["scvae", "scvi"], help=argparse.SUPPRESS)
    p.add_argument("--h5ad", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def export_scvae(commit: str, where: Path) -> tuple[Path, str]:
    """``scvae/`` of ``commit`` exported (``git archive``) under ``where``; and the full hash."""
    from _common import REPO_ROOT

    git = ["git", "-C", str(REPO_ROOT)]
    full = subprocess.run(
        [*git, "rev-parse", commit], capture_output=True, text=True, check=True
    ).stdout.strip()
    folder = where / f"src-{full[:10]}"
    archive = subprocess.run(
        [*git, "archive", "--format=tar", full, "scvae"], capture_output=True, check=True
    ).stdout
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder, full


def run_fit(tool: str, h5ad: Path, steps: int, out: Path, source: Path | None) -> dict[str, Any]:
    """Run :func:`worker` in a fresh process (scvae from ``source``; scvi in its environment)."""
    from _common import SCVI_VENV, ensure_scvi_venv, thread_env

    python = str(ensure_scvi_venv(SCVI_VENV)) if tool == "scvi" else sys.executable
    env = {**thread_env(1), "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("PYTHONPATH", None)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    command = [python, __file__, "--worker", tool, "--h5ad", str(h5ad), "--steps", str(steps)]
    command += ["--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=out.parent)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-20:])
        raise RuntimeError(f"{tool} worker failed:\n{tail}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    """Worker (``--worker``), or the driver: every gene set and size, three fits each."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        args.out.write_text(json.dumps(worker(args.worker, args.h5ad, args.steps), indent=1))
        return
    from _common import load_average, pbmc3k_genes, resample_cells, write_result

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        before, before_full = export_scvae(args.before, work / "before")
        after, after_full = export_scvae(args.after, work / "after")
        fits = {"scvae_before": ("scvae", before), "scvae_after": ("scvae", after)}
        fits["scvi"] = ("scvi", None)
        for genes in args.genes:
            base = pbmc3k_genes(None if genes == "all" else int(genes))
            for n_cells in args.sizes:
                adata = resample_cells(base, n_cells, args.seed)
                path = work / f"cells_{genes}_{n_cells}.h5ad"
                adata.write_h5ad(path)
                row: dict[str, Any] = {
                    "genes": int(adata.n_vars),
                    "cells": int(adata.n_obs),
                    "nnz": int(adata.X.nnz),
                    "load_before": load_average(),
                }
                del adata
                for key, (tool, source) in fits.items():
                    out = work / f"{key}_{genes}_{n_cells}.json"
                    row[key] = run_fit(tool, path, args.steps, out, source)
                    print(
                        f"genes {row['genes']}, cells {row['cells']:,}: {key} fit peak "
                        f"{row[key]['fit_peak_gb']:.2f} GiB (with get_latent "
                        f"{row[key]['peak_gb_with_latent']:.2f}; counts "
                        f"{row[key]['counts_gb']:.2f})",
                        flush=True,
                    )
                row["counts_gb"] = row["scvae_after"]["counts_gb"]
                row["load_after"] = load_average()
                rows.append(row)
                path.unlink()
    payload = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "h5ad", "out")},
        "device": "CPU only",
        "scvae_before_commit": before_full[:10],
        "scvae_after_commit": after_full[:10],
        "rows": rows,
    }
    write_result(args.name, payload, script="memory", argv=argv)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
