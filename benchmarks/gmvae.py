"""GMVAE on the shared data: held-out log p(x), its clusters against the post-hoc ones, mixing.

What it measures
----------------
For each ``*.h5ad`` file in ``--data-dir``, with the split and genes of ``baselines.py``
(seeded 90 % / 10 % split, the 2,000 most highly variable genes of the train cells), and for
each seed of ``--seeds``:

1. ``ZINBVAE(train, batch_key=...)`` and ``GMVAE(train, n_components=K, batch_key=...)`` with
   ``K`` = the number of cell types, ``fit(train_size=0.9, seed=seed)`` with the same total
   of epochs: ``--max-epochs`` for the ZINBVAE, ``--n-epochs-pretrain`` (default three
   quarters of it, the model's default split) of pretraining plus the rest in the mixture
   phase for the GMVAE (both with early stopping on the validation ELBO); the GMVAE's
   ``n_latent`` is ``--n-latent`` (default: the model's default), the ZINBVAE's its default;
   ``batch_key="batch"`` when the file has more than one batch.
2. Held-out log p(x) per cell, IWAE with ``--n-samples`` importance samples, both models, and
   the paired difference GMVAE - ZINBVAE on the same held-out cells.
3. Clusters of all cells (train and held-out), ARI / NMI against ``cell_type``:
   GMVAE's own (``predict``); ``scvae.tl.gmm`` (full covariances, K types) on the ZINBVAE
   latent; Leiden on the 15-NN graph of the ZINBVAE latent and of PCA (scanpy
   ``normalize_total(1e4)``, ``log1p``, ``pca(50)``) at resolution 1.0, and at the best
   resolution of 0.2, 0.4, ..., 2.0 by NMI (this one uses the labels: reported apart).
4. Batch mixing (multi-batch files): ``scvae.tl.evaluate``'s scaled iLISI and kBET (per cell
   type) on the GMVAE and ZINBVAE latents of all cells.
5. Failure modes: components holding no cell (``n_occupied``), the GMVAE's validation ELBO.
6. ``--select-k DATASET ...``: GMVAE with ``n_components=None`` over ``--candidates`` (the
   held-out-ELBO choice of K, on the validation cells of the fit) and ``n_init`` restarts, seed 0.

The measurements go to ``<out-dir>/<--name>.json``; ``--merge a.json b.json`` combines the
results of several runs (e.g. data sets run in parallel) into ``<out-dir>/gmvae.json``.
Nothing is asserted.

Run from the repository root::

    python benchmarks/gmvae.py                                 # every data set, seeds 0 1 2
    python benchmarks/gmvae.py --datasets pbmc_3chemistries_small --seeds 0 --max-epochs 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import scanpy as sc
import torch
from _common import (
    DATA_DIR,
    DOCS,
    LABEL_KEY,
    RESULTS_DIR,
    Dataset,
    dataset_paths,
    describe,
    label_scores,
    load_dataset,
    md_table,
    mean_se,
    paired_difference,
    write_result,
    write_section,
)
from threadpoolctl import threadpool_limits

import scvae
from scvae import metrics

RESOLUTIONS = metrics.DEFAULT_RESOLUTIONS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--datasets", nargs="+", default=None, help="file stems (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--n-epochs-pretrain", type=int, default=None)
    p.add_argument("--n-latent", type=int, default=None, help="GMVAE's (default: its own)")
    p.add_argument("--n-top-genes", type=int, default=2000)
    p.add_argument("--heldout-fraction", type=float, default=0.1)
    p.add_argument("--n-samples", type=int, default=100, help="IWAE importance samples")
    p.add_argument("--select-k", nargs="*", default=[], help="data sets for the choice of K")
    p.add_argument("--candidates", type=int, nargs="+", default=None)
    p.add_argument("--n-init", type=int, default=2, help="restarts in the choice of K")
    p.add_argument("--skip-main", action="store_true", help="only the --select-k runs")
    p.add_argument("--name", default="gmvae")
    p.add_argument("--merge", nargs="+", type=Path, default=None)
    p.add_argument("--render", type=Path, default=None, help="a result file -> docs table")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return p.parse_args(argv)


def pretrain_epochs(args: argparse.Namespace) -> int:
    """Epochs of the GMVAE's pretraining; the mixture phase gets the rest of ``max_epochs``."""
    pre = args.n_epochs_pretrain or max(1, 3 * args.max_epochs // 4)
    return min(pre, args.max_epochs - 1)


def latent_option(args: argparse.Namespace) -> dict[str, int]:
    """``{"n_latent": ...}`` for the GMVAE when ``--n-latent`` is given, else nothing."""
    n_latent = getattr(args, "n_latent", None)
    return {} if n_latent is None else {"n_latent": n_latent}


def neighbors_scores(rep: np.ndarray, labels: Any) -> dict[str, Any]:
    """Leiden on the 15-NN graph of ``rep``: at resolution 1.0, and at the best of the grid."""
    nn = metrics.nearest_neighbors(np.asarray(rep, dtype=np.float32), 15)
    fixed = metrics.leiden(nn.connectivities(), resolution=1.0, seed=0)
    ari, nmi = label_scores(labels, fixed)
    best = metrics.leiden_nmi_ari(nn, np.asarray(labels), resolutions=RESOLUTIONS, seed=0)
    return {
        "res1": {"ari": ari, "nmi": nmi, "n_clusters": int(fixed.max() + 1)},
        "best": best,
    }


def pca_rep(adata: ad.AnnData) -> np.ndarray:
    """scanpy's normalize_total(1e4), log1p, pca(50) on all cells."""
    lean = ad.AnnData(X=adata.X.copy())
    sc.pp.normalize_total(lean, target_sum=1e4)
    sc.pp.log1p(lean)
    sc.pp.pca(lean, n_comps=min(50, min(lean.shape) - 1), random_state=0)
    return np.asarray(lean.obsm["X_pca"])


def mixing(adata: ad.AnnData, rep: np.ndarray, batch_key: str) -> dict[str, float]:
    """Scaled iLISI and kBET of ``rep`` (``scvae.tl.evaluate``, native backend)."""
    holder = ad.AnnData(obs=adata.obs.copy())
    holder.obsm["X_rep"] = np.asarray(rep, dtype=np.float32)
    table = scvae.tl.evaluate(
        holder,
        use_rep="X_rep",
        label_key=LABEL_KEY,
        batch_key=batch_key,
        resolutions=(1.0,),
        gmm=False,
    )
    values = table.reset_index().set_index("metric")["value"]
    return {m: float(values[m]) for m in ("ilisi", "kbet", "silhouette_batch")}


def run_seed(data: Dataset, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Both models on one data set with one seed (see the module docstring)."""
    train = data.adata[data.train_idx].copy()
    heldout = data.adata[data.heldout_idx].copy()
    labels = data.adata.obs[LABEL_KEY]
    fit = {"max_epochs": args.max_epochs, "train_size": 0.9, "seed": seed, "progress_bar": False}
    out: dict[str, Any] = {"seed": seed}

    start = time.perf_counter()
    zinb = scvae.ZINBVAE(train, batch_key=data.batch_key).fit(**fit)
    out["zinbvae_fit_s"] = time.perf_counter() - start
    ll_zinb = zinb.marginal_log_likelihood(heldout, n_samples=args.n_samples, seed=seed)
    z_zinb = zinb.get_latent(data.adata)

    start = time.perf_counter()
    gmvae = scvae.GMVAE(
        train, n_components=data.n_types, batch_key=data.batch_key, **latent_option(args)
    )
    pre = pretrain_epochs(args)  # the same total of epochs as the ZINBVAE
    gmvae.fit(**{**fit, "max_epochs": args.max_epochs - pre}, n_epochs_pretrain=pre)
    out["gmvae_fit_s"] = time.perf_counter() - start
    ll_gmvae = gmvae.marginal_log_likelihood(heldout, n_samples=args.n_samples, seed=seed)
    z_gmvae = gmvae.get_latent(data.adata)

    out["ll"] = {
        "zinbvae": mean_se(ll_zinb),
        "gmvae": mean_se(ll_gmvae),
        "gmvae_minus_zinbvae": paired_difference(ll_gmvae, ll_zinb),
    }
    out["epochs"] = {
        "zinbvae": zinb.training.get("n_epochs_trained"),
        "gmvae_pretrain": gmvae.training.get("n_epochs_pretrain"),
        "gmvae_mixture": int((gmvae.history["phase"] == "mixture").sum()),
    }
    clusters = gmvae.predict(data.adata)
    ari, nmi = label_scores(labels, clusters)
    out["gmvae_clusters"] = {
        "ari": ari,
        "nmi": nmi,
        "n_occupied": int(np.unique(clusters).size),
        "n_occupied_train": gmvae.training.get("n_occupied"),
        "validation_elbo": float(gmvae.selection["validation_elbo"].iloc[0]),
    }
    holder = ad.AnnData(obs=data.adata.obs.copy())
    holder.obsm["X_zinbvae"] = z_zinb
    scvae.tl.gmm(holder, use_rep="X_zinbvae", n_components=data.n_types, seed=seed)
    ari, nmi = label_scores(labels, holder.obs["gmm"].to_numpy())
    out["gmm_on_zinbvae"] = {"ari": ari, "nmi": nmi}
    out["leiden_zinbvae"] = neighbors_scores(z_zinb, labels)
    out["leiden_gmvae_latent"] = neighbors_scores(z_gmvae, labels)
    if data.batch_key is not None:
        out["mixing"] = {
            "zinbvae": mixing(data.adata, z_zinb, data.batch_key),
            "gmvae": mixing(data.adata, z_gmvae, data.batch_key),
        }
    return out


def run_select_k(data: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """GMVAE with ``n_components=None``: the K of the best validation ELBO, and its clusters."""
    train = data.adata[data.train_idx].copy()
    start = time.perf_counter()
    model = scvae.GMVAE(
        train, candidates=args.candidates, batch_key=data.batch_key, **latent_option(args)
    )
    pre = pretrain_epochs(args)
    model.fit(
        max_epochs=args.max_epochs - pre,
        n_epochs_pretrain=pre,
        n_init=args.n_init,
        seed=0,
        progress_bar=False,
    )
    clusters = model.predict(data.adata)
    ari, nmi = label_scores(data.adata.obs[LABEL_KEY], clusters)
    return {
        "fit_s": time.perf_counter() - start,
        "n_types": data.n_types,
        "chosen_k": model.n_components,
        "ari": ari,
        "nmi": nmi,
        "selection": model.selection.to_dict(orient="list"),
    }


def merge(paths: list[Path], out_dir: Path, name: str = "gmvae") -> None:
    """Combine the ``datasets`` and ``select_k`` of several result files into <name>.json."""
    parts = [json.loads(p.read_text()) for p in paths]
    combined = dict(parts[0])
    by_name: dict[str, dict[str, Any]] = {}
    for d in (d for p in parts for d in p.get("datasets", []) if d["seeds"]):
        stem = d["summary"]["name"]
        if stem in by_name:  # the seeds of one data set run in several processes
            by_name[stem]["seeds"] += d["seeds"]
        else:
            by_name[stem] = {**d, "seeds": list(d["seeds"])}
    for d in by_name.values():
        d["seeds"].sort(key=lambda r: r["seed"])
    combined["datasets"] = [by_name[n] for n in sorted(by_name)]  # a data set cut short
    # before its first seed is left out
    combined["select_k"] = [d for p in parts for d in p.get("select_k", [])]
    combined["merged_from"] = [p["command"] for p in parts]
    combined["total_s"] = sum(p.get("total_s", 0.0) for p in parts)
    (out_dir / f"{name}.json").write_text(json.dumps(combined, indent=1) + "\n")
    print(f"wrote {out_dir / f'{name}.json'}")


HEADING = "## Mixture-prior VAE (GMVAE)"


def _spread(values: list[float], digits: int = 2) -> str:
    """``mean ± sd`` over seeds (sd with ddof=1; the mean alone for one seed)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return "-"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def render(result: dict[str, Any]) -> str:
    """The markdown tables of ``docs/benchmarks.md`` from a result of this driver."""
    sets = result["datasets"]
    names = [d["summary"]["name"] for d in sets]
    n_seeds = max((len(d["seeds"]) for d in sets), default=0)
    settings = result["settings"]
    commands = result.get("merged_from") or [result.get("command", "")]
    pre = pretrain_epochs(argparse.Namespace(**result["settings"]))
    n_latent = settings.get("n_latent") or 10
    lines = [
        "Runs (merged with `--merge`): " + "; ".join(f"`{c}`" for c in commands),
        "",
        f"Up to {n_seeds} fit seeds per data set (the 'occupied' column below lists one entry "
        "per seed; split and genes fixed as in the baselines table), "
        f"{settings['max_epochs']} epochs in all per model (GMVAE: {pre} pretraining with "
        f"N(0, I), {settings['max_epochs'] - pre} with the mixture; GMVAE n_latent {n_latent}, "
        "ZINBVAE 10), early stopping on the validation ELBO, one torch thread, a shared 2-core "
        "machine (fit times are slow and noisy). Values are mean ± sd over seeds.",
        "",
        "**Held-out log p(x)** (nats per cell, IWAE with "
        f"{settings['n_samples']} samples, mean over held-out cells; the difference is paired "
        "on the same cells):",
        "",
    ]

    def per_seed(d: dict[str, Any], path: list[str]) -> list[float]:
        out = []
        for r in d["seeds"]:
            v: Any = r
            for key in path:
                v = v.get(key) if isinstance(v, dict) else None
            out.append(v)
        return out

    rows = []
    for d in sets:
        rows.append(
            [
                d["summary"]["name"],
                _spread(per_seed(d, ["ll", "zinbvae", "mean"]), 1),
                _spread(per_seed(d, ["ll", "gmvae", "mean"]), 1),
                _spread(per_seed(d, ["ll", "gmvae_minus_zinbvae", "mean"]), 1),
            ]
        )
    lines.append(md_table(["data set", "ZINBVAE", "GMVAE", "GMVAE - ZINBVAE"], rows, "lrrr"))
    methods = [
        ("GMVAE clusters (K = types)", ["gmvae_clusters"]),
        ("`tl.gmm` on ZINBVAE latent", ["gmm_on_zinbvae"]),
        ("Leiden on ZINBVAE latent, res 1.0", ["leiden_zinbvae", "res1"]),
        ("Leiden on PCA, res 1.0", None),
        ("Leiden on GMVAE latent, res 1.0", ["leiden_gmvae_latent", "res1"]),
        ("Leiden on ZINBVAE latent, best res (uses labels)", ["leiden_zinbvae", "best"]),
        ("Leiden on PCA, best res (uses labels)", None),
    ]
    for metric in ("ari", "nmi"):
        lines += ["", f"**{metric.upper()}** against `cell_type` (all cells):", ""]
        rows = []
        for label, path in methods:
            cells = [label]
            for d in sets:
                if path is None:  # PCA: one embedding per data set, no seed
                    which = "res1" if "res 1.0" in label else "best"
                    cells.append(f"{d['leiden_pca'][which][metric]:.2f}")
                else:
                    cells.append(_spread(per_seed(d, [*path, metric])))
            rows.append(cells)
        lines.append(md_table(["method", *names], rows, "l" + "r" * len(names)))
    multi = [d for d in sets if d["seeds"] and "mixing" in d["seeds"][0]]
    if multi:
        lines += [
            "",
            "**Batch mixing** (`scvae.tl.evaluate`: scaled iLISI, kBET per cell type; higher "
            "mixes more):",
            "",
        ]
        rows = []
        for d in multi:
            for model in ("zinbvae", "gmvae"):
                rows.append(
                    [
                        d["summary"]["name"],
                        "ZINBVAE" if model == "zinbvae" else "GMVAE",
                        _spread(per_seed(d, ["mixing", model, "ilisi"]), 3),
                        _spread(per_seed(d, ["mixing", model, "kbet"]), 3),
                    ]
                )
        lines.append(md_table(["data set", "model", "iLISI", "kBET"], rows, "llrr"))
    lines += [
        "",
        "**Components used** (cells of all cells whose most probable component it is; K = "
        "number of cell types), and fit time:",
        "",
    ]
    rows = []
    for d in sets:
        occ = [r["gmvae_clusters"]["n_occupied"] for r in d["seeds"]]
        rows.append(
            [
                d["summary"]["name"],
                str(d["summary"]["n_types"]),
                ", ".join(map(str, occ)),
                _spread([r["zinbvae_fit_s"] for r in d["seeds"]], 0),
                _spread([r["gmvae_fit_s"] for r in d["seeds"]], 0),
            ]
        )
    lines.append(
        md_table(
            ["data set", "K", "occupied per seed", "ZINBVAE fit s", "GMVAE fit s"], rows, "lrlrr"
        )
    )
    for sel in result.get("select_k", []):
        table = sel["selection"]
        lines += [
            "",
            f"**Choice of K** on {sel['name']} ({sel['n_types']} cell types; "
            "`n_components=None`, seed 0): validation ELBO per candidate; chosen "
            f"K = {sel['chosen_k']}, ARI {sel['ari']:.2f}, NMI {sel['nmi']:.2f}.",
            "",
        ]
        rows = [
            [str(k), str(i), f"{e:.1f}", str(o)]
            for k, i, e, o in zip(
                table["n_components"],
                table["restart"],
                table["validation_elbo"],
                table["n_occupied"],
                strict=True,
            )
        ]
        lines.append(md_table(["K", "restart", "validation ELBO", "occupied"], rows, "rrrr"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docstring)."""
    args = parse_args(argv)
    if args.merge:
        merge(args.merge, args.out_dir, args.name)
        return 0
    if args.render:
        result = json.loads(args.render.read_text())
        main_table = args.render.name == "gmvae.json"
        pre = result["settings"].get("n_epochs_pretrain")
        n_latent = result["settings"].get("n_latent") or 10
        write_section(
            render(result),
            tool=f"records/{args.render.name}",
            heading=HEADING
            if main_table
            else f"### GMVAE with {pre} pretraining epochs, n_latent {n_latent}",
            path=DOCS,
        )
        print(f"rendered {args.render} into {DOCS}")
        return 0
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    datasets: list[dict[str, Any]] = []
    select: list[dict[str, Any]] = []

    def save() -> None:  # after every seed, so that a run cut short keeps what it measured
        payload = {
            "settings": {
                k: v for k, v in vars(args).items() if k not in ("merge", "out_dir", "data_dir")
            },
            "total_s": time.perf_counter() - t0,
            "datasets": datasets,
            "select_k": select,
        }
        write_result(args.name, payload, script="gmvae", argv=sys.argv[1:], out_dir=args.out_dir)

    with threadpool_limits(1):
        for path in dataset_paths(args.data_dir, args.datasets):
            data = load_dataset(path, args.n_top_genes, args.heldout_fraction, 0)
            print(describe(data.summary()), flush=True)
            if not args.skip_main:
                entry: dict[str, Any] = {"summary": data.summary(), "seeds": []}
                entry["leiden_pca"] = neighbors_scores(
                    pca_rep(data.adata), data.adata.obs[LABEL_KEY]
                )
                datasets.append(entry)
                for seed in args.seeds:
                    result = run_seed(data, seed, args)
                    print(json.dumps(result["gmvae_clusters"]), result["ll"], flush=True)
                    entry["seeds"].append(result)
                    save()
            if path.stem in args.select_k:
                result = run_select_k(data, args)
                print(result["chosen_k"], result["ari"], flush=True)
                select.append({"name": path.stem, **result})
                save()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
