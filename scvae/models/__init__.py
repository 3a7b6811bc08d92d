"""User-facing model classes: fit, get_latent, write_latent, scoring, save/load."""

from scvae.models._vae import NBVAE, ZINBVAE, GaussianVAE, PoissonVAE, VAEModel

__all__ = ["NBVAE", "ZINBVAE", "GaussianVAE", "PoissonVAE", "VAEModel"]
