"""SSVAE label prior p(y) and alpha, on the label-transfer splits.

The SSVAE's prior ``pi`` enters the bound ``U(x)`` of every unlabelled cell (``log pi_y``),
so it pulls the query's labels towards the reference's composition. This compares
``label_prior="frequencies"`` (of the labelled cells) with ``"uniform"`` on the splits of
``label_transfer.py`` (same cells, genes and hidden labels: its ``make_split``), for both
routes (``joint``: reference + query trained together; ``reference``: the reference alone,
then ``map_query``), over several seeds. ``--alpha0`` fits each prior with ``alpha =
ALPHA_0 * n_cells / n_labelled`` for the given ``ALPHA_0`` values instead of the default
alpha. scvae only, as installed (the working tree), each fit in a process of its own with one
torch thread; ``--jobs`` fits run at a time. ::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/ssvae_prior.py --jobs 2
    python benchmarks/render.py --print ssvae_prior --from benchmarks/results

Per split, route, prior and seed: accuracy, macro-F1 and expected calibration error of the
query cells (``label_transfer.scores``), the temperature, epochs and fit seconds. Writes
``benchmarks/results/ssvae_prior.json``.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from _common import RESULTS_DIR, load_average, write_result
from label_transfer import SPLITS, UNKNOWN, make_split, scores

WORK_DIR = RESULTS_DIR / "ssvae_prior"
PRIORS = ("frequencies", "uniform")
ROUTES = ("joint", "reference")


def fit_one(job: dict[str, Any]) -> dict[str, Any]:
    """One SSVAE fit (and mapping) on a split: the query's scores. Runs in a worker process."""
    import anndata as ad
    import torch

    import scvae

    torch.set_num_threads(1)
    adata = ad.read_h5ad(job["h5ad"])
    is_query = adata.obs["is_query"].to_numpy().astype(bool)
    truth = adata.obs["truth"].astype(str).to_numpy()[is_query]
    train = adata if job["route"] == "joint" else adata[~is_query].copy()
    alpha = None
    if job["alpha0"] is not None:
        n_labelled = int((train.obs["labels"].astype(str) != UNKNOWN).sum())
        alpha = job["alpha0"] * train.n_obs / n_labelled
    model = scvae.SSVAE(
        train,
        labels_key="labels",
        unlabeled_category=UNKNOWN,
        batch_key="batch",
        label_prior=job["prior"],
        alpha=alpha,
    )
    start = time.perf_counter()
    model.fit(max_epochs=job["max_epochs"], seed=job["seed"], progress_bar=False, accelerator="cpu")
    fit_s = time.perf_counter() - start
    if job["route"] == "joint":
        frame = model.predict(soft=True)
        proba = frame.to_numpy(dtype=np.float64)[is_query]
        map_epochs = None
    else:
        query = adata[is_query].copy()
        query.obs = query.obs[["batch"]]  # the query has no labels
        mapped = model.map_query(
            query, max_epochs=job["query_epochs"], progress_bar=False, accelerator="cpu"
        )
        frame = mapped.predict(query, soft=True)
        proba = frame.to_numpy(dtype=np.float64)
        map_epochs = mapped.training.get("n_epochs_trained")
    row = {k: job[k] for k in ("split", "route", "prior", "alpha0", "seed")}
    row.update(scores(truth, proba, [str(c) for c in frame.columns]))
    row.update(
        alpha=model.alpha,
        temperature=model.temperature,
        epochs=len(model.history),
        map_epochs=map_epochs,
        fit_s=round(fit_s, 1),
    )
    return row


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sd over seeds of each (split, route, prior, alpha0)."""
    out = []
    fields = ("split", "route", "prior", "alpha0")
    for key in sorted({tuple(r[f] for f in fields) for r in rows}, key=str):
        runs = [r for r in rows if tuple(r[f] for f in fields) == key]
        entry: dict[str, Any] = dict(zip(fields, key, strict=True))
        entry["seeds"] = [r["seed"] for r in runs]
        for metric in ("accuracy", "macro_f1", "ece"):
            values = np.array([r[metric] for r in runs])
            entry[metric] = {
                "mean": float(values.mean()),
                "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "values": values.tolist(),
            }
        out.append(entry)
    return out


def main(argv: list[str] | None = None) -> None:
    """Every (split, route, prior, seed) fit, ``--jobs`` at a time; a table; the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--splits", nargs="+", choices=list(SPLITS), default=list(SPLITS))
    p.add_argument("--priors", nargs="+", choices=PRIORS, default=list(PRIORS))
    p.add_argument("--routes", nargs="+", choices=ROUTES, default=list(ROUTES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument(
        "--alpha0", nargs="+", type=float, default=None, help="ALPHA_0 values; default: alpha's"
    )
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--query-epochs", type=int, default=100)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--name", default="ssvae_prior")
    p.add_argument("--quick", action="store_true", help="a smoke test: a few hundred cells")
    args = p.parse_args(argv)

    load_before = load_average()
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    jobs = []
    for split in args.splits:
        adata, _ = make_split(split, args.quick)
        h5ad = WORK_DIR / f"{split}{'_quick' if args.quick else ''}.h5ad"
        adata.write_h5ad(h5ad)
        alphas = args.alpha0 or [None]
        for route, prior, alpha0, seed in itertools.product(
            args.routes, args.priors, alphas, args.seeds
        ):
            jobs.append(
                {
                    "h5ad": str(h5ad),
                    "split": split,
                    "route": route,
                    "prior": prior,
                    "alpha0": alpha0,
                    "seed": seed,
                    "max_epochs": args.max_epochs,
                    "query_epochs": args.query_epochs,
                }
            )
    rows = []
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch state
    with ProcessPoolExecutor(args.jobs, mp_context=context, max_tasks_per_child=1) as pool:
        for row in pool.map(fit_one, jobs):
            rows.append(row)
            print(
                f"{row['split']:26s} {row['route']:9s} {row['prior']:11s} "
                f"alpha {row['alpha']:.1f} seed {row['seed']}: "
                f"acc {row['accuracy']:.3f} mF1 {row['macro_f1']:.3f} ECE {row['ece']:.3f} "
                f"T {row['temperature']:.2f} ({row['fit_s']:.0f} s)",
                flush=True,
            )
    table = summary(rows)
    print(
        f"\n{'split':26s} {'route':9s} {'prior':11s} alpha0 {'accuracy':>13s} {'macro-F1':>13s} ECE"
    )
    for e in table:
        cells = [f"{e[m]['mean']:.3f} ± {e[m]['sd']:.3f}" for m in ("accuracy", "macro_f1", "ece")]
        a0 = "-" if e["alpha0"] is None else f"{e['alpha0']:g}"
        print(f"{e['split']:26s} {e['route']:9s} {e['prior']:11s} {a0:>6s} " + "  ".join(cells))
    payload = {
        "settings": vars(args),
        "load_before": load_before,
        "load_after": load_average(),
        "runs": rows,
        "summary": table,
    }
    write_result(
        args.name, payload, script="ssvae_prior", argv=sys.argv[1:] if argv is None else argv
    )


if __name__ == "__main__":
    main()
