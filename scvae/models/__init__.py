"""User-facing model classes: fit, get_latent, write_latent, scoring, save/load.

======================  ==============================================================
module                  models
======================  ==============================================================
``_vae.py``             :class:`VAEModel`, the shared VAE implementation, and its config
``_scvi.py``            :class:`ZINBVAE`, :class:`NBVAE`, :class:`PoissonVAE`
``_gaussian_vae.py``    :class:`GaussianVAE`
``_ppca.py``            :class:`PPCA`
``_fa.py``              :class:`FactorAnalysis`
``_gmm.py``             :class:`GMM`
``_gmvae.py``           :class:`GMVAE` (mixture-prior VAE) and :class:`GMVAEConfig`
``_ssvae.py``           :class:`SSVAE` (semi-supervised VAE) and :class:`SSVAEConfig`
``_io.py``              the one save/load path (:class:`~scvae.models._io.SavedModel`)
======================  ==============================================================
"""

from scvae.models._fa import FactorAnalysis
from scvae.models._gaussian_vae import GaussianVAE
from scvae.models._gmm import GMM
from scvae.models._gmvae import GMVAE, GMVAEConfig
from scvae.models._ppca import PPCA
from scvae.models._scvi import NBVAE, ZINBVAE, PoissonVAE
from scvae.models._ssvae import SSVAE, SSVAEConfig
from scvae.models._vae import VAEModel
from scvae.models._vae_config import VAEConfig

__all__ = [
    "GMM",
    "GMVAE",
    "NBVAE",
    "PPCA",
    "SSVAE",
    "ZINBVAE",
    "FactorAnalysis",
    "GMVAEConfig",
    "GaussianVAE",
    "PoissonVAE",
    "SSVAEConfig",
    "VAEConfig",
    "VAEModel",
]
