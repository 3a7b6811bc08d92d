"""SSVAE: held-out label accuracy and calibration on PBMC 3k with half of the labels hidden.

Usage: ``python benchmarks/ssvae_alpha.py --alpha0 0.1 1 10 100 --max-epochs 100``

PBMC 3k (``scvae.datasets.pbmc3k()``, 9 cell types), the 2,000 most variable genes (scanpy,
flavor "seurat"); half of the cells (seed 0) get the label "Unknown". For each ``ALPHA_0``
(``alpha = ALPHA_0 * n_cells / n_labelled``) an SSVAE is fitted (seed 0) and the script
prints the accuracy on the hidden cells, the mean ELBO ``U(x)`` of the validation cells, the
fitted temperature and the ECE on the hidden cells at temperature 1 and after calibration.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alpha0", type=float, nargs="+", default=[0.1, 1.0, 10.0, 100.0])
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--n-top-genes", type=int, default=2000)
    parser.add_argument("--label-prior", default="frequencies")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import scanpy as sc
    import torch

    import scvae
    from scvae.models._ssvae import _softmax, expected_calibration_error

    torch.set_num_threads(2)
    adata = scvae.datasets.pbmc3k()
    norm = adata.copy()
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    sc.pp.highly_variable_genes(norm, flavor="seurat", n_top_genes=args.n_top_genes)
    adata = adata[:, norm.var["highly_variable"].to_numpy()].copy()
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    hidden = np.random.default_rng(0).random(adata.n_obs) < 0.5
    labels = truth.astype(object).copy()
    labels[hidden] = "Unknown"
    adata.obs["labels"] = labels
    for alpha0 in args.alpha0:
        n_labelled = int((~hidden).sum())
        model = scvae.SSVAE(
            adata,
            labels_key="labels",
            label_prior=args.label_prior,
            alpha=alpha0 * adata.n_obs / n_labelled,
        )
        start = time.perf_counter()
        model.fit(max_epochs=args.max_epochs, seed=args.seed, progress_bar=False)
        seconds = time.perf_counter() - start
        logits = model._logits(model._require_training_data())
        y = np.array([model.label_categories.index(t) for t in truth])
        t = model.temperature
        val = model.validation_indices
        row = {
            "alpha0": alpha0,
            "alpha": model.alpha,
            "accuracy_hidden": float((model.predict()[hidden] == truth[hidden]).mean()),
            "validation_elbo": float(model.elbo(adata[val]).mean()),
            "temperature": t,
            "ece_hidden_T1": expected_calibration_error(_softmax(logits[hidden]), y[hidden]),
            "ece_hidden_T": expected_calibration_error(_softmax(logits[hidden], t), y[hidden]),
            "calibration": model.calibration,
            "epochs": model.training["n_epochs_trained"],
            "seconds": round(seconds, 1),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
