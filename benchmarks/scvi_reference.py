"""scvi-tools reference fit for the held-out log p(x) benchmark.

Trains ``scvi.model.SCVI`` on the *train* cells of a fixed split and scores the
*held-out* cells with the same quantities that ``scvae`` reports:

* per-cell held-out ELBO (``SCVI.get_elbo(return_mean=False)``; one Monte Carlo
  sample of (z, l), analytic KL terms, KL weight 1),
* per-cell held-out importance-weighted estimate of log p(x) with K samples
  (``SCVI.get_marginal_ll(return_mean=False)``), i.e. for every cell
  ``logsumexp_k[log p(x|z_k,l_k) + log p(z_k) + log p(l_k) - log q(z_k|x) - log q(l_k|x)] - log K``,
  in nats, higher is better, *not* averaged over minibatches,
* the held-out latent means, the fit wall time and the package versions.

The model is the scVI model of Lopez et al. (2019) as configured in ``scvae``:
ZINB likelihood, gene-wise dispersion, latent LogNormal library size with the
per-batch empirical prior (``use_observed_lib_size=False``), batch covariate.
Training uses every train cell (``train_size=1.0``: no validation split) and no
early stopping. scvi-tools' default KL warm-up (``n_epochs_kl_warmup=400`` on the
z-KL term) is kept unless ``--n-epochs-kl-warmup`` is given; the value in force is
written to the result file.

Before the held-out scores are trusted, the script re-derives the importance
weights of ``VAE.marginal_ll`` from scratch for the first held-out cells (its own
ZINB and Normal log-densities, the same random draws) and stores the largest
absolute difference as ``marginal_ll_check_max_abs_diff``.

This script runs inside the scvi-tools virtual environment
(``benchmarks/.venv-scvi``, created by ``benchmarks/heldout_vs_scvi.py``), e.g.::

    benchmarks/.venv-scvi/bin/python benchmarks/scvi_reference.py \\
        --h5ad data/pbmc3k_raw_annotated.h5ad --split split.npz \\
        --n-latent 10 --n-hidden 128 --n-layers 1 --dropout-rate 0.1 \\
        --max-epochs 100 --batch-size 128 --lr 1e-3 --n-samples 100 --seed 0 \\
        --out benchmarks/results/scvi_result.npz

``split.npz`` holds two integer arrays, ``train_idx`` and ``heldout_idx``
(row positions into the h5ad).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch

BATCH_KEY_DEFAULT = "batch"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Parameters
    ----------
    argv
        Arguments to parse; ``None`` reads ``sys.argv``.

    Returns
    -------
    argparse.Namespace
        The parsed options.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--h5ad", type=Path, required=True, help="AnnData with raw counts in X")
    p.add_argument(
        "--split",
        "--train-idx",
        "--heldout-idx",
        dest="split",
        type=Path,
        required=True,
        help="npz with integer arrays 'train_idx' and 'heldout_idx'",
    )
    p.add_argument("--batch-key", default=BATCH_KEY_DEFAULT, help="obs column of the batch")
    p.add_argument("--layer", default=None, help="layer holding counts (default: X)")
    p.add_argument("--n-latent", type=int, default=10)
    p.add_argument("--n-hidden", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=1)
    p.add_argument("--dropout-rate", type=float, default=0.1)
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--n-epochs-kl-warmup",
        type=int,
        default=None,
        help="override scvi's KL warm-up (epochs); 0 disables it; default: scvi's default",
    )
    p.add_argument("--n-samples", type=int, default=100, help="importance samples K")
    p.add_argument(
        "--mc-samples-per-pass",
        type=int,
        default=None,
        help="K is drawn in chunks of this size; must divide K (default: largest divisor <= 25)",
    )
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="result .npz")
    return p.parse_args(argv)


def largest_divisor_at_most(n: int, cap: int) -> int:
    """Return the largest divisor of ``n`` that is ``<= cap``.

    Parameters
    ----------
    n
        Positive integer to divide.
    cap
        Upper bound of the divisor.

    Returns
    -------
    int
        The divisor (at least 1).
    """
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def load_split(h5ad: Path, split: Path) -> tuple[ad.AnnData, ad.AnnData]:
    """Read the data set and cut it into train and held-out AnnData objects.

    Parameters
    ----------
    h5ad
        Path to the AnnData file.
    split
        Path to the npz with ``train_idx`` and ``heldout_idx``.

    Returns
    -------
    tuple of AnnData
        ``(adata_train, adata_heldout)``, both in-memory copies.
    """
    adata = ad.read_h5ad(h5ad)
    idx = np.load(split)
    train_idx = np.asarray(idx["train_idx"], dtype=np.int64)
    heldout_idx = np.asarray(idx["heldout_idx"], dtype=np.int64)
    if np.intersect1d(train_idx, heldout_idx).size:
        raise ValueError("train and held-out indices overlap")
    return adata[train_idx].copy(), adata[heldout_idx].copy()


def build_model(adata_train: ad.AnnData, args: argparse.Namespace):  # -> scvi.model.SCVI
    """Register the train cells and build the scVI model.

    Parameters
    ----------
    adata_train
        Train cells (raw counts).
    args
        Parsed options (architecture and covariates).

    Returns
    -------
    scvi.model.SCVI
        Untrained model; the library prior is the empirical mean/variance of the
        log library size of the *train* cells of each batch.
    """
    import scvi

    batch_key = args.batch_key if args.batch_key in adata_train.obs else None
    scvi.model.SCVI.setup_anndata(adata_train, layer=args.layer, batch_key=batch_key)
    return scvi.model.SCVI(
        adata_train,
        n_hidden=args.n_hidden,
        n_latent=args.n_latent,
        n_layers=args.n_layers,
        dropout_rate=args.dropout_rate,
        dispersion="gene",
        gene_likelihood="zinb",
        use_observed_lib_size=False,
        latent_distribution="normal",
    )


def plan_kwargs_for(args: argparse.Namespace) -> dict:
    """Training-plan options: the learning rate and, if asked for, the KL warm-up.

    Parameters
    ----------
    args
        Parsed options.

    Returns
    -------
    dict
        Keyword arguments for ``scvi.train.TrainingPlan``.
    """
    kwargs: dict = {"lr": args.lr}
    if args.n_epochs_kl_warmup is not None:
        kwargs["n_epochs_kl_warmup"] = args.n_epochs_kl_warmup or None
        kwargs["n_steps_kl_warmup"] = None
    return kwargs


def effective_kl_warmup(args: argparse.Namespace) -> int | None:
    """The ``n_epochs_kl_warmup`` the training plan actually used.

    Parameters
    ----------
    args
        Parsed options.

    Returns
    -------
    int or None
        Warm-up length in epochs; ``None`` when there was no warm-up.
    """
    import inspect

    from scvi.train import TrainingPlan

    if args.n_epochs_kl_warmup is not None:
        return args.n_epochs_kl_warmup or None
    return inspect.signature(TrainingPlan.__init__).parameters["n_epochs_kl_warmup"].default


def train(model, args: argparse.Namespace) -> float:
    """Fit the model on all train cells; no validation split, no early stopping.

    Parameters
    ----------
    model
        The ``scvi.model.SCVI`` to train.
    args
        Parsed options.

    Returns
    -------
    float
        Wall time of ``model.train`` in seconds.
    """
    t0 = time.perf_counter()
    model.train(
        max_epochs=args.max_epochs,
        accelerator="cpu",
        devices=1,
        train_size=1.0,
        validation_size=None,
        batch_size=args.batch_size,
        early_stopping=False,
        plan_kwargs=plan_kwargs_for(args),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return time.perf_counter() - t0


def history_arrays(model) -> dict[str, np.ndarray]:
    """Per-epoch training curves recorded by scvi-tools.

    Parameters
    ----------
    model
        A trained ``scvi.model.SCVI``.

    Returns
    -------
    dict of np.ndarray
        ``history_<key>`` -> values per epoch (e.g. ``history_elbo_train``, which
        scvi logs as the *negative* ELBO per cell).
    """
    out: dict[str, np.ndarray] = {}
    for key, frame in (model.history or {}).items():
        out[f"history_{key}"] = np.asarray(frame.to_numpy(dtype=np.float64)).ravel()
    return out


def zinb_log_pmf(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, zi_logits: torch.Tensor
) -> torch.Tensor:
    """Zero-inflated negative binomial log pmf, written independently of scvi.

    Parameters
    ----------
    x
        Counts.
    mu
        NB mean.
    theta
        NB inverse dispersion.
    zi_logits
        Logit of the zero-inflation probability.

    Returns
    -------
    torch.Tensor
        Element-wise log p(x), including the ``-log x!`` term.
    """
    log_theta_mu = torch.log(theta + mu)
    nb = (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
        + theta * (torch.log(theta) - log_theta_mu)
        + x * (torch.log(mu) - log_theta_mu)
    )
    log_pi = torch.nn.functional.logsigmoid(zi_logits)
    log_1m_pi = torch.nn.functional.logsigmoid(-zi_logits)
    zero = torch.logaddexp(log_pi, log_1m_pi + nb)
    return torch.where(x > 0, log_1m_pi + nb, zero)


@torch.inference_mode()
def manual_log_weights(module, tensors: dict, n_samples: int) -> torch.Tensor:
    """Importance log-weights of the scVI model, recomputed from scratch.

    Draws from the module's own encoders (so that the random stream is the same
    as in ``VAE.marginal_ll`` when seeded identically) and evaluates
    ``log p(x|z,l) + log p(z) + log p(l) - log q(z|x) - log q(l|x)``.

    Parameters
    ----------
    module
        The trained ``scvi.module.VAE`` (eval mode).
    tensors
        One minibatch from the model's data loader.
    n_samples
        Samples drawn in one pass (as ``n_mc_samples_per_pass``).

    Returns
    -------
    torch.Tensor
        Log-weights, shape ``(n_samples, n_cells)``.
    """
    from scvi import REGISTRY_KEYS

    x = tensors[REGISTRY_KEYS.X_KEY]
    batch_index = tensors[REGISTRY_KEYS.BATCH_KEY]
    inf = module.inference(x=x, batch_index=batch_index, n_samples=n_samples)
    z, library, qz, ql = inf["z"], inf["library"], inf["qz"], inf["ql"]
    if n_samples == 1:
        z, library = z.unsqueeze(0), library.unsqueeze(0)
    gen = module.generative(
        z=z, library=library, batch_index=batch_index, y=tensors[REGISTRY_KEYS.LABELS_KEY]
    )
    px = gen["px"]
    log_px = zinb_log_pmf(x, px.mu, px.theta, px.zi_logits).sum(-1)
    std_normal = torch.distributions.Normal(0.0, 1.0)
    log_pz = std_normal.log_prob(z).sum(-1)
    log_qz = torch.distributions.Normal(qz.loc, qz.scale).log_prob(z).sum(-1)
    means = module.library_log_means[0, batch_index.long().squeeze(-1)]
    var = module.library_log_vars[0, batch_index.long().squeeze(-1)]
    log_pl = torch.distributions.Normal(means, var.sqrt()).log_prob(library.squeeze(-1))
    log_ql = torch.distributions.Normal(ql.loc, ql.scale).log_prob(library).squeeze(-1)
    return log_px + log_pz + log_pl - log_qz - log_ql


def verify_marginal_ll(model, adata_heldout: ad.AnnData, seed: int, n_cells: int = 32) -> float:
    """Compare ``VAE.marginal_ll`` with the from-scratch estimator on the same draws.

    Parameters
    ----------
    model
        Trained ``scvi.model.SCVI``.
    adata_heldout
        Held-out cells (the first ``n_cells`` are used).
    seed
        Seed used for both estimators.
    n_cells
        Cells to check.

    Returns
    -------
    float
        Largest absolute per-cell difference in nats (float32 round-off expected).
    """
    n_samples = 8
    sub = adata_heldout[: min(n_cells, adata_heldout.n_obs)].copy()
    model.module.eval()
    loader = model._make_data_loader(adata=model._validate_anndata(sub), batch_size=n_cells)
    tensors = next(iter(loader))
    torch.manual_seed(seed)
    theirs = model.module.marginal_ll(
        tensors, n_mc_samples=n_samples, n_mc_samples_per_pass=n_samples
    )
    torch.manual_seed(seed)
    log_w = manual_log_weights(model.module, tensors, n_samples)
    ours = torch.logsumexp(log_w, dim=0) - math.log(n_samples)
    return float((theirs - ours).abs().max())


def mean_of_minibatch_means(values: np.ndarray, batch_size: int) -> float:
    """Reproduce ``get_marginal_ll(return_mean=True)`` from per-cell values.

    scvi-tools 1.4 averages the per-minibatch means with equal weight, so a short
    last minibatch is over-weighted; this is not the mean over cells.

    Parameters
    ----------
    values
        Per-cell values in data-loader order.
    batch_size
        Minibatch size of the (sequential) data loader.

    Returns
    -------
    float
        Mean of the per-minibatch means.
    """
    chunks = [values[i : i + batch_size].mean() for i in range(0, len(values), batch_size)]
    return float(np.mean(chunks))


def score_heldout(model, adata_heldout: ad.AnnData, args: argparse.Namespace) -> dict:
    """Per-cell held-out ELBO and IWAE log p(x), latent means and timings.

    Parameters
    ----------
    model
        Trained ``scvi.model.SCVI``.
    adata_heldout
        Held-out cells (raw counts).
    args
        Parsed options (``n_samples``, ``seed``, ...).

    Returns
    -------
    dict
        Arrays and scalars to store in the result file.
    """
    per_pass = args.mc_samples_per_pass or largest_divisor_at_most(args.n_samples, 25)
    if args.n_samples % per_pass:
        # scvi draws ceil(K / per_pass) * per_pass samples but divides by K.
        raise ValueError("--mc-samples-per-pass must divide --n-samples")
    model.module.eval()
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    elbo = model.get_elbo(adata_heldout, batch_size=args.eval_batch_size, return_mean=False)
    t_elbo = time.perf_counter() - t0
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    mll = model.get_marginal_ll(
        adata_heldout,
        n_mc_samples=args.n_samples,
        batch_size=args.eval_batch_size,
        return_mean=False,
        n_mc_samples_per_pass=per_pass,
    )
    t_mll = time.perf_counter() - t0
    latent = model.get_latent_representation(adata_heldout, batch_size=args.eval_batch_size)
    return {
        "elbo": np.asarray(elbo, dtype=np.float64),
        "marginal_ll": np.asarray(mll, dtype=np.float64),
        # what get_marginal_ll(return_mean=True) returns for the same draws: the
        # unweighted mean of the per-minibatch means (not the mean over cells)
        "marginal_ll_mean_api": mean_of_minibatch_means(np.asarray(mll), args.eval_batch_size),
        "mc_samples_per_pass": per_pass,
        "latent": np.asarray(latent, dtype=np.float32),
        "elbo_time_s": t_elbo,
        "marginal_ll_time_s": t_mll,
    }


def versions() -> dict[str, str]:
    """Versions of the packages that matter for the result.

    Returns
    -------
    dict of str
        Package name -> version string.
    """
    from importlib.metadata import version

    names = ("scvi-tools", "torch", "lightning", "anndata", "numpy")
    return {**{name: version(name) for name in names}, "python": platform.python_version()}


def main(argv: list[str] | None = None) -> None:
    """Train, score and write the result file.

    Parameters
    ----------
    argv
        Command-line arguments; ``None`` reads ``sys.argv``.
    """
    import scvi

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scvi.settings.seed = args.seed
    adata_train, adata_heldout = load_split(args.h5ad, args.split)
    model = build_model(adata_train, args)
    fit_time = train(model, args)
    epochs = int(model.trainer.current_epoch) if getattr(model, "trainer", None) else None
    check = verify_marginal_ll(model, adata_heldout, args.seed)
    scores = score_heldout(model, adata_heldout, args)
    meta = {
        "versions": versions(),
        "n_train": int(adata_train.n_obs),
        "n_heldout": int(adata_heldout.n_obs),
        "n_genes": int(adata_train.n_vars),
        "max_epochs": args.max_epochs,
        "epochs_run": epochs if epochs is not None else args.max_epochs,
        "n_epochs_kl_warmup": effective_kl_warmup(args),
        "n_cells_trained_on": len(model.train_indices),
        "n_cells_validation": 0
        if model.validation_indices is None
        else len(model.validation_indices),
        "torch_threads": torch.get_num_threads(),
        "library_log_means": model.module.library_log_means.cpu().numpy().ravel().tolist(),
        "library_log_vars": model.module.library_log_vars.cpu().numpy().ravel().tolist(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        args.out,
        **scores,
        **history_arrays(model),
        fit_time_s=fit_time,
        marginal_ll_check_max_abs_diff=check,
        meta_json=json.dumps(meta),
    )
    print(
        json.dumps(
            {
                "fit_time_s": round(fit_time, 2),
                "heldout_mean_elbo": float(scores["elbo"].mean()),
                "heldout_mean_marginal_ll": float(scores["marginal_ll"].mean()),
                "marginal_ll_mean_api": scores["marginal_ll_mean_api"],
                "marginal_ll_check_max_abs_diff": check,
                **{k: meta[k] for k in ("n_train", "n_heldout", "n_genes", "n_epochs_kl_warmup")},
                "versions": meta["versions"],
            }
        )
    )


if __name__ == "__main__":
    main()
