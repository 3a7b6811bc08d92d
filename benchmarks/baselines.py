"""Baselines: held-out log-likelihood and clustering of every scvae model on the shared data.

What it measures
----------------
For each ``*.h5ad`` file in ``--data-dir`` (raw counts in ``X``, ``obs["cell_type"]``,
``obs["batch"]``):

1. The cells are split once, seeded, into 90 % train and 10 % held-out cells; every model is
   fitted on the same train cells and scored on the same held-out cells.
2. The 2,000 most highly variable genes are chosen on the train cells only (scanpy
   ``highly_variable_genes(flavor="seurat", n_top_genes=2000)`` on a log-normalized copy);
   a file with at most 2,000 genes keeps all of them. Cells left with zero counts on the
   chosen genes would be dropped (and counted); on the shared data there are none.
3. Fitted on the train cells:

   * ``ZINBVAE``, ``NBVAE``, ``PoissonVAE`` on the counts and ``GaussianVAE`` on the
     log-normalized data (``batch_key="batch"`` when the file has more than one batch;
     ``fit(max_epochs=--max-epochs, train_size=0.9, seed=0)``, i.e. 10 % of the train cells
     are the validation set for early stopping);
   * ``PPCA(n_latent=10)`` on the log-normalized data (closed form);
   * ``GMM`` with diagonal covariances and ``K`` = number of cell types directly on the
     2,000-D log-normalized data, once with scvae's default variance floor
     ``reg_covar=1e-6`` and once with ``reg_covar=0.1`` (``--gmm-reg-covar``): with the
     default, a gene that is zero in every train cell of a component gets variance 1e-6 there,
     and a held-out cell of that component with a count in that gene gets a log-density of
     about -x^2 / 2e-6; the second row shows how much of the held-out score that is.

   "Log-normalized" is ``log1p(counts / total * 1e4)`` with the total over the chosen genes,
   which is what ``GaussianVAE`` and ``PPCA`` compute inside; the GMM gets the same matrix.
4. Held-out log-likelihood per cell (nats, mean ± standard error over held-out cells):
   IWAE estimate with 100 importance samples for the VAEs, exact for PPCA and the GMM.
   Count models are scored on the counts, Gaussian models on the log-normalized data; the two
   spaces are reported in separate columns and are not comparable with each other.
5. Clustering: for every model with an embedding (the four VAEs and PPCA) a ``GMM`` with full
   covariances, ``K`` = number of cell types, seed 0, is fitted on the embedding of all cells
   (train and held-out, ``get_latent`` on the full data); ARI and NMI (scikit-learn) of its
   clusters against ``cell_type``. The 2,000-D GMM's own clusters (fitted on the train cells,
   predicted on all cells) are scored the same way.
6. Fit time: wall time of constructing and fitting each model on the train cells (for the VAEs,
   including early stopping's validation passes), with one torch thread.

Markdown tables (one per data set) are printed and written into ``docs/benchmarks.md``, between
the markers of the section "Baselines: held-out likelihood and clustering" (the rest of the
file is kept). Nothing is asserted.

Run from the repository root, in the environment where scvae is installed::

    /work/venv/bin/python benchmarks/baselines.py

(defaults: ``--data-dir ../shared/data --max-epochs 100 --n-top-genes 2000 --n-samples 100
--seed 0 --gmm-reg-covar 1e-6 0.1``, every data set; ``--datasets pbmc3k_raw_annotated``
picks a subset by file stem, ``--no-docs`` only prints).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from threadpoolctl import threadpool_limits

import scvae

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_section

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
DEFAULT_DOCS = REPO_ROOT / "docs" / "benchmarks.md"
SECTION = "## Baselines: held-out likelihood and clustering"
LABEL_KEY, BATCH_KEY = "cell_type", "batch"
TARGET_SUM = 1e4
VAES: tuple[type, ...] = (scvae.ZINBVAE, scvae.NBVAE, scvae.PoissonVAE, scvae.GaussianVAE)
COUNT_VAES = ("ZINBVAE", "NBVAE", "PoissonVAE")


@dataclass
class Dataset:
    """One data set, restricted to the chosen genes, with its split.

    Attributes
    ----------
    name
        File stem.
    adata
        All kept cells: counts (CSR float32) in ``X``, ``obs`` with cell type and batch.
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


@dataclass
class Row:
    """One model's results on one data set.

    Attributes
    ----------
    model
        Model name.
    fit_time_s
        Wall time of construction and fit on the train cells.
    epochs
        Epochs trained and best epoch (VAEs), else ``"-"``.
    ll_counts, ll_lognorm
        Per-cell held-out log-likelihoods in counts / log-normalized space, or None.
    ari, nmi
        Agreement of GMM clusters with the cell types.
    """

    model: str
    fit_time_s: float
    epochs: str
    ll_counts: np.ndarray | None
    ll_lognorm: np.ndarray | None
    ari: float
    nmi: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Parameters
    ----------
    argv
        Arguments; None reads ``sys.argv``.

    Returns
    -------
    argparse.Namespace
        The options.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--datasets", nargs="+", default=None, help="file stems (default: all)")
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--n-top-genes", type=int, default=2000)
    p.add_argument("--heldout-fraction", type=float, default=0.1)
    p.add_argument("--n-samples", type=int, default=100, help="IWAE importance samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--gmm-reg-covar",
        type=float,
        nargs="+",
        default=[1e-6, 0.1],
        help="variance floors of the diagonal GMM on genes, one row each",
    )
    p.add_argument("--docs", type=Path, default=DEFAULT_DOCS)
    p.add_argument("--no-docs", action="store_true", help="print only; leave the docs alone")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------ data
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


def highly_variable(counts: sp.csr_matrix, n_top_genes: int) -> np.ndarray:
    """scanpy's ``seurat``-flavour highly variable genes of a log-normalized copy.

    Parameters
    ----------
    counts
        Cells x genes raw counts.
    n_top_genes
        Genes to keep; with at most this many genes, all are kept.

    Returns
    -------
    np.ndarray
        Boolean mask over genes.
    """
    if counts.shape[1] <= n_top_genes:
        return np.ones(counts.shape[1], dtype=bool)
    tmp = ad.AnnData(X=counts.copy())
    sc.pp.normalize_total(tmp, target_sum=TARGET_SUM)
    sc.pp.log1p(tmp)
    sc.pp.highly_variable_genes(tmp, flavor="seurat", n_top_genes=n_top_genes)
    return tmp.var["highly_variable"].to_numpy()


def load_dataset(path: Path, n_top_genes: int, heldout_fraction: float, seed: int) -> Dataset:
    """Read a file, split its cells, keep the highly variable genes of the train cells.

    Parameters
    ----------
    path
        ``.h5ad`` file with raw counts in ``X``.
    n_top_genes, heldout_fraction, seed
        See :func:`highly_variable` and :func:`split_cells`.

    Returns
    -------
    Dataset
        Lean AnnData (counts, cell type, batch) and the split.
    """
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


def log_normalized(counts: sp.csr_matrix) -> np.ndarray:
    """Dense ``log1p(counts / total * 1e4)`` per cell, as ``GaussianVAE`` and ``PPCA`` compute it.

    Parameters
    ----------
    counts
        Cells x genes counts, no empty cells.

    Returns
    -------
    np.ndarray
        (n_cells, n_genes) float32.
    """
    X = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    totals = np.asarray(X.sum(axis=1)).ravel()  # (N,)
    X.data = np.log1p(X.data * np.repeat(TARGET_SUM / totals, np.diff(X.indptr))).astype(np.float32)
    return X.toarray()


def with_rep(adata: ad.AnnData, rep: np.ndarray, key: str = "X_rep") -> ad.AnnData:
    """A cells-only AnnData holding ``rep`` in ``obsm[key]``, for :class:`scvae.GMM`.

    Parameters
    ----------
    adata
        Cells whose ``obs`` is kept.
    rep
        (n_cells, n_dims) representation.
    key
        ``obsm`` key.

    Returns
    -------
    AnnData
        New object; ``adata`` is not modified.
    """
    out = ad.AnnData(obs=adata.obs.copy())
    out.obsm[key] = rep
    return out


# ---------------------------------------------------------------------------------- models
def cluster_scores(
    rep: np.ndarray, labels: pd.Series, n_types: int, seed: int
) -> tuple[float, float]:
    """ARI and NMI of a full-covariance GMM's clusters of ``rep`` against ``labels``.

    Parameters
    ----------
    rep
        (n_cells, n_dims) embedding of all cells.
    labels
        Cell types, same order.
    n_types
        Number of components.
    seed
        Seed of the GMM.

    Returns
    -------
    tuple of float
        ``(ARI, NMI)``.
    """
    holder = with_rep(ad.AnnData(obs=pd.DataFrame(index=labels.index)), rep)
    gmm = scvae.GMM(holder, use_rep="X_rep", n_components=n_types, covariance_type="full")
    clusters = gmm.fit(seed=seed).predict(holder)
    return label_scores(labels, clusters)


def label_scores(labels: pd.Series, clusters: np.ndarray) -> tuple[float, float]:
    """``(ARI, NMI)`` of cluster assignments against labels (scikit-learn)."""
    truth = labels.to_numpy()
    return (
        float(adjusted_rand_score(truth, clusters)),
        float(normalized_mutual_info_score(truth, clusters)),
    )


def run_vae(cls: type, data: Dataset, *, max_epochs: int, n_samples: int, seed: int) -> Row:
    """Fit a VAE on the train cells, score the held-out cells, cluster all cells' embedding.

    Parameters
    ----------
    cls
        ``scvae.ZINBVAE``, ``NBVAE``, ``PoissonVAE`` or ``GaussianVAE``.
    data
        The data set.
    max_epochs, n_samples, seed
        Fit epochs, IWAE importance samples, seed of fit, scoring and clustering.

    Returns
    -------
    Row
        Fit time, epochs, held-out IWAE log-likelihood in the model's space, ARI and NMI.
    """
    train = data.adata[data.train_idx].copy()
    heldout = data.adata[data.heldout_idx].copy()
    start = time.perf_counter()
    model = cls(train, batch_key=data.batch_key)
    model.fit(max_epochs=max_epochs, train_size=0.9, seed=seed, progress_bar=False)
    fit_time = time.perf_counter() - start
    ll = model.marginal_log_likelihood(heldout, n_samples=n_samples, seed=seed)
    latent = model.get_latent(data.adata)
    ari, nmi = cluster_scores(latent, data.adata.obs[LABEL_KEY], data.n_types, seed)
    params = model.fit_params
    epochs = f"{params['n_epochs_trained']} (best {params['best_epoch']})"
    counts_space = cls.__name__ in COUNT_VAES
    return Row(
        model=cls.__name__,
        fit_time_s=fit_time,
        epochs=epochs,
        ll_counts=ll if counts_space else None,
        ll_lognorm=None if counts_space else ll,
        ari=ari,
        nmi=nmi,
    )


def run_ppca(data: Dataset, *, seed: int) -> Row:
    """Fit PPCA (10 components) on the train cells; exact held-out log-likelihood; clusters.

    Parameters
    ----------
    data
        The data set.
    seed
        Seed of the fit (randomized eigensolver, if used) and of the clustering GMM.

    Returns
    -------
    Row
        Fit time, held-out log-likelihood (log-normalized space), ARI and NMI.
    """
    train = data.adata[data.train_idx].copy()
    heldout = data.adata[data.heldout_idx].copy()
    start = time.perf_counter()
    model = scvae.PPCA(train, n_latent=10).fit(seed=seed, accelerator="cpu")
    fit_time = time.perf_counter() - start
    ll = model.marginal_log_likelihood(heldout)
    latent = model.get_latent(data.adata)
    ari, nmi = cluster_scores(latent, data.adata.obs[LABEL_KEY], data.n_types, seed)
    return Row("PPCA", fit_time, "-", None, ll, ari, nmi)


def run_gmm_lognorm(data: Dataset, *, reg_covar: float, seed: int) -> Row:
    """Fit a diagonal GMM on the train cells' log-normalized genes; score held-out cells.

    Parameters
    ----------
    data
        The data set.
    reg_covar
        Variance floor added to every component variance (scvae's and sklearn's default is
        1e-6).
    seed
        Seed of the k-means++ initialisation.

    Returns
    -------
    Row
        Fit time, exact held-out log-likelihood (log-normalized space), and the ARI / NMI of
        its own clusters on all cells.
    """
    logn = log_normalized(data.adata.X)  # (N, G)
    every = with_rep(data.adata, logn)
    train, heldout = every[data.train_idx].copy(), every[data.heldout_idx].copy()
    start = time.perf_counter()
    gmm = scvae.GMM(
        train,
        use_rep="X_rep",
        n_components=data.n_types,
        covariance_type="diag",
        reg_covar=reg_covar,
    )
    gmm.fit(seed=seed)
    fit_time = time.perf_counter() - start
    ll = gmm.marginal_log_likelihood(heldout)
    ari, nmi = label_scores(data.adata.obs[LABEL_KEY], gmm.predict(every))
    name = f"GMM diag on genes, reg_covar={reg_covar:g}"
    return Row(name, fit_time, "-", None, ll, ari, nmi)


def run_dataset(data: Dataset, args: argparse.Namespace) -> list[Row]:
    """Every model on one data set, printing progress.

    Parameters
    ----------
    data
        The data set.
    args
        Options (``max_epochs``, ``n_samples``, ``seed``, ``gmm_reg_covar``).

    Returns
    -------
    list of Row
        One row per model.
    """
    vae = {"max_epochs": args.max_epochs, "n_samples": args.n_samples, "seed": args.seed}
    runs: list[tuple[str, Callable[[], Row]]] = [
        *[(c.__name__, lambda c=c: run_vae(c, data, **vae)) for c in VAES],
        ("PPCA", lambda: run_ppca(data, seed=args.seed)),
        *[
            (f"GMM reg_covar={r:g}", lambda r=r: run_gmm_lognorm(data, reg_covar=r, seed=args.seed))
            for r in args.gmm_reg_covar
        ],
    ]
    rows = []
    for name, run in runs:
        start = time.perf_counter()
        rows.append(run())
        print(f"  {name}: done in {time.perf_counter() - start:.1f} s", flush=True)
    return rows


# --------------------------------------------------------------------------------- reports
def mean_se(values: np.ndarray | None) -> str:
    """``"mean ± standard error"`` of per-cell values, or ``"-"`` for None."""
    if values is None:
        return "-"
    values = np.asarray(values, dtype=np.float64)
    se = values.std(ddof=1) / np.sqrt(values.size)
    return f"{values.mean():.1f} ± {se:.1f}"


def describe(data: Dataset) -> str:
    """One line on the data set: cells, genes, split, batches, cell types."""
    dropped = f", {data.n_dropped} empty cells dropped" if data.n_dropped else ""
    genes = (
        f"{data.adata.n_vars:,} highly variable of {data.n_genes_file:,} genes"
        if data.adata.n_vars < data.n_genes_file
        else f"all {data.n_genes_file:,} genes"
    )
    return (
        f"{data.adata.n_obs:,} cells ({data.train_idx.size:,} train / "
        f"{data.heldout_idx.size:,} held-out{dropped}), {genes}, {data.n_batches} "
        f"batch{'es' if data.n_batches > 1 else ''}"
        f"{' (batch_key=' + repr(BATCH_KEY) + ')' if data.batch_key else ''}, "
        f"{data.n_types} cell types (K = {data.n_types})."
    )


def table(rows: list[Row]) -> str:
    """Markdown table of one data set's rows."""
    header = (
        "| model | fit time (s) | epochs | held-out log p(x) / cell, counts (nats) "
        "| held-out log p(x) / cell, log-normalized (nats) | ARI | NMI |\n"
        "|---|---:|---:|---:|---:|---:|---:|"
    )
    lines = [
        f"| {r.model} | {r.fit_time_s:.1f} | {r.epochs} | {mean_se(r.ll_counts)} "
        f"| {mean_se(r.ll_lognorm)} | {r.ari:.3f} | {r.nmi:.3f} |"
        for r in rows
    ]
    return "\n".join([header, *lines])


def machine() -> str:
    """CPU model (``lscpu``), core count and Python version."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = re.search(r"^Model name:\s*(.+)$", out, flags=re.MULTILINE)
        cpu = model.group(1).strip() if model else platform.processor()
    except (OSError, subprocess.CalledProcessError):
        cpu = platform.processor() or "unknown CPU"
    return f"{cpu}, {os.cpu_count()} cores (shared), Python {platform.python_version()}"


def versions() -> str:
    """Versions of the packages the numbers depend on."""
    names = ["scvae", "torch", "lightning", "scanpy", "anndata", "scikit-learn", "numpy"]
    return ", ".join(f"{n} {version(n)}" for n in names)


def setup_text(args: argparse.Namespace) -> str:
    """What was run, in words, from the options.

    Parameters
    ----------
    args
        Options of the run.

    Returns
    -------
    str
        Markdown bullet list.
    """
    floors = " and ".join(f"`reg_covar={r:g}`" for r in args.gmm_reg_covar)
    items = [
        f"Each data set's cells are split once (seed {args.seed}) into "
        f"{1 - args.heldout_fraction:.0%} train and {args.heldout_fraction:.0%} held-out cells; "
        "every model is fitted on the train cells only and scored on the same held-out cells.",
        f"Genes: the {args.n_top_genes:,} most highly variable genes of the train cells, "
        f'scanpy `highly_variable_genes(flavor="seurat", n_top_genes={args.n_top_genes})` on '
        "a log-normalized copy; a file with at most that many genes keeps all of them (the "
        "line under each heading says which).",
        "Log-normalized = `log1p(counts / total * 1e4)`, the total taken over the selected "
        "genes: what `GaussianVAE` and `PPCA` compute inside; the gene-space GMM gets the same "
        "matrix.",
        "VAEs (`ZINBVAE`, `NBVAE`, `PoissonVAE` on counts, `GaussianVAE` on log-normalized "
        "data): default architecture (10 latent dims, 1 x 128 hidden, dropout 0.1), "
        f'`batch_key="batch"` when the file has more than one batch, `fit(max_epochs='
        f"{args.max_epochs}, train_size=0.9, seed={args.seed})`: 10 % of the train cells are "
        "the validation set for early stopping (patience 30 after the KL warm-up; the best "
        "epoch's weights are kept). Column *epochs*: epochs trained (best epoch).",
        "`PPCA(n_latent=10)` (closed-form maximum likelihood) on the log-normalized data; "
        f'`GMM(covariance_type="diag")` with K = number of cell types on the '
        f"{args.n_top_genes:,}-D log-normalized data, with {floors} (the variance floor "
        "added to every component variance; 1e-6 is scvae's and scikit-learn's default).",
        "Held-out log-likelihood: mean ± standard error over the held-out cells of the "
        f"per-cell log p(x) in nats; IWAE estimate with {args.n_samples} importance samples for "
        "the VAEs (a lower bound), exact for PPCA and the GMM. The counts column is a log "
        "probability of integer counts, the log-normalized column a log density of "
        "continuous values: the two columns cannot be compared with each other.",
        "ARI / NMI (scikit-learn) against `cell_type`: for the VAEs and PPCA, of a full-covariance "
        f"`scvae.GMM` (K = number of cell types, seed {args.seed}) fitted on the embedding "
        "(`get_latent`) of all cells, train and held-out; for the gene-space GMM, of its own "
        "clusters (fitted on the train cells, predicted on all cells).",
        "Fit time: wall time of constructing and fitting the model on the train cells (for the "
        "VAEs including the validation passes), one torch thread, on a machine shared with "
        "other jobs, so timings are rough.",
    ]
    return "\n".join(f"- {item}" for item in items)


def report(
    results: dict[str, tuple[Dataset, list[Row]]],
    args: argparse.Namespace,
    total_s: float,
    command: str,
) -> str:
    """The generated part of the docs section: setup, machine, command and tables.

    Parameters
    ----------
    results
        Data set name -> (data set, rows).
    args
        Options of the run.
    total_s
        Wall time of the whole run.
    command
        The command line that produced it.

    Returns
    -------
    str
        Markdown.
    """
    parts = [
        setup_text(args),
        f"Machine: {machine()}; one torch thread (`torch.set_num_threads(1)`).",
        f"Versions: {versions()}.",
        f"Command (from the repository root; {total_s / 60:.0f} min in all):",
        f"```bash\n{command}\n```",
    ]
    for name, (data, rows) in results.items():
        parts += [f"### {name}", describe(data), table(rows)]
    return "\n\n".join(parts)


def write_docs(path: Path, generated: str) -> None:
    """Put ``generated`` between this benchmark's markers in ``path`` (``docs/benchmarks.md``)."""
    write_section(generated, tool="baselines.py", heading=SECTION, path=path)


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    """Run every model on every selected data set; print and write the tables."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    sc.settings.verbosity = 0
    paths = sorted(args.data_dir.glob("*.h5ad"))
    if args.datasets:
        paths = [p for p in paths if p.stem in set(args.datasets)]
        missing = set(args.datasets) - {p.stem for p in paths}
        if missing:
            raise SystemExit(f"not in {args.data_dir}: {', '.join(sorted(missing))}")
    command = shlex.join([sys.executable, *sys.argv])
    results: dict[str, tuple[Dataset, list[Row]]] = {}
    start = time.perf_counter()
    with threadpool_limits(limits=1):
        for path in paths:
            data = load_dataset(path, args.n_top_genes, args.heldout_fraction, args.seed)
            print(f"{data.name}: {describe(data)}", flush=True)
            rows = run_dataset(data, args)
            results[data.name] = (data, rows)
            print(f"\n{table(rows)}\n", flush=True)
    generated = report(results, args, time.perf_counter() - start, command)
    print(generated)
    if not args.no_docs:
        write_docs(args.docs, generated)
        print(f"\nwritten to {args.docs}")


if __name__ == "__main__":
    main()
