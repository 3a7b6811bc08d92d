"""User-facing model classes: fit, get_latent, write_latent, scoring, save/load."""

from scvae.models._gmm import GMM
from scvae.models._ppca import PPCA
from scvae.models._vae import NBVAE, ZINBVAE, GaussianVAE, PoissonVAE, VAEModel

__all__ = ["GMM", "NBVAE", "PPCA", "ZINBVAE", "GaussianVAE", "PoissonVAE", "VAEModel"]
