"""User-facing model classes: fit, get_latent, write_latent, scoring, save/load."""

from scvae.models._count_vae import NBVAE, ZINBVAE, CountVAE, PoissonVAE

__all__ = ["NBVAE", "ZINBVAE", "CountVAE", "PoissonVAE"]
