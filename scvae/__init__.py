"""scvae: deep generative models of single-cell RNA-seq counts for the scanpy/AnnData workflow.

>>> import scvae
>>> adata = scvae.datasets.pbmc3k()
>>> model = scvae.ZINBVAE(adata, batch_key="batch")
>>> model.fit()
>>> model.write_latent(adata)  # adata.obsm["X_zinbvae"]
>>> scvae.tl.gmm(adata, use_rep="X_zinbvae")  # adata.obs["gmm"], adata.obsm["gmm_proba"]

Submodules and classes are imported on first use (PEP 562), so ``import scvae`` and the
``scvae`` command start quickly; torch, Lightning, scanpy and matplotlib are loaded only by the
parts that need them.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

try:
    __version__ = version("scvae")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

#: public submodules, imported on first attribute access
_SUBMODULES = ("datasets", "metrics", "pl", "tl")
#: public names defined in a submodule -> that submodule
_ATTRIBUTES = {
    "FactorAnalysis": "scvae.models",
    "GMM": "scvae.models",
    "GMVAE": "scvae.models",
    "NBVAE": "scvae.models",
    "PPCA": "scvae.models",
    "SSVAE": "scvae.models",
    "ZINBVAE": "scvae.models",
    "GaussianVAE": "scvae.models",
    "PoissonVAE": "scvae.models",
    "TrainingDivergedError": "scvae.train",
}

__all__ = [
    "GMM",
    "GMVAE",
    "NBVAE",
    "PPCA",
    "SSVAE",
    "ZINBVAE",
    "FactorAnalysis",
    "GaussianVAE",
    "PoissonVAE",
    "TrainingDivergedError",
    "__version__",
    "datasets",
    "metrics",
    "pl",
    "tl",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time see __getattr__
    from scvae import datasets, metrics, pl, tl
    from scvae.models import (
        GMM,
        GMVAE,
        NBVAE,
        PPCA,
        SSVAE,
        ZINBVAE,
        FactorAnalysis,
        GaussianVAE,
        PoissonVAE,
    )
    from scvae.train import TrainingDivergedError


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"scvae.{name}")
    if name in _ATTRIBUTES:
        value = getattr(importlib.import_module(_ATTRIBUTES[name]), name)
        globals()[name] = value  # later look-ups skip __getattr__
        return value
    raise AttributeError(f"module 'scvae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
