"""Scanpy-style tools: `scvae.tl.zinbvae(adata, ...)`, `scvae.tl.gmm(adata, ...)` and friends.

The functions are imported on first use (PEP 562): ``import scvae.tl`` loads neither torch nor
scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: public function -> the submodule that defines it
_FUNCTIONS = {
    "evaluate": "scvae.tl._evaluate",
    "factor_analysis": "scvae.tl._fa",
    "gaussianvae": "scvae.tl._vae",
    "gmm": "scvae.tl._gmm",
    "gmvae": "scvae.tl._gmvae",
    "nbvae": "scvae.tl._vae",
    "poissonvae": "scvae.tl._vae",
    "ppca": "scvae.tl._ppca",
    "rank_genes_groups": "scvae.tl._de",
    "ssvae": "scvae.tl._ssvae",
    "zinbvae": "scvae.tl._vae",
}

__all__ = [
    "evaluate",
    "factor_analysis",
    "gaussianvae",
    "gmm",
    "gmvae",
    "nbvae",
    "poissonvae",
    "ppca",
    "rank_genes_groups",
    "ssvae",
    "zinbvae",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time see __getattr__
    from scvae.tl._de import rank_genes_groups
    from scvae.tl._evaluate import evaluate
    from scvae.tl._fa import factor_analysis
    from scvae.tl._gmm import gmm
    from scvae.tl._gmvae import gmvae
    from scvae.tl._ppca import ppca
    from scvae.tl._ssvae import ssvae
    from scvae.tl._vae import gaussianvae, nbvae, poissonvae, zinbvae


def __getattr__(name: str):
    if name in _FUNCTIONS:
        value = getattr(importlib.import_module(_FUNCTIONS[name]), name)
        globals()[name] = value  # later look-ups skip __getattr__
        return value
    raise AttributeError(f"module 'scvae.tl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
