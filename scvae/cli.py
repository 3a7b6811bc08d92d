"""The ``scvae`` command: ``scvae fit``, ``scvae cluster``, ``scvae demo``.

Errors in the input print one line on stderr (``scvae: error: ...``) and exit with status 2;
no output file is written unless the whole command succeeded.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["main"]

_MODELS = {
    "zinb": "ZINBVAE",
    "nb": "NBVAE",
    "poisson": "PoissonVAE",
    "gaussian": "GaussianVAE",
    "ppca": "PPCA",
}


class CLIError(Exception):
    """An error to report in one line."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scvae",
        description="Deep generative models of single-cell RNA-seq counts (scVI family).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="fit a model on an .h5ad file and write the embedding")
    fit.add_argument("input", type=Path, help="input .h5ad with raw counts")
    fit.add_argument("-o", "--output", type=Path, required=True, help="output .h5ad")
    fit.add_argument("--model", choices=sorted(_MODELS), default="zinb")
    fit.add_argument("--layer", default=None, help="layer with raw counts (default: X)")
    fit.add_argument("--batch-key", default=None, help="obs column of batches")
    fit.add_argument("--n-latent", type=int, default=10)
    fit.add_argument("--max-epochs", type=int, default=None)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--key-added", default=None, help="key of the results (default: model)")
    fit.add_argument("--save-model", type=Path, default=None, help="directory to save the model")
    fit.add_argument(
        "--cluster",
        nargs="?",
        type=int,
        const=0,
        default=None,
        metavar="K",
        help="cluster the new embedding with a GMM (K components; no K: chosen by BIC)",
    )
    fit.add_argument("--quiet", action="store_true", help="no progress bar")

    cluster = sub.add_parser("cluster", help="GMM clustering of an embedding in obsm")
    cluster.add_argument("input", type=Path, help="input .h5ad with the embedding")
    cluster.add_argument("-o", "--output", type=Path, required=True, help="output .h5ad")
    cluster.add_argument("--use-rep", required=True, help="obsm key of the embedding")
    cluster.add_argument(
        "--n-components", type=int, default=None, help="K (default: chosen by BIC)"
    )
    cluster.add_argument("--covariance-type", choices=["full", "diag"], default="full")
    cluster.add_argument("--key-added", default="gmm")
    cluster.add_argument("--seed", type=int, default=0)

    demo = sub.add_parser(
        "demo", help="fit ZINBVAE on the bundled PBMC 3k data; write .h5ad and a UMAP .png"
    )
    demo.add_argument("-o", "--output", type=Path, default=Path("scvae_demo.h5ad"))
    demo.add_argument(
        "--max-epochs", type=int, default=100, help="training epochs (default 100: a few minutes)"
    )
    demo.add_argument(
        "--n-top-genes", type=int, default=2000, help="highly variable genes to model (0: all)"
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _read(path: Path):
    import anndata as ad

    if not path.is_file():
        raise CLIError(f"input file {path} does not exist")
    try:
        return ad.read_h5ad(path)
    except Exception as err:  # h5py/anndata raise many types for a bad file
        raise CLIError(f"cannot read {path} as .h5ad: {err}") from None


def _write_atomically(adata, path: Path) -> None:
    """Write to a temporary file beside ``path`` and rename: no partial output on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".h5ad", dir=path.parent)
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fit(args: argparse.Namespace) -> None:
    import scvae

    if args.save_model is not None and args.save_model.exists() and any(args.save_model.iterdir()):
        raise CLIError(f"--save-model directory {args.save_model} exists and is not empty")
    adata = _read(args.input)
    if args.model == "ppca":
        if args.batch_key is not None:
            raise CLIError("--batch-key does not apply to --model ppca (it has no covariates)")
        model = scvae.PPCA(adata, layer=args.layer, n_latent=args.n_latent).fit(seed=args.seed)
    else:
        model_class = getattr(scvae, _MODELS[args.model])
        model = model_class(
            adata, layer=args.layer, batch_key=args.batch_key, n_latent=args.n_latent
        )
        model.fit(max_epochs=args.max_epochs, seed=args.seed, progress_bar=not args.quiet)
    key = args.key_added or model.default_key
    written = [f"obsm['X_{key}'] ({adata.n_obs} x {args.n_latent})", f"uns['{key}']"]
    result = adata.copy()
    model.write_latent(result, key_added=key)
    if args.cluster is not None:
        scvae.tl.gmm(result, use_rep=f"X_{key}", n_components=args.cluster or None, seed=args.seed)
        written.append(f"obs['gmm'] ({result.obs['gmm'].nunique()} clusters)")
    _write_atomically(result, args.output)
    if args.save_model is not None:
        model.save(args.save_model)
    print(f"wrote {args.output}: {', '.join(written)}")


def _cluster(args: argparse.Namespace) -> None:
    import scvae

    adata = _read(args.input)
    scvae.tl.gmm(
        adata,
        use_rep=args.use_rep,
        n_components=args.n_components,
        covariance_type=args.covariance_type,
        key_added=args.key_added,
        seed=args.seed,
    )
    _write_atomically(adata, args.output)
    k = adata.obsm[f"{args.key_added}_proba"].shape[1]
    print(
        f"wrote {args.output}: obs['{args.key_added}'] ({k} clusters), "
        f"obsm['{args.key_added}_proba'], uns['{args.key_added}']"
    )


def _demo(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    import scvae

    adata = scvae.datasets.pbmc3k()
    if args.n_top_genes:
        log_norm = sc.pp.log1p(sc.pp.normalize_total(adata, target_sum=1e4, copy=True), copy=True)
        sc.pp.highly_variable_genes(log_norm, flavor="seurat", n_top_genes=args.n_top_genes)
        adata = adata[:, log_norm.var["highly_variable"].to_numpy()].copy()
    print(f"PBMC 3k: {adata.n_obs} cells x {adata.n_vars} genes; fitting ZINBVAE ...")
    model = scvae.ZINBVAE(adata, batch_key=None)
    model.fit(max_epochs=args.max_epochs, seed=args.seed, progress_bar=not args.quiet)
    model.write_latent(adata)
    heldout = model.marginal_log_likelihood(adata[model.validation_indices], n_samples=100).mean()
    sc.pp.neighbors(adata, use_rep="X_zinbvae", random_state=args.seed)
    sc.tl.umap(adata, random_state=args.seed)
    fig = sc.pl.umap(
        adata, color="cell_type", return_fig=True, show=False, title="ZINBVAE, PBMC 3k"
    )
    png = args.output.with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120, bbox_inches="tight")
    _write_atomically(adata, args.output)
    epochs = model.fit_params["n_epochs_trained"]
    print(
        f"trained {epochs} epochs; held-out log p(x) (IWAE, 100 samples) = {heldout:.1f} "
        f"nats/cell\nwrote {args.output} (obsm['X_zinbvae'], obsm['X_umap']) and {png}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        {"fit": _fit, "cluster": _cluster, "demo": _demo}[args.command](args)
    except (CLIError, ValueError, KeyError, TypeError, FileNotFoundError, FileExistsError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"scvae: error: {message}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # training divergence and the like: still one line
        print(f"scvae: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
