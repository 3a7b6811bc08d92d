"""Reference mapping (``map_query``, scArches) measured: leave one batch out, label transfer, time.

What it measures
----------------
On ``pbmc_3chemistries_small`` (1,200 PBMCs x 1,767 genes, three 10x chemistries, 9 labelled
cell types), for each chemistry held out in turn (``--query-batches``):

1. A reference ``ZINBVAE(batch_key="batch")`` fitted on the two other chemistries.
2. The held-out chemistry mapped onto it with ``reference.map_query(query)``, for each
   variant of ``--variants`` (``new_row_init`` ``zero``/``mean`` x ``batchnorm``
   ``eval``/``train``): seconds, epochs, the query's mean ELBO under the mapped model, and the
   reference cells' latent under the mapped model against the reference's (max abs diff; the
   guarantee is 0).
3. Label transfer: a 15-NN classifier on the latent of the reference cells (their
   ``cell_type``) predicts the query cells' types: accuracy and macro-F1 (over the labels in
   truth or prediction). And the query's mixing with the reference: the mean, over query
   cells, of the fraction of reference cells among its 15 neighbours in the joint latent,
   divided by the reference cells' share (1: as mixed as random, 0: apart).
4. The same for (b) a ``ZINBVAE`` trained jointly on all three chemistries (the query cells
   seen in training: the upper reference) and (c) the query embedded by the reference without
   mapping, its batch relabelled as each reference chemistry (the fallback for an unknown
   batch).
5. Time to map a 10k-cell query (``--n-large``, first fold only): the held-out cells resampled to
   that many (with replacement, binomially thinned, :func:`_common.resample_cells`), default
   options.

Writes ``<out-dir>/map_query.json`` and prints a table. Nothing is asserted.

Run from the repository root::

    python benchmarks/map_query.py                       # the record: benchmarks/records/
    python benchmarks/map_query.py --query-batches 5p --max-epochs 50 --n-large 0
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import anndata as ad
import numpy as np
import torch
from _common import (
    BATCH_KEY,
    DATA_DIR,
    LABEL_KEY,
    RECORDS_DIR,
    RESULTS_DIR,
    resample_cells,
    write_result,
)
from sklearn.metrics import accuracy_score, f1_score
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

import scvae

K = 15
VARIANTS = ("zero/eval", "mean/eval", "zero/train", "mean/train")


def transfer(z_ref: np.ndarray, y_ref: np.ndarray, z_q: np.ndarray, y_q: np.ndarray) -> dict:
    """15-NN label transfer from reference to query cells, and the query's mixing."""
    knn = KNeighborsClassifier(n_neighbors=K).fit(z_ref, y_ref)
    pred = knn.predict(z_q)
    both = np.concatenate([z_ref, z_q])
    is_ref = np.r_[np.ones(len(z_ref), bool), np.zeros(len(z_q), bool)]
    nn = NearestNeighbors(n_neighbors=K + 1).fit(both)
    idx = nn.kneighbors(z_q, return_distance=False)[:, 1:]  # drop the cell itself
    mixing = is_ref[idx].mean() / is_ref.mean()
    return {
        "accuracy": float(accuracy_score(y_q, pred)),
        "macro_f1": float(f1_score(y_q, pred, average="macro")),
        "mixing": float(mixing),
    }


def fit_zinbvae(adata: ad.AnnData, args: argparse.Namespace) -> tuple[scvae.ZINBVAE, float]:
    start = time.perf_counter()
    model = scvae.ZINBVAE(adata, batch_key=BATCH_KEY)
    model.fit(max_epochs=args.max_epochs, seed=args.seed, progress_bar=False)
    return model, time.perf_counter() - start


def run_fold(
    adata: ad.AnnData,
    held_out: str,
    joint_latent: np.ndarray,
    args: argparse.Namespace,
    *,
    large: bool,
) -> dict[str, Any]:
    in_query = (adata.obs[BATCH_KEY] == held_out).to_numpy()
    ref, query = adata[~in_query].copy(), adata[in_query].copy()
    y_ref, y_q = ref.obs[LABEL_KEY].to_numpy(), query.obs[LABEL_KEY].to_numpy()
    reference, ref_seconds = fit_zinbvae(ref, args)
    z_ref = reference.get_latent(ref)
    rows: dict[str, Any] = {}
    for variant in args.variants:
        init, bn = variant.split("/")
        start = time.perf_counter()
        mapped = reference.map_query(
            query,
            max_epochs=args.map_epochs,
            lr=args.map_lr,
            new_row_init=init,
            batchnorm=bn,
            seed=args.seed,
            progress_bar=False,
        )
        seconds = time.perf_counter() - start
        z_ref_mapped = mapped.get_latent(ref)
        rows[f"map_query {variant}"] = {
            "seconds": seconds,
            "epochs": int(mapped.training["n_epochs_trained"]),
            "best_epoch": mapped.training.get("best_epoch"),
            "query_elbo": float(mapped.elbo(query).mean()),
            "reference_latent_max_abs_diff": float(np.abs(z_ref_mapped - z_ref).max()),
            **transfer(z_ref, y_ref, mapped.get_latent(query), y_q),
        }
    rows["joint ZINBVAE"] = transfer(joint_latent[~in_query], y_ref, joint_latent[in_query], y_q)
    for i, batch in enumerate(reference.batch_categories):
        relabelled = query.copy()
        relabelled.obs[BATCH_KEY] = batch
        rows[f"unmapped, as reference batch {i + 1}"] = {
            "as_batch": batch,
            "query_elbo": float(reference.elbo(relabelled).mean()),
            **transfer(z_ref, y_ref, reference.get_latent(relabelled), y_q),
        }
    big_query = None
    if large and args.n_large:
        big = resample_cells(query, args.n_large, args.seed)  # obs["batch"] "pbmc3k": new
        big.obs_names = [f"resampled{i}" for i in range(big.n_obs)]
        start = time.perf_counter()
        mapped = reference.map_query(big, seed=args.seed, progress_bar=False)
        big_query = {
            "n_cells": int(big.n_obs),
            "seconds": time.perf_counter() - start,
            "epochs": int(mapped.training["n_epochs_trained"]),
            "max_epochs": int(mapped.training["max_epochs"]),
        }
    return {
        "query_batch": held_out,
        "n_reference": int(ref.n_obs),
        "n_query": int(query.n_obs),
        "reference_seconds": ref_seconds,
        "reference_epochs": int(reference.training["n_epochs_trained"]),
        "rows": rows,
        "large_query": big_query,
    }


def table(folds: list[dict[str, Any]]) -> str:
    names = list(folds[0]["rows"])
    lines = [
        "| method | "
        + " | ".join(f"{f['query_batch']} acc / F1 / mix" for f in folds)
        + " | mean acc | mean F1 | map s | ref diff |",
        "|---|" + "---|" * (len(folds) + 4),
    ]
    for name in names:
        cells = [f["rows"][name] for f in folds]
        per = [f"{c['accuracy']:.3f} / {c['macro_f1']:.3f} / {c['mixing']:.2f}" for c in cells]
        seconds = [c["seconds"] for c in cells if "seconds" in c]
        diff = [c["reference_latent_max_abs_diff"] for c in cells if "seconds" in c]
        lines.append(
            f"| {name} | " + " | ".join(per)
            + f" | {np.mean([c['accuracy'] for c in cells]):.3f}"
            + f" | {np.mean([c['macro_f1'] for c in cells]):.3f}"
            + (f" | {np.mean(seconds):.1f} | {max(diff):g} |" if seconds else " | - | - |")
        )  # fmt: skip
    for f in folds:
        if f["large_query"]:
            big = f["large_query"]
            lines.append(
                f"\n10k query ({f['query_batch']} resampled to {big['n_cells']} cells): "
                f"{big['seconds']:.1f} s, {big['epochs']} of {big['max_epochs']} epochs"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--query-batches", nargs="+", default=None)
    parser.add_argument("--max-epochs", type=int, default=None, help="reference and joint fits")
    parser.add_argument("--map-epochs", type=int, default=None)
    parser.add_argument("--map-lr", type=float, default=1e-2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--n-large", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="map_query")
    parser.add_argument("--record", action="store_true", help="write benchmarks/records/")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    adata = ad.read_h5ad(DATA_DIR / "pbmc_3chemistries_small.h5ad")
    adata = ad.AnnData(X=adata.X, obs=adata.obs[[BATCH_KEY, LABEL_KEY]].copy(), var=adata.var[[]])
    batches = args.query_batches or sorted(adata.obs[BATCH_KEY].unique())
    joint, joint_seconds = fit_zinbvae(adata, args)
    joint_latent = joint.get_latent(adata)
    folds = []
    for held_out in batches:
        folds.append(run_fold(adata, held_out, joint_latent, args, large=held_out == batches[0]))
        print(f"fold {held_out} done", flush=True)
    text = table(folds)
    print(text)
    payload = {
        "dataset": "pbmc_3chemistries_small",
        "k": K,
        "threads": args.threads,
        "joint_seconds": joint_seconds,
        "joint_epochs": int(joint.training["n_epochs_trained"]),
        "folds": folds,
        "table": text,
    }
    out = RECORDS_DIR if args.record else RESULTS_DIR
    write_result(args.name, payload, script="map_query", argv=argv, out_dir=out)


if __name__ == "__main__":
    main(sys.argv[1:])
