"""scvae: deep generative models of single-cell RNA-seq counts for the scanpy/AnnData workflow.

>>> import scvae
>>> adata = scvae.datasets.pbmc3k()
>>> model = scvae.ZINBVAE(adata, batch_key="batch")
>>> model.fit()
>>> model.write_latent(adata)  # adata.obsm["X_zinbvae"]
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scvae")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

from scvae import datasets, tl
from scvae.models import NBVAE, ZINBVAE, GaussianVAE, PoissonVAE
from scvae.train import TrainingDivergedError

__all__ = [
    "NBVAE",
    "ZINBVAE",
    "GaussianVAE",
    "PoissonVAE",
    "TrainingDivergedError",
    "__version__",
    "datasets",
    "tl",
]
