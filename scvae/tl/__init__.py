"""Scanpy-style tools: ``scvae.tl.zinbvae(adata, ...)`` and friends."""

from scvae.tl._vae import nbvae, poissonvae, zinbvae

__all__ = ["nbvae", "poissonvae", "zinbvae"]
