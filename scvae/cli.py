"""The ``scvae`` command: ``scvae fit``, ``scvae cluster``, ``scvae demo``.

Errors in the arguments or the input print one line on stderr (``scvae: error: ...``) and exit
with status 2, before any training; no output file is written unless the whole command
succeeded. Output files get the usual permissions (``0666`` less the umask, as any file a
program creates; an existing file keeps its own).

The arguments are parsed before anything heavy is imported: ``scvae --help`` and argument
errors answer at once; torch, Lightning and scanpy load only when there is work to do.
"""

from __future__ import annotations

import argparse
import math
import os
import stat
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

__all__ = ["main"]

_MODELS = {
    "zinb": "ZINBVAE",
    "nb": "NBVAE",
    "poisson": "PoissonVAE",
    "gaussian": "GaussianVAE",
    "ppca": "PPCA",
    "fa": "FactorAnalysis",
    "ssvae": "SSVAE",
}
#: models fitted without the VAE training loop (closed form or EM)
_NOT_VAE = ("ppca", "fa")
#: ``scvae fit`` options that only the VAEs have (PPCA is fitted in closed form)
_VAE_ONLY = {
    "batch_key": "--batch-key",
    "categorical_covariate_keys": "--categorical-covariate-keys",
    "continuous_covariate_keys": "--continuous-covariate-keys",
    "encode_covariates": "--encode-covariates",
    "max_epochs": "--max-epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "train_size": "--train-size",
    "patience": "--patience",
    "devices": "--devices",
    "num_nodes": "--num-nodes",
    "strategy": "--strategy",
}
_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


class CLIError(Exception):
    """An error to report in one line."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``scvae fit: error: ... (see --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ------------------------------------------------------------------------ argument types
def _integer(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return value


def _devices(text: str) -> int | str | list[int]:
    """``auto``, a number of devices, or a comma-separated list of device indices."""
    if text == "auto":
        return text
    try:
        if "," in text:
            indices = [int(part) for part in text.split(",")]
            if min(indices) < 0:
                raise ValueError
            return indices
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(
            f"expected 'auto', a number of devices >= 1 or a list of indices such as 0,1; "
            f"got {text!r}"
        )
    return count


def _keys(text: str) -> list[str]:
    """A comma-separated list of ``obs`` columns: ``donor,chemistry``."""
    keys = [part.strip() for part in text.split(",")]
    if not all(keys):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated obs column names such as donor,chemistry; got {text!r}"
        )
    return keys


def _version() -> str:
    from scvae import __version__

    return f"scvae {__version__}"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scvae",
        description="Deep generative models of single-cell RNA-seq counts (scVI family).",
        epilog="Run 'scvae COMMAND --help' for the options of a command.",
    )
    parser.add_argument(
        "--version", action="version", version=_version(), help="print the version and exit"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="fit, cluster or demo"
    )
    int_pos, int_nonneg = _integer(1), _integer(0)

    fit = sub.add_parser(
        "fit",
        help="fit a model on an .h5ad file and write the embedding",
        description="Fit a model on the raw counts of an .h5ad file and write a copy of it "
        "with the embedding (obsm['X_<key>']) and the options (uns['<key>']).",
    )
    fit.add_argument("input", type=Path, help="input .h5ad with raw counts")
    fit.add_argument(
        "-o", "--output", type=Path, required=True, help="output .h5ad (a file, not a directory)"
    )
    fit.add_argument(
        "--model",
        choices=sorted(_MODELS),
        default="zinb",
        help="zinb: ZINBVAE (default), nb: NBVAE, poisson: PoissonVAE, gaussian: GaussianVAE "
        "(on log-normalized counts), ppca: probabilistic PCA (closed form), "
        "fa: factor analysis (EM), ssvae: semi-supervised VAE (needs --labels-key; also "
        "writes obs['ssvae'] and obsm['ssvae_proba'], the predicted labels)",
    )
    fit.add_argument(
        "--labels-key",
        default=None,
        metavar="KEY",
        help="--model ssvae: obs column of cell labels; cells with --unlabeled-category or a "
        "missing value are unlabelled",
    )
    fit.add_argument(
        "--unlabeled-category",
        default=None,
        metavar="LABEL",
        help="--model ssvae: the label of unlabelled cells (default: Unknown)",
    )
    fit.add_argument(
        "--layer", default=None, metavar="NAME", help="layer with the raw counts (default: X)"
    )
    fit.add_argument(
        "--batch-key",
        default=None,
        metavar="KEY",
        help="obs column of batches to correct for (default: none)",
    )
    fit.add_argument(
        "--categorical-covariate-keys",
        type=_keys,
        default=None,
        metavar="KEYS",
        help="comma-separated obs columns of further categorical covariates, e.g. "
        "donor,chemistry (injected into the decoder like the batch; default: none)",
    )
    fit.add_argument(
        "--continuous-covariate-keys",
        type=_keys,
        default=None,
        metavar="KEYS",
        help="comma-separated numeric obs columns to condition on, e.g. pct_counts_mt "
        "(standardized; default: none)",
    )
    fit.add_argument(
        "--encode-covariates",
        action="store_true",
        default=None,
        help="also inject the covariates into the encoders (default: the decoder only)",
    )
    fit.add_argument(
        "--n-top-genes",
        type=int_nonneg,
        default=0,
        metavar="N",
        help="model only the N most highly variable genes (scanpy, flavor 'seurat', on the "
        "log-normalized counts) and record them in var['highly_variable']; 0 (default): all",
    )
    fit.add_argument(
        "--n-latent", type=int_pos, default=10, metavar="N", help="latent dimensions (default: 10)"
    )
    fit.add_argument(
        "--max-epochs",
        type=int_pos,
        default=None,
        metavar="N",
        help="maximum training epochs (default: min(400, 400 * 20000 / n_cells))",
    )
    fit.add_argument(
        "--batch-size",
        type=int_pos,
        default=None,
        metavar="N",
        help="cells per minibatch (default: 128)",
    )
    fit.add_argument(
        "--lr", type=_positive_float, default=None, help="Adam learning rate (default: 1e-3)"
    )
    fit.add_argument(
        "--train-size",
        type=_fraction,
        default=None,
        metavar="FRACTION",
        help="fraction of cells to train on; the rest is the validation set for early "
        "stopping (default: 0.9; 1 trains on every cell, without early stopping)",
    )
    fit.add_argument(
        "--patience",
        type=int_pos,
        default=None,
        metavar="N",
        help="early stopping: epochs without improvement of the validation ELBO (default: 30)",
    )
    fit.add_argument(
        "--accelerator",
        choices=_ACCELERATORS,
        default=None,
        help="device to train on (default: auto, a GPU when there is one)",
    )
    fit.add_argument(
        "--devices",
        type=_devices,
        default=None,
        help="number of devices or comma-separated device indices (default: auto)",
    )
    fit.add_argument(
        "--num-nodes",
        type=int_pos,
        default=None,
        metavar="N",
        help="machines for distributed training, with --strategy ddp (default: 1)",
    )
    fit.add_argument(
        "--strategy",
        choices=("auto", "ddp"),
        default=None,
        help="ddp: data-parallel on --devices processes per machine (run under srun on "
        "SLURM); only rank 0 writes the output (default: auto)",
    )
    fit.add_argument(
        "--seed", type=int_nonneg, default=0, metavar="N", help="random seed (default: 0)"
    )
    fit.add_argument(
        "--key-added",
        default=None,
        metavar="KEY",
        help="name of the results: obsm['X_<key>'] and uns['<key>'] (default: the model, "
        "e.g. zinbvae)",
    )
    fit.add_argument(
        "--save-model",
        type=Path,
        default=None,
        metavar="DIR",
        help="also save the model into DIR (new or empty); load it with e.g. "
        "scvae.ZINBVAE.load(DIR)",
    )
    fit.add_argument(
        "--cluster",
        nargs="?",
        type=int_nonneg,
        const=0,
        default=None,
        metavar="K",
        help="cluster the new embedding with a GMM: obs['gmm'], obsm['gmm_proba'], uns['gmm'] "
        "(K components; no K or 0: chosen by BIC)",
    )
    fit.add_argument("--quiet", action="store_true", help="no progress bar")

    cluster = sub.add_parser(
        "cluster",
        help="GMM clustering of an embedding in obsm",
        description="Cluster the cells of an .h5ad file with a Gaussian mixture on an "
        "embedding and write a copy with obs['<key>'], obsm['<key>_proba'] and uns['<key>'].",
    )
    cluster.add_argument("input", type=Path, help="input .h5ad with the embedding")
    cluster.add_argument(
        "-o", "--output", type=Path, required=True, help="output .h5ad (a file, not a directory)"
    )
    cluster.add_argument(
        "--use-rep",
        default="X_zinbvae",
        metavar="KEY",
        help="obsm key of the embedding (default: X_zinbvae, as scvae.tl.gmm)",
    )
    cluster.add_argument(
        "--n-components", type=int_pos, default=None, metavar="K", help="K (default: chosen by BIC)"
    )
    cluster.add_argument(
        "--covariance-type",
        choices=["full", "diag"],
        default="full",
        help="covariance of each component (default: full)",
    )
    cluster.add_argument(
        "--key-added", default="gmm", metavar="KEY", help="name of the slots written (default: gmm)"
    )
    cluster.add_argument(
        "--seed",
        type=int_nonneg,
        default=0,
        metavar="N",
        help="seed of the initialisation (default: 0)",
    )

    demo = sub.add_parser(
        "demo",
        help="fit ZINBVAE on the bundled PBMC 3k data; write .h5ad and a UMAP .png",
        description="Fit ZINBVAE on the PBMC 3k counts bundled with scvae and write the "
        "result (.h5ad) and a UMAP coloured by cell type (.png, same name).",
    )
    demo.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("scvae_demo.h5ad"),
        help="output .h5ad; the UMAP goes beside it as .png (default: scvae_demo.h5ad)",
    )
    demo.add_argument(
        "--max-epochs",
        type=int_pos,
        default=100,
        metavar="N",
        help="training epochs (default 100: a few minutes)",
    )
    demo.add_argument(
        "--n-top-genes",
        type=int_nonneg,
        default=2000,
        metavar="N",
        help="highly variable genes to model (default: 2000; 0: all)",
    )
    demo.add_argument(
        "--seed", type=int_nonneg, default=0, metavar="N", help="random seed (default: 0)"
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


# --------------------------------------------------------------------------- output files
def _new_file_mode() -> int:
    """The permissions of a new file under the current umask (``0o644`` under ``022``)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _check_destination(path: Path, option: str, *, directory: bool = False) -> None:
    """Refuse, before any work, an output path that cannot be written."""
    if directory and path.exists():
        if not path.is_dir():
            raise CLIError(f"{option} {path} is an existing file; give a directory (new or empty)")
        if any(path.iterdir()):
            raise CLIError(f"{option} directory {path} exists and is not empty")
        if not os.access(path, os.W_OK | os.X_OK):
            raise CLIError(f"{option} directory {path} is not writable")
        return
    if path.is_dir():
        raise CLIError(
            f"{option} {path} is a directory; give a file name, e.g. {path / 'out.h5ad'}"
        )
    parent = path.parent  # the nearest existing folder above: written into, or created in
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CLIError(f"{option} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"{option} {path}: directory {parent} is not writable")


def _check_distinct(*paths: tuple[str, Path | None]) -> None:
    """Refuse two outputs that are the same file, or one inside the other."""
    given = [(option, path.resolve()) for option, path in paths if path is not None]
    for i, (option_a, a) in enumerate(given):
        for option_b, b in given[i + 1 :]:
            if a == b or a in b.parents or b in a.parents:
                raise CLIError(f"{option_a} {a} and {option_b} {b} overlap; give separate paths")


class _Staged:
    """Write to a temporary file beside ``path``; :meth:`commit` renames it into place.

    The file gets the permissions a plain ``open()`` would give it (``mkstemp`` makes it
    ``0600``); an existing ``path`` keeps its own. Without a commit the temporary file is
    removed, so that a failure leaves nothing behind.
    """

    def __init__(self, path: Path, mode: int) -> None:
        self.path = path
        self.mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else mode
        self.tmp: Path | None = None

    def write(self, writer: Callable[[Path], None]) -> _Staged:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=self.path.suffix, dir=self.path.parent
        )
        os.close(fd)
        self.tmp = Path(tmp)
        writer(self.tmp)
        os.chmod(self.tmp, self.mode)
        return self

    def commit(self) -> None:
        assert self.tmp is not None
        os.replace(self.tmp, self.path)
        self.tmp = None

    def discard(self) -> None:
        if self.tmp is not None and self.tmp.exists():
            self.tmp.unlink()
        self.tmp = None


# ------------------------------------------------------------------------------ the work
def _read(path: Path):
    import anndata as ad

    if not path.is_file():
        raise CLIError(f"input file {path} does not exist")
    try:
        return ad.read_h5ad(path)
    except Exception as err:  # h5py/anndata raise many types for a bad file
        raise CLIError(f"cannot read {path} as .h5ad: {err}") from None


def _check_accelerator(accelerator: str | None) -> None:
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CLIError(f"--accelerator {accelerator}: no CUDA GPU is available here")
    elif accelerator == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise CLIError("--accelerator mps: MPS (Apple GPU) is not available here")


def _highly_variable(adata, layer: str | None, n_top_genes: int):
    """Mask of the ``n_top_genes`` most variable genes, as ``scvae demo`` and the tutorials.

    scanpy's ``flavor="seurat"`` on a log-normalized copy of the counts; ``adata`` is not
    modified.
    """
    import anndata as ad
    import numpy as np
    import scanpy as sc
    import scipy.sparse as sp

    if layer is not None and layer not in adata.layers:
        layers = ", ".join(repr(k) for k in adata.layers) or "none"
        raise CLIError(f"layer={layer!r} is not in adata.layers (layers present: {layers})")
    counts = adata.X if layer is None else adata.layers[layer]
    if counts is None:
        raise CLIError("adata.X is None; put the raw counts in X or pass --layer")
    values = counts.data if sp.issparse(counts) else np.asarray(counts)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        raise CLIError(
            f"{where} has negative, NaN or infinite values; --n-top-genes and the count "
            "models need raw counts (pass the counts layer with --layer)"
        )
    log_norm = ad.AnnData(counts.astype(np.float32, copy=True))
    log_norm.var_names = adata.var_names
    sc.pp.normalize_total(log_norm, target_sum=1e4)
    sc.pp.log1p(log_norm)
    sc.pp.highly_variable_genes(log_norm, flavor="seurat", n_top_genes=n_top_genes)
    mask = log_norm.var["highly_variable"].to_numpy()
    n_empty = int(np.count_nonzero(np.asarray(counts[:, mask].sum(axis=1)).ravel() <= 0))
    if n_empty:
        raise CLIError(
            f"{n_empty} cells have no counts in the {n_top_genes} most variable genes; pass a "
            "larger --n-top-genes (0: all genes) or remove those cells first"
        )
    return mask


def _slots(adata) -> set[str]:
    names = {f"obs['{k}']" for k in adata.obs.columns} | {f"var['{k}']" for k in adata.var}
    for slot in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
        names |= {f"{slot}['{k}']" for k in getattr(adata, slot).keys()}
    return names


def _written(explicit: list[tuple[str, str]], before: set[str], after) -> str:
    """The slots written: those named by the command, then any other new one."""
    names = [name for name, _ in explicit]
    extra = sorted(_slots(after) - before - set(names))
    return ", ".join([f"{name}{note}" for name, note in explicit] + extra)


def _fit(args: argparse.Namespace, mode: int) -> None:
    if args.model == "ssvae" and args.labels_key is None:
        raise CLIError("--model ssvae needs --labels-key (the obs column of cell labels)")
    if args.model != "ssvae":
        for dest, option in (
            ("labels_key", "--labels-key"),
            ("unlabeled_category", "--unlabeled-category"),
        ):
            if getattr(args, dest) is not None:
                raise CLIError(f"{option} applies to --model ssvae only")
    if args.model in _NOT_VAE:
        how = "fitted in closed form" if args.model == "ppca" else "fitted by EM"
        for dest, option in _VAE_ONLY.items():
            if getattr(args, dest) is not None:
                raise CLIError(f"{option} does not apply to --model {args.model} ({how})")
    _check_destination(args.output, "-o")
    if args.save_model is not None:
        _check_destination(args.save_model, "--save-model", directory=True)
        _check_distinct(("-o", args.output), ("--save-model", args.save_model))
    _check_accelerator(args.accelerator)
    adata = _read(args.input)

    import scvae

    data = adata
    if args.n_top_genes and args.n_top_genes < adata.n_vars:
        hvg = _highly_variable(adata, args.layer, args.n_top_genes)
        data = adata[:, hvg].copy()
    options = {k: v for k, v in vars(args).items() if v is not None}
    accelerator = options.get("accelerator", "auto")
    if args.model in _NOT_VAE:
        model = getattr(scvae, _MODELS[args.model])(data, layer=args.layer, n_latent=args.n_latent)
        model.fit(seed=args.seed, accelerator=accelerator)
    else:
        model_class = getattr(scvae, _MODELS[args.model])
        labels = {}
        if args.model == "ssvae":
            labels = {"labels_key": args.labels_key}
            if args.unlabeled_category is not None:
                labels["unlabeled_category"] = args.unlabeled_category
        model = model_class(
            data,
            **labels,
            layer=args.layer,
            batch_key=args.batch_key,
            categorical_covariate_keys=args.categorical_covariate_keys,
            continuous_covariate_keys=args.continuous_covariate_keys,
            encode_covariates=bool(args.encode_covariates),
            n_latent=args.n_latent,
        )
        fit_options = {
            k: options[k]
            for k in ("max_epochs", "batch_size", "lr", "train_size", "patience", "devices",
                      "num_nodes", "strategy")
            if k in options
        }  # fmt: skip
        model.fit(
            seed=args.seed, accelerator=accelerator, progress_bar=not args.quiet, **fit_options
        )
        if model.training.get("global_rank", 0) != 0:  # distributed: rank 0 writes
            return
    before = _slots(adata)
    result = adata
    obsm_key, uns_key = _latent_slots(args.key_added, model.default_key)
    model.write_latent(data, key_added=args.key_added)  # the genes the model was trained on
    if data is not adata:
        result.obsm[obsm_key], result.uns[uns_key] = data.obsm[obsm_key], data.uns[uns_key]
    explicit = [(f"obsm['{obsm_key}']", f" ({adata.n_obs} x {args.n_latent})")]
    explicit.append((f"uns['{uns_key}']", ""))
    if args.model == "ssvae":
        model.write_labels(data, key_added=args.key_added)
        key = args.key_added or model.default_key
        if data is not adata:
            result.obs[key] = data.obs[key]
            result.obsm[f"{key}_proba"] = data.obsm[f"{key}_proba"]
            result.uns[key] = data.uns[key]
        n_labels = len(model.label_categories)
        explicit += [(f"obs['{key}']", f" ({n_labels} labels)"), (f"obsm['{key}_proba']", "")]
    if data is not adata:
        result.var["highly_variable"] = hvg
        explicit.append(("var['highly_variable']", f" ({int(hvg.sum())} genes)"))
    if args.cluster is not None:
        scvae.tl.gmm(result, use_rep=obsm_key, n_components=args.cluster or None, seed=args.seed)
        k = result.obsm["gmm_proba"].shape[1]
        explicit += [
            ("obs['gmm']", f" ({k} clusters)"),
            ("obsm['gmm_proba']", ""),
            ("uns['gmm']", ""),
        ]
    staged = _Staged(args.output, mode).write(result.write_h5ad)
    try:
        if args.save_model is not None:
            model.save(args.save_model)
        staged.commit()
    finally:
        staged.discard()
    line = f"wrote {args.output}: {_written(explicit, before, result)}"
    if args.save_model is not None:
        line += f"; saved the model to {args.save_model}"
    print(line)


def _latent_slots(key_added: str | None, default: str) -> tuple[str, str]:
    try:
        from scvae.data import latent_slots
    except ImportError:  # pragma: no cover - older scvae.data
        key = key_added or default
        return f"X_{key}", key
    return latent_slots(key_added, default)


def _cluster(args: argparse.Namespace, mode: int) -> None:
    _check_destination(args.output, "-o")
    adata = _read(args.input)

    import scvae

    before = _slots(adata)
    scvae.tl.gmm(
        adata,
        use_rep=args.use_rep,
        n_components=args.n_components,
        covariance_type=args.covariance_type,
        key_added=args.key_added,
        seed=args.seed,
    )
    staged = _Staged(args.output, mode).write(adata.write_h5ad)
    try:
        staged.commit()
    finally:
        staged.discard()
    key = args.key_added
    k = adata.obsm[f"{key}_proba"].shape[1]
    explicit = [
        (f"obs['{key}']", f" ({k} clusters)"),
        (f"obsm['{key}_proba']", ""),
        (f"uns['{key}']", ""),
    ]
    print(f"wrote {args.output}: {_written(explicit, before, adata)}")


def _demo(args: argparse.Namespace, mode: int) -> None:
    png = args.output.with_suffix(".png")
    _check_destination(args.output, "-o")
    _check_destination(png, "-o (its .png)")
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    import scvae

    adata = scvae.datasets.pbmc3k()
    if args.n_top_genes and args.n_top_genes < adata.n_vars:
        adata = adata[:, _highly_variable(adata, None, args.n_top_genes)].copy()
    before = _slots(adata)
    print(f"PBMC 3k: {adata.n_obs} cells x {adata.n_vars} genes; fitting ZINBVAE ...")
    model = scvae.ZINBVAE(adata, batch_key=None)
    model.fit(max_epochs=args.max_epochs, seed=args.seed, progress_bar=not args.quiet)
    model.write_latent(adata)
    heldout = model.marginal_log_likelihood(adata[model.validation_indices], n_samples=100).mean()
    sc.pp.neighbors(adata, use_rep="X_zinbvae", random_state=args.seed)
    sc.tl.umap(adata, random_state=args.seed)
    with warnings.catch_warnings():  # scanpy's own use of matplotlib: not the user's concern
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        fig = sc.pl.umap(
            adata, color="cell_type", return_fig=True, show=False, title="ZINBVAE, PBMC 3k"
        )
    figure = _Staged(png, mode).write(lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight"))
    try:
        staged = _Staged(args.output, mode).write(adata.write_h5ad)
        try:
            staged.commit()
        finally:
            staged.discard()
        figure.commit()
    finally:
        figure.discard()
    epochs = adata.uns["zinbvae"]["params"]["n_epochs_trained"]
    explicit = [("obsm['X_zinbvae']", ""), ("uns['zinbvae']", ""), ("obsm['X_umap']", "")]
    print(
        f"trained {epochs} epochs; held-out log p(x) (IWAE, 100 samples) = {heldout:.1f} "
        f"nats/cell\nwrote {args.output} ({_written(explicit, before, adata)}) and {png}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    mode = _new_file_mode()
    try:
        {"fit": _fit, "cluster": _cluster, "demo": _demo}[args.command](args, mode)
    except (CLIError, ValueError, KeyError, TypeError, FileNotFoundError, FileExistsError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"scvae: error: {message}", file=sys.stderr)
        return 2
    except (PermissionError, IsADirectoryError, NotADirectoryError) as err:
        print(f"scvae: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # training divergence and the like: still one line
        print(f"scvae: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
