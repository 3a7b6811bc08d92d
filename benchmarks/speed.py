"""Training speed: scvae's ZINBVAE against scvi-tools' SCVI, side by side in one run.

Two measurements, each tool in its own subprocess (so peak memory is its own):

1. **Throughput at equal settings** (same model: ZINB, gene dispersion, latent library; 10 latent
   dims, one hidden layer of 128, dropout 0.1; batch size 128; all cells train, no validation):
   cells/s over the epochs after the first, and peak resident memory, on PBMC 3k (all 16,579
   genes and 2,000 highly variable genes) and on 30k and 300k cells made by resampling its real
   cells with binomial thinning (each resampled cell keeps each UMI with a probability drawn
   from U(0.5, 1), so sparsity stays realistic).
2. **Time to a held-out ELBO with each tool's defaults** (PBMC 3k, 2,000 HVGs, 10 % of cells
   held out): both tools' held-out ELBO after every epoch (evaluation time excluded), and the
   training time each needs to first reach a fixed target, the lower of the two tools' best
   held-out ELBO.

scvi-tools lives only in ``benchmarks/.venv-scvi`` (created by ``heldout_vs_scvi.py``'s
``ensure_scvi_venv`` when missing). Nothing is asserted. Run from the repository root::

    /work/venv/bin/python benchmarks/speed.py                    # everything (~40 min, 2 cores)
    /work/venv/bin/python benchmarks/speed.py --sizes 2638 --skip-defaults   # a quick look

Results are printed as markdown and written to ``benchmarks/results/speed.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_gb, write_section  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[2638, 30000, 300000])
    p.add_argument("--genes", nargs="+", default=["all", "2000"], help="'all' or a number of HVGs")
    p.add_argument(
        "--epoch-cells", type=int, default=60000, help="cells to train per size, at least one epoch"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-defaults", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    p.add_argument("--worker", choices=["scvae"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--h5ad", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="same", help=argparse.SUPPRESS)
    p.add_argument("--max-epochs", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--heldout", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------- data
def pbmc_genes(n_top_genes: int | None) -> ad.AnnData:
    """PBMC 3k counts, all genes or the top ``n_top_genes`` (scanpy ``seurat`` flavour)."""
    from baselines import highly_variable

    import scvae

    adata = scvae.datasets.pbmc3k()
    if n_top_genes:
        adata = adata[:, highly_variable(adata.X, n_top_genes)].copy()
    return ad.AnnData(X=adata.X, obs=adata.obs[["batch"]], var=adata.var[[]])


def resample_cells(base: ad.AnnData, n_cells: int, seed: int) -> ad.AnnData:
    """``n_cells`` cells drawn with replacement from ``base``, each binomially thinned.

    The real cells themselves are returned when ``n_cells`` is not above their number.
    """
    if n_cells <= base.n_obs:
        return base[:n_cells].copy()
    rng = np.random.default_rng(seed)
    X = base.X.tocsr()[rng.integers(base.n_obs, size=n_cells)]  # (n, G)
    keep = rng.uniform(0.5, 1.0, size=n_cells)  # (n,) per-cell thinning probability
    X.data = rng.binomial(X.data.astype(np.int64), np.repeat(keep, np.diff(X.indptr)))
    X.data = X.data.astype(np.float32)
    X.eliminate_zeros()
    X = X[np.asarray(X.sum(1)).ravel() > 0]
    obs = {"batch": np.repeat("pbmc3k", X.shape[0])}
    return ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=base.var)


# ---------------------------------------------------------------------------------- workers
def epoch_clock_class():  # -> type[lightning.pytorch.Callback]
    """The :class:`EpochClock` callback class (lightning is imported only when needed)."""
    import lightning.pytorch as pl
    import torch

    from scvae.data import CSRMinibatches

    class EpochClock(pl.Callback):
        """Per-epoch training time (held-out scoring excluded) and held-out ELBO in eval mode.

        Parameters
        ----------
        heldout_data
            Validated held-out cells (``read_query_data``), or None to only time epochs.
        timer
            Clock in seconds: ``time.perf_counter`` (wall) or ``time.thread_time`` (CPU).
        """

        def __init__(self, heldout_data=None, timer=time.perf_counter) -> None:
            self.heldout_data, self.timer = heldout_data, timer
            self.epoch_times: list[float] = []
            self.heldout_elbo: list[float] = []
            self.cells_per_epoch = 0
            self._start = 0.0

        def on_train_epoch_start(self, trainer, plan) -> None:
            self.cells_per_epoch = plan.train_loader.n_cells_per_epoch
            self._start = self.timer()

        def on_train_epoch_end(self, trainer, plan) -> None:
            self.epoch_times.append(self.timer() - self._start)
            if self.heldout_data is None:
                return
            n = self.heldout_data.X.shape[0]
            plan.module.eval()
            loader = CSRMinibatches(
                self.heldout_data, np.arange(n), batch_size=1024, shuffle=False
            ).to(plan.device)
            with torch.no_grad():
                total = sum(plan.module.loss(x, b, nz=nz).elbo.sum().item() for x, b, nz in loader)
            self.heldout_elbo.append(total / n)
            plan.module.train()

    return EpochClock


def scvae_worker(args: argparse.Namespace) -> dict:
    """Train scvae in this process and return timings (the ``--worker scvae`` entry)."""
    import torch

    import scvae
    from scvae.data import read_query_data

    torch.set_num_threads(args.threads)
    adata = ad.read_h5ad(args.h5ad)
    heldout = np.load(args.heldout) if args.heldout else None
    train = (
        adata  # like scvi_speed.py: no copy when every cell trains
        if heldout is None
        else adata[np.setdiff1d(np.arange(adata.n_obs), heldout)].copy()
    )
    model = scvae.ZINBVAE(train, n_hidden=128, n_latent=10, n_layers=1, dropout_rate=0.1)
    heldout_data = None if heldout is None else read_query_data(adata[heldout], model.setup)

    clock = epoch_clock_class()(heldout_data)
    t0 = time.perf_counter()
    if args.mode == "same":
        model.fit(
            max_epochs=args.max_epochs,
            batch_size=128,
            train_size=1.0,
            early_stopping=False,
            progress_bar=False,
            callbacks=[clock],
            seed=args.seed,
        )
    else:
        model.fit(progress_bar=False, callbacks=[clock], seed=args.seed)
    wall = time.perf_counter() - t0
    return {
        "tool": f"scvae {scvae.__version__}",
        "epoch_times": clock.epoch_times,
        "heldout_elbo": clock.heldout_elbo,
        "cells_per_epoch": clock.cells_per_epoch,
        "wall": wall,
        "n_train": int(train.n_obs),
        "best_epoch": model.fit_params.get("best_epoch"),
        "peak_rss_gb": peak_rss_gb(),
    }


def run_worker(command: list[str]) -> dict:
    """Run one worker subprocess; its last stdout line is a JSON result."""
    proc = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_both(path: Path, *, mode: str, epochs: int, threads: int, heldout: Path | None, seed: int):
    """scvae then scvi-tools on the same file; returns their results."""
    from heldout_vs_scvi import ensure_scvi_venv

    common = ["--h5ad", str(path), "--mode", mode, "--max-epochs", str(epochs)]
    common += ["--threads", str(threads), "--seed", str(seed)]
    if heldout is not None:
        common += ["--heldout", str(heldout)]
    ours = run_worker([sys.executable, __file__, "--worker", "scvae", *common])
    scvi_python = ensure_scvi_venv(ROOT / "benchmarks" / ".venv-scvi")
    theirs = run_worker(
        [
            str(scvi_python),
            str(ROOT / "benchmarks" / "scvi_speed.py"),
            *common,
            "--batch-size",
            "128",
        ]
    )
    if "cells_per_epoch" not in theirs:
        theirs["cells_per_epoch"] = theirs["n_train"]
    return ours, theirs


def steady_rate(result: dict) -> float:
    """Cells per second over the epochs after the first (all epochs when there is one)."""
    times = result["epoch_times"][1:] or result["epoch_times"]
    return result["cells_per_epoch"] / float(np.median(times))


# --------------------------------------------------------------------------------- measures
def throughput(args: argparse.Namespace, workdir: Path) -> list[str]:
    """Part 1: the equal-settings throughput table."""
    rows = [
        "| genes | cells | epochs | scvae cells/s | scVI cells/s | ratio "
        "| scvae peak GB | scVI peak GB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for genes in args.genes:
        base = pbmc_genes(None if genes == "all" else int(genes))
        for n_cells in args.sizes:
            adata = resample_cells(base, n_cells, args.seed)
            path = workdir / f"cells_{genes}_{n_cells}.h5ad"
            adata.write_h5ad(path)
            epochs = (
                max(2, -(-args.epoch_cells // adata.n_obs)) if adata.n_obs < args.epoch_cells else 1
            )
            ours, theirs = run_both(
                path, mode="same", epochs=epochs, threads=args.threads, heldout=None, seed=args.seed
            )
            a, b = steady_rate(ours), steady_rate(theirs)
            row = (
                f"| {base.n_vars} | {adata.n_obs:,} | {epochs} | {a:,.0f} | {b:,.0f} "
                f"| {a / b:.2f}x | {ours['peak_rss_gb']:.2f} | {theirs['peak_rss_gb']:.2f} |"
            )
            print(row, flush=True)
            rows.append(row)
            path.unlink()
    return rows


def time_to_quality(args: argparse.Namespace, workdir: Path) -> list[str]:
    """Part 2: each tool with its defaults, time to a fixed held-out ELBO."""
    adata = pbmc_genes(2000)
    path = workdir / "pbmc_hvg.h5ad"
    adata.write_h5ad(path)
    rng = np.random.default_rng(args.seed)
    heldout = np.sort(rng.permutation(adata.n_obs)[: adata.n_obs // 10])
    heldout_path = workdir / "heldout.npy"
    np.save(heldout_path, heldout)
    ours, theirs = run_both(
        path, mode="defaults", epochs=0, threads=args.threads, heldout=heldout_path, seed=args.seed
    )
    target = min(max(ours["heldout_elbo"]), max(theirs["heldout_elbo"]))
    rows = [
        f"Target held-out ELBO: {target:.2f} nats/cell (the lower of the two tools' best).",
        "",
        "| tool | epochs run | total train s | best held-out ELBO | epochs to target "
        "| s to target |",
        "|---|---|---|---|---|---|",
    ]
    reached = {}
    for result in (ours, theirs):
        elbo = np.asarray(result["heldout_elbo"])
        cumulative = np.cumsum(result["epoch_times"])
        first = int(np.argmax(elbo >= target))
        reached[result["tool"]] = cumulative[first]
        rows.append(
            f"| {result['tool']} | {len(elbo)} | {cumulative[-1]:.1f} | {elbo.max():.2f} "
            f"| {first + 1} | {cumulative[first]:.1f} |"
        )
    a, b = reached[ours["tool"]], reached[theirs["tool"]]
    rows += ["", f"Speed-up to the target: {b / a:.1f}x (scVI seconds / scvae seconds)."]
    for line in rows:
        print(line, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or one worker)."""
    args = parse_args(argv)
    if args.worker == "scvae":
        print(json.dumps(scvae_worker(args)))
        return
    import torch
    from baselines import machine, versions

    device = "CPU only" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    header = [
        f"Machine: {machine()} ({device}), {args.threads} torch thread(s) for both tools.",
        f"Versions: {versions()}.",
        f"Command: `python benchmarks/speed.py {' '.join(sys.argv[1:])}`.",
        "",
    ]
    sections: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_throughput:
            sections += ["### Throughput at equal settings", "", *throughput(args, Path(tmp)), ""]
        if not args.skip_defaults:
            sections += ["### Time to a held-out ELBO, each tool's defaults", ""]
            sections += [*time_to_quality(args, Path(tmp)), ""]
    out = ROOT / "benchmarks" / "results" / "speed.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(header + sections)
    out.write_text(f"# Speed: scvae vs scvi-tools\n\n{text}\n")
    if not args.no_docs:
        write_section(text, tool="speed.py", heading="## Speed against scvi-tools")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
