"""scvi-tools side of every benchmark: runs INSIDE ``benchmarks/.venv-scvi``, one fit per process.

Reads the same job file as ``scvae_worker.py`` (its docstring lists the keys) and trains
``scvi.model.SCVI`` the way that job says::

    benchmarks/.venv-scvi/bin/python benchmarks/scvi_worker.py --job JOB.json --out STEM

* ``settings="same"``: ZINB, gene dispersion, latent library with the per-batch empirical prior
  (``use_observed_lib_size=False``), the job's architecture, epochs, batch size and learning
  rate, every train cell (``train_size=1.0``, no validation), no early stopping; the KL warm-up
  is ``kl_warmup`` epochs of the z-KL term, or scvi-tools' default (400 epochs) when null.
* ``settings="defaults"``: ``SCVI(adata)`` and ``model.train()`` as a user gets them, capped at
  ``defaults_max_epochs`` when given. With ``validation_split`` (an npz of ``train_indices`` and
  ``validation_indices``: the cells scvae trained and validated on) the same cells are used
  (``datasplitter_kwargs={"external_indexing": ...}``) and the validation ELBO is logged after
  every epoch (``check_val_every_n_epoch=1``); scvi-tools' default split is 90 / 10 as well.

Scores of the held-out cells: per-cell ELBO (``get_elbo(return_mean=False)``, one draw) and
per-cell IWAE estimate of log p(x) (``get_marginal_ll(return_mean=False)``, drawn in passes
of the largest divisor of K up to 25, each seeded with the job's seed). With ``check_iwae``
the importance weights of the first 32 held-out cells are re-derived from scratch (its own ZINB
and Normal log-densities on the same draws) and the largest absolute difference to
``VAE.marginal_ll`` is reported as ``iwae_check_max_abs_diff``.

With ``throughput`` (see ``scvae_worker.py``) it times the same model at each batch size
instead (``_common.step_clock``, every cell trains, rows written as they are measured).

Output: ``STEM.json`` and ``STEM.npz`` with the keys of ``scvae_worker.py``, plus
``n_epochs_kl_warmup`` (the warm-up in force), ``marginal_ll_mean_api`` (what
``get_marginal_ll(return_mean=True)`` returns for the same draws: the unweighted mean of the
per-minibatch means) and the library prior.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    SCVI_VERSIONS,
    cuda_device_name,
    cuda_peak_gb,
    epoch_clock,
    load_average,
    peak_rss_gb,
    read_job,
    read_split,
    step_clock,
    versions,
    write_worker_output,
)

EVAL_BATCH_SIZE = 128


def largest_divisor_at_most(n: int, cap: int) -> int:
    """The largest divisor of ``n`` that is at most ``cap`` (at least 1)."""
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


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

    Draws from the module's own encoders (so the random stream is that of ``VAE.marginal_ll``
    when seeded identically) and evaluates
    ``log p(x|z,l) + log p(z) + log p(l) - log q(z|x) - log q(l|x)``.

    Parameters
    ----------
    module
        The trained ``scvi.module.VAE`` (eval mode).
    tensors
        One minibatch from the model's data loader.
    n_samples
        Samples drawn in one pass.

    Returns
    -------
    torch.Tensor
        ``(n_samples, n_cells)`` log-weights.
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


def check_marginal_ll(model, heldout, seed: int, n_cells: int = 32) -> float:
    """Largest per-cell difference of ``VAE.marginal_ll`` and the from-scratch estimator.

    Both run on the same minibatch of the first ``n_cells`` held-out cells with 8 samples and
    the same seed; float32 round-off is expected.
    """
    n_samples = 8
    sub = heldout[: min(n_cells, heldout.n_obs)].copy()
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
    """What ``get_marginal_ll(return_mean=True)`` returns: the mean of per-minibatch means."""
    chunks = [values[i : i + batch_size].mean() for i in range(0, len(values), batch_size)]
    return float(np.mean(chunks))


def default_kl_warmup_epochs() -> int | None:
    """scvi-tools' default ``n_epochs_kl_warmup`` of its training plan."""
    from scvi.train import TrainingPlan

    return inspect.signature(TrainingPlan.__init__).parameters["n_epochs_kl_warmup"].default


def fit_scvi(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train SCVI as the job says, score the held-out cells.

    Parameters
    ----------
    job
        See ``scvae_worker.py``.

    Returns
    -------
    tuple of dict
        ``(meta, arrays)``.
    """
    import anndata as ad
    import scvi

    torch.set_num_threads(int(job.get("threads", 1)))
    seed = int(job.get("seed", 0))
    scvi.settings.seed = seed
    adata = ad.read_h5ad(job["h5ad"])
    train_idx, heldout_idx = read_split(job, adata.n_obs)
    train = adata if not job.get("split") else adata[train_idx].copy()
    heldout = adata[heldout_idx].copy() if heldout_idx.size else None
    batch_key = job.get("batch_key")
    scvi.model.SCVI.setup_anndata(train, batch_key=batch_key)
    clock = None
    if job.get("clock"):
        clock = epoch_clock(time.thread_time if job["clock"] == "cpu" else time.perf_counter)
    train_kwargs: dict[str, Any] = {
        "accelerator": job.get("accelerator", "cpu"),
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    if clock is not None:
        train_kwargs["callbacks"] = [clock]
    warmup = job.get("kl_warmup")
    if job.get("settings", "same") == "same":
        model = scvi.model.SCVI(
            train,
            n_hidden=job.get("n_hidden", 128),
            n_latent=job.get("n_latent", 10),
            n_layers=job.get("n_layers", 1),
            dropout_rate=job.get("dropout_rate", 0.1),
            dispersion="gene",
            gene_likelihood="zinb",
            use_observed_lib_size=False,
            latent_distribution="normal",
        )
        plan: dict[str, Any] = {"lr": job.get("lr", 1e-3)}
        if warmup is not None:
            plan.update(n_epochs_kl_warmup=int(warmup) or None, n_steps_kl_warmup=None)
        train_kwargs.update(
            max_epochs=job.get("max_epochs", 100),
            train_size=1.0,
            validation_size=None,
            batch_size=job.get("batch_size", 128),
            early_stopping=False,
            plan_kwargs=plan,
        )
        in_force = (int(warmup) or None) if warmup is not None else default_kl_warmup_epochs()
        notes = f"KL warm-up {in_force} epochs (z), latent library"
    else:
        model = scvi.model.SCVI(train)
        if job.get("defaults_max_epochs"):
            train_kwargs["max_epochs"] = job["defaults_max_epochs"]
        if job.get("validation_split"):
            with np.load(job["validation_split"]) as cells:
                indexing = [cells["train_indices"], cells["validation_indices"], np.arange(0)]
            train_kwargs["datasplitter_kwargs"] = {"external_indexing": indexing}
            train_kwargs["check_val_every_n_epoch"] = 1
        in_force = default_kl_warmup_epochs()
        notes = f"scvi-tools defaults (observed library, KL warm-up {in_force} epochs)"
    load_before = load_average()
    cuda_peak_gb(reset=True)
    t0 = time.perf_counter()
    model.train(**train_kwargs)
    fit_time = time.perf_counter() - t0
    peak = peak_rss_gb()
    peak_gpu = cuda_peak_gb()
    load_after = load_average()
    epochs = len(model.history["elbo_train"])
    validation_elbo = None
    if "elbo_validation" in model.history:
        # scvi-tools logs the negative ELBO per cell
        validation_elbo = -model.history["elbo_validation"].to_numpy(dtype=np.float64).ravel()
    model.module.eval()
    arrays: dict[str, Any] = {}
    if job.get("latent") == "all":
        arrays["latent"] = model.get_latent_representation(adata, batch_size=1024)
    meta: dict[str, Any] = {}
    t0 = time.perf_counter()
    if heldout is not None:  # not set up here: scvi transfers the train cells' registry
        if job.get("check_iwae"):
            meta["iwae_check_max_abs_diff"] = check_marginal_ll(model, heldout, seed)
        if job.get("heldout_elbo"):
            torch.manual_seed(seed)
            arrays["heldout_elbo"] = np.asarray(
                model.get_elbo(heldout, batch_size=EVAL_BATCH_SIZE, return_mean=False),
                dtype=np.float64,
            )
        k = int(job.get("iwae_samples", 0))
        if k:
            torch.manual_seed(seed)
            ll = model.get_marginal_ll(
                heldout,
                n_mc_samples=k,
                batch_size=EVAL_BATCH_SIZE,
                return_mean=False,
                n_mc_samples_per_pass=largest_divisor_at_most(k, 25),
            )
            arrays["heldout_ll"] = np.asarray(ll, dtype=np.float64)
            meta["marginal_ll_mean_api"] = mean_of_minibatch_means(
                arrays["heldout_ll"], EVAL_BATCH_SIZE
            )
        if job.get("latent") == "heldout":
            arrays["latent"] = model.get_latent_representation(heldout, batch_size=1024)
    score_time = time.perf_counter() - t0
    if "latent" in arrays:
        arrays["latent"] = np.asarray(arrays["latent"], dtype=np.float32)
    n_fit = len(model.train_indices)
    meta.update(
        {
            "tool": f"scvi-tools {scvi.__version__} SCVI",
            "fit_time_s": fit_time,
            "epochs": epochs,
            "best_epoch": None,
            "n_train": int(train.n_obs),
            "n_fit_cells": int(n_fit),
            "peak_rss_gb": peak,
            "torch_threads": torch.get_num_threads(),
            "n_epochs_kl_warmup": in_force,
            "kl_warmup": f"{in_force} epochs, z only" if in_force else "none",
            "use_observed_lib_size": bool(model.module.use_observed_lib_size),
            "notes": notes,
            "score_time_s": score_time,
            "validation_elbo": validation_elbo,
            "load_before_after": [load_before, load_after],
        }
    )
    if peak_gpu is not None:
        meta["peak_gpu_gb"] = peak_gpu
        meta["gpu"] = cuda_device_name()
    if not model.module.use_observed_lib_size:  # the empirical prior of the latent library
        meta["library_log_means"] = model.module.library_log_means.cpu().numpy().ravel()
        meta["library_log_vars"] = model.module.library_log_vars.cpu().numpy().ravel()
    if clock is not None:
        meta["epoch_times"] = clock.epoch_times
        meta["validation_times"] = clock.validation_times
        meta["cells_per_epoch"] = n_fit  # scvi-tools keeps the last, partial minibatch
    return meta, arrays


def throughput_scvi(job: dict[str, Any], out: Path) -> dict[str, Any]:
    """Cells per second of the ``"same"`` SCVI at each of the job's batch sizes.

    ``setup_anndata`` runs once; each batch size is a fresh ``SCVI`` trained on every cell
    and timed and stopped by ``_common.step_clock``. The rows are written to ``out`` after
    each batch size.

    Parameters
    ----------
    job
        See ``scvae_worker.py`` (``throughput``).
    out
        The output stem.

    Returns
    -------
    dict
        The keys of ``scvae_worker.throughput_zinbvae``.
    """
    import anndata as ad
    import scvi

    spec = job["throughput"]
    torch.set_num_threads(int(job.get("threads", 1)))
    scvi.settings.seed = int(job.get("seed", 0))
    t0 = time.perf_counter()
    adata = ad.read_h5ad(job["h5ad"])
    scvi.model.SCVI.setup_anndata(adata, batch_key=job.get("batch_key"))
    meta: dict[str, Any] = {
        "tool": f"scvi-tools {scvi.__version__} SCVI",
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "nnz": int(adata.X.nnz),
        "read_s": time.perf_counter() - t0,
        "gpu": cuda_device_name() if job.get("accelerator", "cpu") != "cpu" else None,
        "torch_threads": torch.get_num_threads(),
        "versions": versions(SCVI_VERSIONS),
        "rows": [],
    }
    warmup, max_steps = int(spec["warmup_steps"]), int(spec["max_timed_steps"])
    for batch_size in spec["batch_sizes"]:
        row: dict[str, Any] = {"batch_size": int(batch_size)}
        clock = step_clock(warmup, float(spec["timed_s"]), max_steps)
        steps_per_epoch = max(1, math.ceil(adata.n_obs / batch_size))
        cuda_peak_gb(reset=True)
        t0 = time.perf_counter()
        model = None
        try:
            model = scvi.model.SCVI(
                adata,
                n_hidden=job.get("n_hidden", 128),
                n_latent=job.get("n_latent", 10),
                n_layers=job.get("n_layers", 1),
                dropout_rate=job.get("dropout_rate", 0.1),
                dispersion="gene",
                gene_likelihood="zinb",
                use_observed_lib_size=False,
                latent_distribution="normal",
            )
            model.train(
                max_epochs=math.ceil((warmup + max_steps + 1) / steps_per_epoch) + 1,
                accelerator=job.get("accelerator", "cpu"),
                devices=1,
                train_size=1.0,
                validation_size=None,
                batch_size=int(batch_size),
                early_stopping=False,
                plan_kwargs={"lr": job.get("lr", 1e-3)},
                callbacks=[clock],
                enable_progress_bar=False,
                enable_model_summary=False,
            )
        except (RuntimeError, MemoryError, ValueError) as err:  # CUDA out of memory included
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
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        write_worker_output(out, meta, {})
    return meta


def main(argv: list[str] | None = None) -> None:
    """Run the job and write its output files."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--job", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    job = read_job(args.job)
    if job.get("throughput"):
        throughput_scvi(job, args.out)
        return
    meta, arrays = fit_scvi(job)
    meta["versions"] = versions(SCVI_VERSIONS)
    write_worker_output(args.out, meta, arrays)


if __name__ == "__main__":
    main()
