"""Scanpy-style tools: `scvae.tl.zinbvae(adata, ...)`, `scvae.tl.gmm(adata, ...)` and friends."""

from scvae.tl._vae import gaussianvae, nbvae, poissonvae, zinbvae

__all__ = ["gaussianvae", "nbvae", "poissonvae", "zinbvae"]
