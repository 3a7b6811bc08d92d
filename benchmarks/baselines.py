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
   * ``FactorAnalysis(n_latent=10)`` on the log-normalized data (EM from PPCA's solution,
     default floor ``psi_floor=1e-2`` of the mean gene variance);
   * ``GMM`` with diagonal covariances and ``K`` = number of cell types directly on the
     2,000-D log-normalized data, once with scvae's default variance floor
     ``reg_covar=1e-6`` and once with ``reg_covar=0.1`` (``--gmm-reg-covar``): with the
     default, a gene that is zero in every train cell of a component gets variance 1e-6 there,
     and a held-out cell of that component with a count in that gene gets a log-density of
     about -x^2 / 2e-6; the second row shows how much of the held-out score that is.

   "Log-normalized" is ``log1p(counts / total * 1e4)`` with the total over the chosen genes,
   which is what ``GaussianVAE`` and ``PPCA`` compute inside; the GMM gets the same matrix.
4. Held-out log-likelihood per cell (nats, mean ± standard error over held-out cells):
   IWAE estimate with 100 importance samples for the VAEs, exact for PPCA, factor analysis
   and the GMM.
   Count models are scored on the counts, Gaussian models on the log-normalized data; the two
   spaces are reported in separate columns and are not comparable with each other.
5. Clustering: for every model with an embedding (the four VAEs, PPCA and factor analysis) a
   ``GMM`` with full
   covariances, ``K`` = number of cell types, seed 0, is fitted on the embedding of all cells
   (train and held-out, ``get_latent`` on the full data); ARI and NMI (scikit-learn) of its
   clusters against ``cell_type``. The 2,000-D GMM's own clusters (fitted on the train cells,
   predicted on all cells) are scored the same way.
6. Fit time: wall time of constructing and fitting each model on the train cells (for the VAEs,
   including early stopping's validation passes), with one torch thread.

The measurements go to ``benchmarks/results/baselines.json`` (per data set and model: fit
time, epochs trained and best epoch, held-out log-likelihood as mean / standard error, ARI,
NMI); ``render.py`` makes the docs tables from it. Nothing is asserted.

Run from the repository root, in the environment where scvae is installed::

    python benchmarks/baselines.py

(defaults: ``--data-dir ../shared/data --max-epochs 100 --n-top-genes 2000 --n-samples 100
--seed 0 --gmm-reg-covar 1e-6 0.1``, every data set and model; ``--datasets
pbmc3k_raw_annotated`` picks a subset by file stem, ``--models PPCA FactorAnalysis`` a subset
of the rows by model name, ``GMM`` standing for the GMM rows).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import torch
from _common import (
    DATA_DIR,
    LABEL_KEY,
    RESULTS_DIR,
    Dataset,
    dataset_paths,
    describe,
    fit_summary,
    label_scores,
    load_dataset,
    log_normalized,
    mean_se,
    write_result,
)
from threadpoolctl import threadpool_limits

import scvae

VAES: tuple[type, ...] = (scvae.ZINBVAE, scvae.NBVAE, scvae.PoissonVAE, scvae.GaussianVAE)
COUNT_VAES = ("ZINBVAE", "NBVAE", "PoissonVAE")
MODEL_NAMES = (*(c.__name__ for c in VAES), "PPCA", "FactorAnalysis", "GMM")
Row = dict[str, Any]


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
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
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
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=MODEL_NAMES,
        help="rows to run (default: all); GMM stands for the GMM rows",
    )
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return p.parse_args(argv)


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


def row(
    model: str,
    fit_time_s: float,
    *,
    ll_counts: np.ndarray | None = None,
    ll_lognorm: np.ndarray | None = None,
    scores: tuple[float, float],
    epochs: int | None = None,
    best_epoch: int | None = None,
) -> Row:
    """One model's results on one data set, as stored in the result file.

    Parameters
    ----------
    model
        Model name.
    fit_time_s
        Wall time of construction and fit on the train cells.
    ll_counts, ll_lognorm
        Per-cell held-out log-likelihoods in counts / log-normalized space, or None.
    scores
        ``(ARI, NMI)`` of GMM clusters against the cell types.
    epochs, best_epoch
        Epochs trained and best epoch (VAEs), else None.

    Returns
    -------
    dict
        ``model``, ``fit_time_s``, ``epochs``, ``best_epoch``, ``ll_counts`` and ``ll_lognorm``
        (mean / s.e. / n, or None), ``ari``, ``nmi``.
    """
    return {
        "model": model,
        "fit_time_s": fit_time_s,
        "epochs": epochs,
        "best_epoch": best_epoch,
        "ll_counts": mean_se(ll_counts),
        "ll_lognorm": mean_se(ll_lognorm),
        "ari": scores[0],
        "nmi": scores[1],
    }


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
    dict
        See :func:`row`.
    """
    train = data.adata[data.train_idx].copy()
    heldout = data.adata[data.heldout_idx].copy()
    start = time.perf_counter()
    model = cls(train, batch_key=data.batch_key)
    model.fit(max_epochs=max_epochs, train_size=0.9, seed=seed, progress_bar=False)
    fit_time = time.perf_counter() - start
    ll = model.marginal_log_likelihood(heldout, n_samples=n_samples, seed=seed)
    latent = model.get_latent(data.adata)
    scores = cluster_scores(latent, data.adata.obs[LABEL_KEY], data.n_types, seed)
    facts = fit_summary(model)
    counts_space = cls.__name__ in COUNT_VAES
    return row(
        cls.__name__,
        fit_time,
        ll_counts=ll if counts_space else None,
        ll_lognorm=None if counts_space else ll,
        scores=scores,
        epochs=facts["epochs"],
        best_epoch=facts["best_epoch"],
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
    dict
        See :func:`row` (log-normalized space).
    """
    train = data.adata[data.train_idx].copy()
    heldout = data.adata[data.heldout_idx].copy()
    start = time.perf_counter()
    model = scvae.PPCA(train, n_latent=10).fit(seed=seed, accelerator="cpu")
    fit_time = time.perf_counter() - start
    ll = model.marginal_log_likelihood(heldout)
    latent = model.get_latent(data.adata)
    scores = cluster_scores(latent, data.adata.obs[LABEL_KEY], data.n_types, seed)
    return row("PPCA", fit_time, ll_lognorm=ll, scores=scores)


def run_fa(data: Dataset, *, seed: int) -> Row:
    """Fit factor analysis (10 factors) on the train cells; exact held-out log-likelihood.

    Parameters
    ----------
    data
        The data set.
    seed
        Seed of the fit (PPCA's initialization) and of the clustering GMM.

    Returns
    -------
    dict
        See :func:`row` (log-normalized space).
    """
    train = data.adata[data.train_idx].copy()
    heldout = data.adata[data.heldout_idx].copy()
    start = time.perf_counter()
    model = scvae.FactorAnalysis(train, n_latent=10).fit(seed=seed, accelerator="cpu")
    fit_time = time.perf_counter() - start
    ll = model.marginal_log_likelihood(heldout)
    latent = model.get_latent(data.adata)
    scores = cluster_scores(latent, data.adata.obs[LABEL_KEY], data.n_types, seed)
    out = row("FactorAnalysis", fit_time, ll_lognorm=ll, scores=scores)
    out["em_iterations"] = model.estimate.n_iter
    out["em_converged"] = bool(model.estimate.converged)
    return out


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
    dict
        See :func:`row`: the exact held-out log-likelihood (log-normalized space), and the
        ARI / NMI of its own clusters on all cells.
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
    scores = label_scores(data.adata.obs[LABEL_KEY], gmm.predict(every))
    return row(
        f"GMM diag on genes, reg_covar={reg_covar:g}", fit_time, ll_lognorm=ll, scores=scores
    )


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
    list of dict
        One row per model (:func:`row`).
    """
    vae = {"max_epochs": args.max_epochs, "n_samples": args.n_samples, "seed": args.seed}
    runs: list[tuple[str, Callable[[], Row]]] = [
        *[(c.__name__, lambda c=c: run_vae(c, data, **vae)) for c in VAES],
        ("PPCA", lambda: run_ppca(data, seed=args.seed)),
        ("FactorAnalysis", lambda: run_fa(data, seed=args.seed)),
        *[
            (f"GMM reg_covar={r:g}", lambda r=r: run_gmm_lognorm(data, reg_covar=r, seed=args.seed))
            for r in args.gmm_reg_covar
        ],
    ]
    if args.models is not None:
        runs = [(name, run) for name, run in runs if name.split()[0] in args.models]
    rows = []
    for name, run in runs:
        start = time.perf_counter()
        rows.append(run())
        ll = rows[-1]["ll_counts"] or rows[-1]["ll_lognorm"]
        print(
            f"  {name}: held-out {ll['mean']:.1f} ± {ll['se']:.1f}, ARI {rows[-1]['ari']:.3f}; "
            f"done in {time.perf_counter() - start:.1f} s",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    """Run every model on every selected data set; write the result file."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(1)
    sc.settings.verbosity = 0
    datasets = []
    start = time.perf_counter()
    with threadpool_limits(limits=1):
        for path in dataset_paths(args.data_dir, args.datasets):
            data = load_dataset(path, args.n_top_genes, args.heldout_fraction, args.seed)
            print(f"{data.name}: {describe(data.summary())}", flush=True)
            datasets.append({"summary": data.summary(), "rows": run_dataset(data, args)})
    settings = {k: v for k, v in vars(args).items() if k not in ("data_dir", "out_dir")}
    payload = {
        "settings": {**settings, "torch_threads": 1},
        "total_s": time.perf_counter() - start,
        "datasets": datasets,
    }
    write_result("baselines", payload, script="baselines", out_dir=args.out_dir, argv=argv)


if __name__ == "__main__":
    main()
