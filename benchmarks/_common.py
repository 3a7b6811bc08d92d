"""Shared helpers of the benchmark drivers: the only module a benchmark script imports.

Sections: paths and constants; data (the seeded split, the highly variable genes, resampled
cells); the machine (description, versions, peak memory, thread settings); the two workers
(``scvae_worker.py`` in this environment, ``scvi_worker.py`` in ``benchmarks/.venv-scvi``) and
the jobs they run; the epoch clock (a Lightning callback, public API of both tools); fit
summaries read from a fitted scvae model; result files (JSON under ``benchmarks/results/``,
the tracked records under ``benchmarks/records/``); statistics and markdown.

It imports only the standard library and numpy at the top, so that ``scvi_worker.py`` can
import it inside the scvi-tools environment; anndata, scanpy, scvae and lightning are imported
where they are needed.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

# ------------------------------------------------------------------------- paths, constants
BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DATA_DIR = REPO_ROOT.parent / "shared" / "data"
RESULTS_DIR = BENCH_DIR / "results"  # gitignored: every run writes here
RECORDS_DIR = BENCH_DIR / "records"  # tracked: the results the docs tables are rendered from
DOCS = REPO_ROOT / "docs" / "benchmarks.md"
SCVI_VENV = BENCH_DIR / ".venv-scvi"
SCVAE_WORKER = BENCH_DIR / "scvae_worker.py"
SCVI_WORKER = BENCH_DIR / "scvi_worker.py"
TORCH_SPEC = "torch==2.13.0"  # the local CPU wheel; pinned so pip fetches no CUDA build
SCVI_SPEC = "scvi-tools==1.4.2"  # the newest for Python 3.11 (1.4.3 needs Python >= 3.12)
LABEL_KEY, BATCH_KEY = "cell_type", "batch"
TARGET_SUM = 1e4
SCVAE_VERSIONS = ("scvae", "torch", "lightning", "scanpy", "anndata", "scikit-learn", "numpy")
SCVI_VERSIONS = ("scvi-tools", "torch", "lightning", "anndata", "numpy")


# ------------------------------------------------------------------------------------- data
def split_cells(n_cells: int, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of cell positions into train and held-out.

    Parameters
    ----------
    n_cells
        Number of cells.
    heldout_fraction
        Fraction held out (rounded to the nearest cell).
    seed
        Seed of the permutation.

    Returns
    -------
    tuple of np.ndarray
        Sorted ``(train_idx, heldout_idx)``.
    """
    perm = np.random.default_rng(seed).permutation(n_cells)
    n_heldout = round(heldout_fraction * n_cells)
    return np.sort(perm[n_heldout:]), np.sort(perm[:n_heldout])


def highly_variable(counts: sp.spmatrix, n_top_genes: int | None) -> np.ndarray:
    """scanpy's ``seurat``-flavour highly variable genes of a log-normalized copy.

    Parameters
    ----------
    counts
        Cells x genes raw counts.
    n_top_genes
        Genes to keep; None, 0, or at least the number of genes keeps all.

    Returns
    -------
    np.ndarray
        Boolean mask over genes.
    """
    import anndata as ad
    import scanpy as sc

    if not n_top_genes or counts.shape[1] <= n_top_genes:
        return np.ones(counts.shape[1], dtype=bool)
    tmp = ad.AnnData(X=counts.copy())
    sc.pp.normalize_total(tmp, target_sum=TARGET_SUM)
    sc.pp.log1p(tmp)
    sc.pp.highly_variable_genes(tmp, flavor="seurat", n_top_genes=n_top_genes)
    return tmp.var["highly_variable"].to_numpy()


@dataclass
class Dataset:
    """One shared data set, restricted to the chosen genes, with its seeded split.

    Attributes
    ----------
    name
        File stem.
    adata
        All kept cells: counts (CSR float32) in ``X``; ``obs`` with cell type and batch.
    train_idx, heldout_idx
        Sorted row positions of the train and held-out cells.
    n_genes_file
        Genes in the file before selection.
    n_dropped
        Cells dropped because they had no counts on the chosen genes.
    """

    name: str
    adata: ad.AnnData
    train_idx: np.ndarray
    heldout_idx: np.ndarray
    n_genes_file: int
    n_dropped: int

    @property
    def n_types(self) -> int:
        """Number of cell types present: the ``K`` of every GMM."""
        return int(self.adata.obs[LABEL_KEY].nunique())

    @property
    def n_batches(self) -> int:
        """Number of batches present."""
        return int(self.adata.obs[BATCH_KEY].nunique())

    @property
    def batch_key(self) -> str | None:
        """``"batch"`` when there is more than one batch, else None."""
        return BATCH_KEY if self.n_batches > 1 else None

    def summary(self) -> dict[str, Any]:
        """What the reports say about the data set (see :func:`describe`)."""
        return {
            "name": self.name,
            "n_cells": int(self.adata.n_obs),
            "n_train": int(self.train_idx.size),
            "n_heldout": int(self.heldout_idx.size),
            "n_genes": int(self.adata.n_vars),
            "n_genes_file": int(self.n_genes_file),
            "n_dropped": int(self.n_dropped),
            "n_batches": self.n_batches,
            "batch_key": self.batch_key,
            "n_types": self.n_types,
        }


def load_dataset(
    path: Path, n_top_genes: int | None, heldout_fraction: float, seed: int
) -> Dataset:
    """Read a file, split its cells, keep the highly variable genes of the train cells.

    Cells left without counts on the chosen genes are dropped (none on the shared data).

    Parameters
    ----------
    path
        ``.h5ad`` file with raw counts in ``X``, ``obs["cell_type"]`` and ``obs["batch"]``.
    n_top_genes, heldout_fraction, seed
        See :func:`highly_variable` and :func:`split_cells`.

    Returns
    -------
    Dataset
        Lean AnnData (counts, cell type, batch) and the split.
    """
    import anndata as ad
    import scipy.sparse as sp

    full = ad.read_h5ad(path)
    counts = sp.csr_matrix(full.X, dtype=np.float32)
    obs = full.obs[[LABEL_KEY, BATCH_KEY]].astype(str).astype("category")
    train_idx, heldout_idx = split_cells(full.n_obs, heldout_fraction, seed)
    genes = highly_variable(counts[train_idx], n_top_genes)
    counts = counts[:, genes]
    keep = np.asarray(counts.sum(axis=1)).ravel() > 0  # (N,)
    new_row = np.cumsum(keep) - 1  # old row -> new row
    adata = ad.AnnData(X=counts[keep], obs=obs[keep], var=full.var.loc[genes, []].copy())
    adata.obs = adata.obs.apply(lambda c: c.cat.remove_unused_categories())
    return Dataset(
        name=path.stem,
        adata=adata,
        train_idx=new_row[train_idx[keep[train_idx]]],
        heldout_idx=new_row[heldout_idx[keep[heldout_idx]]],
        n_genes_file=full.n_vars,
        n_dropped=int((~keep).sum()),
    )


def dataset_paths(data_dir: Path, names: Sequence[str] | None) -> list[Path]:
    """The ``*.h5ad`` files of ``data_dir``, all of them or those whose stems are ``names``.

    Raises
    ------
    SystemExit
        A name that has no file.
    """
    paths = sorted(Path(data_dir).glob("*.h5ad"))
    if names:
        paths = [p for p in paths if p.stem in set(names)]
        missing = set(names) - {p.stem for p in paths}
        if missing:
            raise SystemExit(f"not in {data_dir}: {', '.join(sorted(missing))}")
    return paths


def describe(summary: Mapping[str, Any]) -> str:
    """One line on a data set (from :meth:`Dataset.summary`): cells, genes, split, batches."""
    s = summary
    dropped = f", {s['n_dropped']} empty cells dropped" if s["n_dropped"] else ""
    genes = (
        f"{s['n_genes']:,} highly variable of {s['n_genes_file']:,} genes"
        if s["n_genes"] < s["n_genes_file"]
        else f"all {s['n_genes_file']:,} genes"
    )
    batches = f"{s['n_batches']} batch{'es' if s['n_batches'] > 1 else ''}"
    if s["batch_key"]:
        batches += f" (batch_key={s['batch_key']!r})"
    return (
        f"{s['n_cells']:,} cells ({s['n_train']:,} train / {s['n_heldout']:,} held-out"
        f"{dropped}), {genes}, {batches}, {s['n_types']} cell types (K = {s['n_types']})."
    )


def log_normalized(counts: sp.spmatrix) -> np.ndarray:
    """Dense ``log1p(counts / total * 1e4)`` per cell, as ``GaussianVAE`` and ``PPCA`` see it.

    Parameters
    ----------
    counts
        Cells x genes counts, no empty cells.

    Returns
    -------
    np.ndarray
        (n_cells, n_genes) float32.
    """
    import scipy.sparse as sp

    X = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    totals = np.asarray(X.sum(axis=1)).ravel()  # (N,)
    X.data = np.log1p(X.data * np.repeat(TARGET_SUM / totals, np.diff(X.indptr))).astype(np.float32)
    return X.toarray()


def pbmc3k_genes(n_top_genes: int | None) -> ad.AnnData:
    """PBMC 3k counts (``scvae.datasets.pbmc3k``), all genes or the top ``n_top_genes``.

    The genes are chosen on all cells (the speed benchmarks hold no cells out for scoring).

    Returns
    -------
    AnnData
        Counts in ``X``, ``obs["batch"]`` (one batch), no ``var`` columns.
    """
    import anndata as ad

    import scvae

    adata = scvae.datasets.pbmc3k()
    if n_top_genes:
        adata = adata[:, highly_variable(adata.X, n_top_genes)].copy()
    return ad.AnnData(X=adata.X, obs=adata.obs[[BATCH_KEY]], var=adata.var[[]])


def resample_cells(base: ad.AnnData, n_cells: int, seed: int) -> ad.AnnData:
    """``n_cells`` cells drawn with replacement from ``base``, each binomially thinned.

    Each drawn cell keeps each of its UMIs with a probability drawn per cell from U(0.5, 1), so
    the counts stay as sparse as real ones. Cells left empty are dropped. With ``n_cells`` at
    most ``base.n_obs`` the first ``n_cells`` real cells are returned instead.

    Parameters
    ----------
    base
        Real cells (counts in ``X``).
    n_cells
        Cells to draw.
    seed
        Seed of the draws.

    Returns
    -------
    AnnData
        CSR float32 counts, ``obs["batch"]`` all ``"pbmc3k"``.
    """
    import anndata as ad
    import scipy.sparse as sp

    if n_cells <= base.n_obs:
        return base[:n_cells].copy()
    rng = np.random.default_rng(seed)
    X = base.X.tocsr()[rng.integers(base.n_obs, size=n_cells)]  # (n, G)
    keep = rng.uniform(0.5, 1.0, size=n_cells)  # (n,) per-cell thinning probability
    X.data = rng.binomial(X.data.astype(np.int64), np.repeat(keep, np.diff(X.indptr)))
    X.data = X.data.astype(np.float32)
    X.eliminate_zeros()
    X = X[np.asarray(X.sum(1)).ravel() > 0]
    obs = {BATCH_KEY: np.repeat("pbmc3k", X.shape[0])}
    return ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=base.var)


# ---------------------------------------------------------------------------------- machine
def machine() -> str:
    """CPU model (``lscpu``), core count and Python version."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = re.search(r"^Model name:\s*(.+)$", out, flags=re.MULTILINE)
        cpu = model.group(1).strip() if model else platform.processor()
    except (OSError, subprocess.CalledProcessError):
        cpu = platform.processor() or "unknown CPU"
    return f"{cpu}, {os.cpu_count()} cores (shared), Python {platform.python_version()}"


def versions(names: Sequence[str] = SCVAE_VERSIONS) -> dict[str, str]:
    """Installed versions of ``names`` (``"-"`` when missing) and Python's.

    scvae's is that of the package actually imported (a source tree on ``PYTHONPATH`` wins
    over the installed one).
    """
    out: dict[str, str] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    if "scvae" in names and "scvae" in sys.modules:
        out["scvae"] = sys.modules["scvae"].__version__
    out["python"] = platform.python_version()
    return out


def versions_text(found: Mapping[str, str]) -> str:
    """``"scvae 0.1.0, torch 2.13.0+cpu, ..."`` (without Python)."""
    return ", ".join(f"{k} {v}" for k, v in found.items() if k != "python")


def code_provenance() -> dict[str, Any]:
    """Where the scvae that this process imports lives, and its git commit (if any)."""
    import scvae

    where = Path(scvae.__file__).resolve().parent.parent
    return {"scvae_source": str(where), "scvae_commit": git_commit(where)}


def git_commit(where: Path = REPO_ROOT) -> str | None:
    """Short commit of the git work tree whose top level is ``where``, ``+dirty`` if changed.

    None when ``where`` is not the top of a work tree (e.g. a copy inside another repository).
    """
    try:
        top = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if Path(top).resolve() != Path(where).resolve():
            return None
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def peak_rss_gb() -> float:
    """Peak resident memory of this process since it started its program, in GiB.

    ``VmHWM`` of ``/proc/self/status``: unlike ``getrusage``'s ``ru_maxrss``, which Linux keeps
    across ``execve`` (so a worker would report its parent's peak), it belongs to the address
    space of the running program. Falls back to ``ru_maxrss`` where /proc is missing.
    """
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB -> GiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def thread_env(threads: int) -> dict[str, str]:
    """This process's environment with OpenMP/BLAS limited to ``threads`` (for a worker)."""
    n = str(threads)
    return {
        **os.environ,
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "PYTHONWARNINGS": "ignore",
    }


def load_average() -> float:
    """The 1-minute load average (how busy the shared machine was)."""
    return round(os.getloadavg()[0], 2)


# ---------------------------------------------------------------------------------- workers
def venv_python(venv: Path) -> Path:
    """``<venv>/bin/python``."""
    return Path(venv) / "bin" / "python"


def ensure_scvi_venv(venv: Path = SCVI_VENV) -> Path:
    """Create the scvi-tools environment unless it already imports scvi; return its Python.

    ``python -m venv``, then ``pip install torch==2.13.0`` (the local CPU wheel, first) and
    ``pip install scvi-tools==1.4.2 torch==2.13.0`` (torch pinned, so no CUDA wheels). scvi-tools
    is never a dependency of scvae.

    Parameters
    ----------
    venv
        Where the environment lives (``benchmarks/.venv-scvi``, gitignored).

    Returns
    -------
    Path
        Its interpreter.
    """
    python = venv_python(venv)
    probe = [str(python), "-c", "import scvi"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating {venv} with {SCVI_SPEC} (CPU {TORCH_SPEC}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, TORCH_SPEC], check=True)
    subprocess.run([*pip, SCVI_SPEC, TORCH_SPEC], check=True)
    return python


class WorkerError(RuntimeError):
    """A worker process failed; the message ends with the tail of its output."""


class WorkerTimeout(WorkerError):
    """A worker process ran past its time limit and was killed."""


def python_imports(python: Path | str, module: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``python -c "import <module>"`` succeeds (nothing is installed)."""
    try:
        done = subprocess.run(
            [str(python), "-c", f"import {module}"],
            capture_output=True,
            env=None if env is None else dict(env),
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def run_worker(
    tool: str,
    job: Mapping[str, Any],
    out: Path,
    *,
    scvi_venv: Path = SCVI_VENV,
    scvi_python: Path | str | None = None,
    timeout: float | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run one job in a fresh process of the tool's worker and read what it wrote.

    The job (see ``scvae_worker.py`` for its keys; both workers read the same ones) is written
    to ``<out>.job.json``; the worker writes ``<out>.json`` (measurements) and ``<out>.npz``
    (per-cell arrays). Each fit has its own process, so its peak memory is its own.

    Parameters
    ----------
    tool
        ``"scvae"`` (``scvae_worker.py``, this interpreter: scvae models, scanpy's PCA) or
        ``"scvi"`` (``scvi_worker.py`` in the scvi-tools environment, created when missing).
    job
        What to fit and what to measure.
    out
        Path stem of the job's files.
    scvi_venv
        The scvi-tools environment.
    scvi_python
        An interpreter that already imports scvi-tools (e.g. on a machine without network,
        where the environment cannot be created); None: ``scvi_venv``'s, created when missing.
    timeout
        Seconds the worker may run (None: no limit); past it the worker is killed.

    Returns
    -------
    tuple
        ``(meta, arrays)``: the measurements and the per-cell arrays.

    Raises
    ------
    WorkerError
        The worker exited with an error, or ran past ``timeout`` (then
        :class:`WorkerTimeout`).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    job_path = out.with_suffix(".job.json")
    job_path.write_text(json.dumps(dict(job), indent=1))
    if tool == "scvi":
        python = scvi_python if scvi_python is not None else ensure_scvi_venv(scvi_venv)
        command = [str(python), str(SCVI_WORKER)]
    elif tool == "scvae":
        command = [sys.executable, str(SCVAE_WORKER)]
    else:
        raise ValueError(f"tool must be 'scvae' or 'scvi', got {tool!r}")
    command += ["--job", str(job_path), "--out", str(out)]
    try:
        done = subprocess.run(
            command,
            env=thread_env(int(job.get("threads", 1))),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as err:
        raise WorkerTimeout(
            f"{tool} worker ran past {timeout:.0f} s ({shlex.join(command)})"
        ) from err
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-20:])
        raise WorkerError(f"{tool} worker failed ({shlex.join(command)}):\n{tail}")
    meta = json.loads(out.with_suffix(".json").read_text())
    arrays_path = out.with_suffix(".npz")
    arrays: dict[str, np.ndarray] = {}
    if arrays_path.exists():
        with np.load(arrays_path) as stored:
            arrays = {k: stored[k] for k in stored.files}
    return meta, arrays


def write_worker_output(out: Path, meta: Mapping[str, Any], arrays: Mapping[str, Any]) -> None:
    """What a worker hands back: ``<out>.json`` and, with arrays, ``<out>.npz``."""
    out = Path(out)
    kept = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    if kept:
        np.savez(out.with_suffix(".npz"), **kept)
    out.with_suffix(".json").write_text(json.dumps(to_jsonable(dict(meta)), indent=1))


def read_job(path: Path) -> dict[str, Any]:
    """A job file written by :func:`run_worker`."""
    return json.loads(Path(path).read_text())


def read_split(job: Mapping[str, Any], n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, heldout_idx)`` of a job: from its ``split`` npz, or every cell trains."""
    if not job.get("split"):
        return np.arange(n_cells), np.arange(0)
    with np.load(job["split"]) as split:
        train_idx = np.asarray(split["train_idx"], dtype=np.int64)
        heldout_idx = np.asarray(split["heldout_idx"], dtype=np.int64)
    if np.intersect1d(train_idx, heldout_idx).size:
        raise ValueError("train and held-out cells overlap")
    return train_idx, heldout_idx


# ------------------------------------------------------------------------------ epoch clock
def epoch_clock(timer: Callable[[], float] = time.perf_counter):  # -> lightning Callback
    """A Lightning callback that times every training epoch, validation passes excluded.

    Only Lightning's public hooks are used, so the same callback serves scvae
    (``fit(callbacks=[...])``) and scvi-tools (``train(callbacks=[...])``).

    Parameters
    ----------
    timer
        ``time.perf_counter`` (wall clock) or ``time.thread_time`` (CPU time of the training
        thread, which other jobs on the machine do not inflate).

    Returns
    -------
    lightning.pytorch.Callback
        With ``epoch_times`` (seconds per epoch, validation excluded), ``validation_times``
        and ``n_batches`` (minibatches per epoch, ``trainer.num_training_batches``).
    """
    import lightning.pytorch as pl

    class EpochClock(pl.Callback):
        def __init__(self) -> None:
            self.epoch_times: list[float] = []
            self.validation_times: list[float] = []
            self.n_batches = 0
            self._start = self._validation_start = 0.0
            self._validation = 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.n_batches = int(trainer.num_training_batches)
            self._validation = 0.0
            self._start = timer()

        def on_validation_start(self, trainer, pl_module) -> None:
            self._validation_start = timer()

        def on_validation_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                self._validation += timer() - self._validation_start

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.epoch_times.append(timer() - self._start - self._validation)
            self.validation_times.append(self._validation)

    return EpochClock()


def step_clock(warmup_steps: int, timed_s: float, max_timed_steps: int):  # -> Callback
    """A Lightning callback that times optimizer steps after a warm-up, then stops the fit.

    The clock starts after ``warmup_steps`` training steps and stops after ``max_timed_steps``
    more or once ``timed_s`` seconds have passed, whichever comes first; then it sets
    ``trainer.should_stop`` (Lightning ends the fit after that step). On a CUDA module the
    device is synchronized at both ends of the window (and nowhere else), so the window holds
    the finished work of exactly the steps counted. Only public hooks are used: the same
    callback serves scvae and scvi-tools.

    Parameters
    ----------
    warmup_steps
        Untimed steps first (at least 1: the first step builds kernels and caches).
    timed_s
        Seconds to time at most.
    max_timed_steps
        Steps to time at most.

    Returns
    -------
    lightning.pytorch.Callback
        With ``steps`` and ``cells`` (timed), ``seconds`` (None until the window closed) and
        ``cells_per_s``.
    """
    import lightning.pytorch as pl
    import torch

    def n_cells(batch: Any) -> int:
        if hasattr(batch, "n_cells"):  # scvae's Minibatch
            return int(batch.n_cells)
        if isinstance(batch, Mapping):  # scvi-tools' dict of tensors
            return int(next(iter(batch.values())).shape[0])
        return int(batch[0].shape[0])

    class StepClock(pl.Callback):
        def __init__(self) -> None:
            self.steps = self.cells = self._seen = 0
            self.seconds: float | None = None
            self._start: float | None = None

        @property
        def cells_per_s(self) -> float | None:
            return None if not self.seconds else self.cells / self.seconds

        @staticmethod
        def _sync(pl_module) -> None:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self.seconds is not None:
                return
            self._seen += 1
            if self._start is None:
                if self._seen >= max(1, warmup_steps):
                    self._sync(pl_module)
                    self._start = time.perf_counter()
                return
            self.steps += 1
            self.cells += n_cells(batch)
            # the host clock is read without a sync: it only decides when to stop
            if self.steps >= max_timed_steps or time.perf_counter() - self._start >= timed_s:
                self._sync(pl_module)
                self.seconds = time.perf_counter() - self._start
                trainer.should_stop = True

    return StepClock()


def elbo_clock(
    every_s: float,
    budget_s: float,
    timer: Callable[[], float] = time.thread_time,
    path: Path | None = None,
):  # -> lightning Callback
    """A Lightning callback that scores the validation cells every ``every_s`` training seconds.

    For scvae's :class:`~scvae.train.TrainingPlan` (``fit(callbacks=[...])``): training time is
    ``timer`` (``time.thread_time``: CPU seconds of the training thread, which other jobs on the
    machine do not inflate; ``time.perf_counter``: wall seconds) with every validation pass,
    the fit's own after each epoch and this callback's, left out. After the first training step
    past each multiple of ``every_s`` it computes the mean ELBO of the fit's validation cells
    (``pl_module.val_loader``, eval mode, KL weight 1, one Monte Carlo sample per cell, the
    torch RNG restored afterwards so the training stream is unchanged); past ``budget_s`` it
    scores once more and sets ``trainer.should_stop``.

    Parameters
    ----------
    every_s
        Training seconds between two scorings.
    budget_s
        Training seconds after which the fit stops.
    timer
        The clock.
    path
        A JSON file rewritten with the trace after every scoring (None: none), so that a fit
        killed at a time limit leaves what it measured.

    Returns
    -------
    lightning.pytorch.Callback
        With ``trace``: one ``{"seconds", "step", "cells", "epoch", "kl_weight",
        "validation_elbo", "eval_s"}`` per scoring (the first at step 0, before training).
    """
    import lightning.pytorch as pl
    import torch

    class ElboClock(pl.Callback):
        def __init__(self) -> None:
            self.trace: list[dict[str, float]] = []
            self.seconds = 0.0
            self.cells = 0
            self._last = 0.0
            self._next = 0.0
            self._validation_start = 0.0

        def _sync(self, pl_module) -> None:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)

        def _score(self, trainer, pl_module) -> None:
            t0 = timer()
            state = torch.random.get_rng_state()
            cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
            was_training = pl_module.training
            pl_module.eval()
            total, count = 0.0, 0
            with torch.no_grad():
                for batch in pl_module.val_loader:
                    out = pl_module.module.loss(batch, kl_weight=1.0)
                    total += float(out.elbo.double().sum())
                    count += int(batch.n_cells)
            if was_training:
                pl_module.train()
            torch.random.set_rng_state(state)
            if cuda_state is not None:
                torch.cuda.set_rng_state_all(cuda_state)
            self.trace.append(
                {
                    "seconds": self.seconds,
                    "step": int(trainer.global_step),
                    "cells": self.cells,
                    "epoch": int(trainer.current_epoch),
                    "kl_weight": float(pl_module.kl_weight),
                    "validation_elbo": total / max(count, 1),
                    "eval_s": timer() - t0,
                }
            )
            self._next += every_s
            if path is not None:
                Path(path).write_text(json.dumps(self.trace))

        def on_train_start(self, trainer, pl_module) -> None:
            self._score(trainer, pl_module)
            self._last = timer()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self._sync(pl_module)
            now = timer()
            self.seconds += now - self._last
            self.cells += int(batch.n_cells)
            if self.seconds >= self._next or self.seconds >= budget_s:
                self._score(trainer, pl_module)
                if self.seconds >= budget_s:
                    trainer.should_stop = True
            self._last = timer()

        def on_validation_start(self, trainer, pl_module) -> None:
            self._validation_start = timer()

        def on_validation_end(self, trainer, pl_module) -> None:
            self._last += timer() - self._validation_start

    return ElboClock()


def cuda_peak_gb(reset: bool = False) -> float | None:
    """Peak memory torch allocated on the current CUDA device, in GiB (None without CUDA).

    ``torch.cuda.max_memory_allocated``: tensors only, not the allocator's cache or the CUDA
    context. ``reset=True`` returns None and starts a new peak.
    """
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        if reset and torch.cuda.is_available():
            torch.cuda.init()
            torch.cuda.reset_peak_memory_stats()
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
        return None
    return torch.cuda.max_memory_allocated() / 2**30


def cuda_device_name() -> str | None:
    """``torch.cuda.get_device_name()`` of the current device, or None without CUDA."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def steady_rate(cells_per_epoch: float, epoch_times: Sequence[float]) -> float:
    """Cells per second at the median epoch after the first (the only one if there is one)."""
    times = list(epoch_times[1:]) or list(epoch_times)
    return cells_per_epoch / float(np.median(times))


def rate_spread(cells_per_epoch: float, epoch_times: Sequence[float]) -> dict[str, float]:
    """Median, min and max cells/s over the epochs after the first (see :func:`steady_rate`)."""
    times = np.asarray(list(epoch_times[1:]) or list(epoch_times), dtype=np.float64)
    rates = cells_per_epoch / times
    return {
        "median": steady_rate(cells_per_epoch, epoch_times),
        "min": float(rates.min()),
        "max": float(rates.max()),
        "n_epochs": int(times.size),
    }


# ------------------------------------------------------------------------- scvae fit facts
def fit_summary(model: Any) -> dict[str, Any]:
    """What the reports need from a fitted scvae VAE, in one place.

    ``epochs`` is the number of rows of ``model.history`` (one per epoch, documented). The
    best epoch of early stopping and the KL warm-up length come from the record that
    ``write_latent`` stores in ``adata.uns[key]["params"]`` (``model.uns_params()``; before
    the restructuring of issue 10, ``model.params()``); the cells trained on from
    ``model.train_indices``. Any of them that a model does not offer is None.

    Parameters
    ----------
    model
        A fitted :class:`scvae.ZINBVAE` (or another scvae VAE).

    Returns
    -------
    dict
        ``epochs``, ``best_epoch``, ``n_steps_kl_warmup``, ``n_fit_cells``.
    """
    params: dict[str, Any] = {}
    for name in ("uns_params", "params"):
        method = getattr(model, name, None)
        if callable(method):
            params = dict(method())
            break
    indices = getattr(model, "train_indices", None)
    return {
        "epochs": len(model.history),
        "best_epoch": params.get("best_epoch"),
        "n_steps_kl_warmup": params.get("n_steps_kl_warmup"),
        "n_fit_cells": None if indices is None else len(indices),
    }


# ------------------------------------------------------------------------------ result files
def to_jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, paths and non-finite floats made JSON-safe."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_result(
    name: str,
    payload: Mapping[str, Any],
    *,
    script: str,
    argv: Sequence[str],
    out_dir: Path = RESULTS_DIR,
) -> Path:
    """Write ``<out_dir>/<name>.json``: the payload and where, when and with what it ran.

    Parameters
    ----------
    name
        Result name (by default the driver's, e.g. ``"speed"``).
    payload
        The measurements.
    script
        The driver's name without ``.py``.
    argv
        The driver's command-line arguments.
    out_dir
        ``benchmarks/results`` (gitignored); ``render.py --update`` copies a result into
        ``benchmarks/records`` (tracked), from which ``docs/benchmarks.md`` is rendered.

    Returns
    -------
    Path
        The file.
    """
    header = {
        "benchmark": name,
        "command": shlex.join(["python", f"benchmarks/{script}.py", *argv]),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        **code_provenance(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(to_jsonable({**header, **payload}), indent=1) + "\n")
    print(f"wrote {path}", flush=True)
    return path


def read_result(path: Path) -> dict[str, Any]:
    """A file written by :func:`write_result` (or a record)."""
    return json.loads(Path(path).read_text())


# -------------------------------------------------------------------------------- statistics
def mean_se(values: Sequence[float] | np.ndarray | None) -> dict[str, float] | None:
    """Mean and standard error of per-cell values (None for None or no values)."""
    if values is None or len(values) == 0:
        return None
    v = np.asarray(values, dtype=np.float64)
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
    return {"mean": float(v.mean()), "se": se, "n": int(v.size)}


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Per-cell ``a - b`` on the same cells: mean, standard error, median, share with a > b."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return {
        "mean": float(d.mean()),
        "se": float(d.std(ddof=1) / math.sqrt(d.size)),
        "median": float(np.median(d)),
        "frac_higher": float(np.mean(d > 0)),
        "n": int(d.size),
    }


# ---------------------------------------------------------------------------------- markdown
def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """A markdown table; ``align`` has one letter per column: ``l`` (``---``), ``r`` (``---:``).

    Examples
    --------
    >>> print(md_table(["a", "b"], [["x", "1"]], "lr"))
    | a | b |
    |---|---:|
    | x | 1 |
    """
    marks = {"l": "---", "r": "---:"}

    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"

    lines = [line(header), "|" + "".join(marks[a] + "|" for a in align)]
    return "\n".join(lines + [line(row) for row in rows])


def fmt_mean_se(value: Mapping[str, float] | None, digits: int = 1, missing: str = "-") -> str:
    """``"mean ± se"`` of a :func:`mean_se` dict, or ``missing``."""
    if value is None:
        return missing
    return f"{value['mean']:.{digits}f} ± {value['se']:.{digits}f}"


def markers(tool: str) -> tuple[str, str]:
    """The HTML comments that delimit the generated block ``tool`` of ``docs/benchmarks.md``."""
    return f"<!-- {tool}: begin generated -->", f"<!-- {tool}: end generated -->"


def write_section(generated: str, *, tool: str, heading: str, path: Path = DOCS) -> None:
    """Put ``generated`` between the markers of ``tool``, creating what is missing.

    The rest of the file, including hand-written text of the section outside the markers, is
    kept. A missing section is appended under ``heading``.

    Parameters
    ----------
    generated
        Markdown to place between the markers.
    tool
        Name of the generated block, e.g. ``"speed.py"``.
    heading
        The section's markdown heading line, e.g. ``"## Speed against scvi-tools"``.
    path
        The markdown file (``docs/benchmarks.md``).
    """
    begin, end = markers(tool)
    block = f"{begin}\n\n{generated}\n\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    elif heading in text:
        head, rest = text.split(heading, 1)
        text = f"{head}{heading}\n\n{block}\n{rest}"
    else:
        text = f"{text.rstrip()}\n\n{heading}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def label_scores(labels: pd.Series | np.ndarray, clusters: np.ndarray) -> tuple[float, float]:
    """``(ARI, NMI)`` of cluster assignments against labels (scikit-learn)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    truth = np.asarray(labels)
    return (
        float(adjusted_rand_score(truth, clusters)),
        float(normalized_mutual_info_score(truth, clusters)),
    )
