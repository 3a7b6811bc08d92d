"""bfloat16 mixed precision against float32: held-out ELBO and fit time, side by side.

Fits scvae's ZINBVAE on PBMC 3k (2,000 highly variable genes, 60 epochs, no early stopping,
one thread) with ``fit(precision="32-true")`` and ``fit(precision="bf16-mixed")`` for each
seed, in one process, and scores the ELBO of the held-out 10 % of the cells (in float32, as
every fitted model is scored). The question is whether bfloat16 autocast costs likelihood:
the issue's bar is 0.1 % of the float32 held-out ELBO. On the CPU autocast covers the linear
layers only (the likelihood stays float32); a GPU run is the one that matters for speed.
Nothing is asserted::

    python benchmarks/precision.py                 # seeds 0-3, ~10 min on 2 shared cores
    python benchmarks/precision.py --seeds 0 --max-epochs 20

Results go to ``benchmarks/results/precision.json``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from _common import pbmc3k_genes, write_result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args(argv)

    import torch

    import scvae

    torch.set_num_threads(1)
    adata = pbmc3k_genes(2000)
    rows = []
    for seed in args.seeds:
        for precision in ("32-true", "bf16-mixed"):
            model = scvae.ZINBVAE(adata)
            start = time.perf_counter()
            model.fit(
                max_epochs=args.max_epochs,
                seed=seed,
                precision=precision,
                accelerator=args.accelerator,
                early_stopping=False,
                progress_bar=False,
            )
            seconds = time.perf_counter() - start
            held_out = float(model.elbo(adata[model.validation_indices]).mean())
            rows.append(
                {"seed": seed, "precision": precision, "held_out_elbo": held_out, "fit_s": seconds}
            )
            print(rows[-1], flush=True)
    pairs = []
    for seed in args.seeds:
        f32, bf16 = (r for r in rows if r["seed"] == seed)
        diff = bf16["held_out_elbo"] - f32["held_out_elbo"]
        pairs.append(diff)
        print(
            f"seed {seed}: float32 {f32['held_out_elbo']:.2f}, bf16-mixed "
            f"{bf16['held_out_elbo']:.2f} nats/cell, difference {diff:+.3f} "
            f"({100 * diff / abs(f32['held_out_elbo']):+.3f} %); fit {f32['fit_s']:.0f} s vs "
            f"{bf16['fit_s']:.0f} s"
        )
    print(
        f"mean difference {np.mean(pairs):+.3f} nats/cell, "
        f"range {min(pairs):+.3f}..{max(pairs):+.3f}"
    )
    write_result(
        "precision",
        {"rows": rows, "differences": pairs},
        script=__file__,
        argv=sys.argv if argv is None else argv,
    )


if __name__ == "__main__":
    main()
