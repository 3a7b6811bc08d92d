"""Scanpy-style tools: `scvae.tl.zinbvae(adata, ...)`, `scvae.tl.gmm(adata, ...)` and friends."""

from scvae.tl._evaluate import evaluate
from scvae.tl._gmm import gmm
from scvae.tl._ppca import ppca
from scvae.tl._vae import gaussianvae, nbvae, poissonvae, zinbvae

__all__ = ["evaluate", "gaussianvae", "gmm", "nbvae", "poissonvae", "ppca", "zinbvae"]
