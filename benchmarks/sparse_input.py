"""Where reading the encoder input by its non-zeros pays: dense against sparse first layer.

Times full training steps (forward, backward, fused Adam) of scvae's ZINB module on PBMC 3k
with the top 1,000 / 2,000 / 5,000 highly variable genes and all 16,579 genes, once with the
dense first layer (``log1p(x) W``) and once with ``embedding_bag`` over the non-zeros, on the
same minibatches. The density of each gene set is printed next to the speed-up, which is what
``scvae.models._vae.SPARSE_INPUT_MAX_DENSITY`` is chosen from. Asserts nothing::

    python benchmarks/sparse_input.py [--threads 1] [--steps 40]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scanpy as sc
import torch

import scvae
from scvae.data import CSRMinibatches


def step_time(model: scvae.ZINBVAE, *, sparse: bool, steps: int) -> float:
    """Median seconds of one training step (batch size 128) with the chosen first layer."""
    torch.manual_seed(0)
    module = model._build_module(model.module.library_log_mean, model.module.library_log_var)
    module.sparse_input = sparse
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3, eps=0.01, fused=True)
    loader = CSRMinibatches(
        model._data,
        np.arange(model._data.X.shape[0]),
        batch_size=128,
        shuffle=True,
        dense=not sparse,
    )
    times: list[float] = []
    while len(times) < steps:
        for x, batch_index, nz in loader:
            start = time.perf_counter()
            loss = module.loss(x, batch_index, nz=nz, kl_weight=1.0).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
            if len(times) == steps:
                break
    return float(np.median(times[5:]))


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    full = scvae.datasets.pbmc3k()
    log_norm = sc.pp.log1p(sc.pp.normalize_total(full, target_sum=1e4, copy=True), copy=True)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch size 128\n")
    print("| genes | density | dense ms/step | sparse ms/step | sparse speed-up |")
    print("|---|---|---|---|---|")
    for n_top in (1000, 2000, 5000, None):
        adata = full
        if n_top is not None:
            hvg = sc.pp.highly_variable_genes(
                log_norm, flavor="seurat", n_top_genes=n_top, inplace=False
            )["highly_variable"].to_numpy()
            adata = full[:, hvg].copy()
        density = adata.X.nnz / np.prod(adata.shape)
        model = scvae.ZINBVAE(adata, n_hidden=128, n_latent=10, n_layers=1, dropout_rate=0.1)
        dense = step_time(model, sparse=False, steps=args.steps)
        sparse = step_time(model, sparse=True, steps=args.steps)
        print(
            f"| {adata.n_vars:,} | {density:.3f} | {dense * 1e3:.1f} | {sparse * 1e3:.1f} "
            f"| {dense / sparse:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
