"""scvae: deep generative models of single-cell RNA-seq counts for the scanpy/AnnData workflow.

>>> import scvae
>>> adata = scvae.datasets.pbmc3k()
>>> model = scvae.ZINBVAE(adata, batch_key="batch")
>>> model.fit()
>>> model.write_latent(adata)  # adata.obsm["X_zinbvae"]
>>> scvae.tl.gmm(adata, use_rep="X_zinbvae")  # adata.obs["gmm"], adata.obsm["gmm_proba"]
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scvae")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

from scvae import datasets, metrics, pl, tl
from scvae.models import GMM, NBVAE, PPCA, ZINBVAE, GaussianVAE, PoissonVAE
from scvae.train import TrainingDivergedError

__all__ = [
    "GMM",
    "NBVAE",
    "PPCA",
    "ZINBVAE",
    "GaussianVAE",
    "PoissonVAE",
    "TrainingDivergedError",
    "__version__",
    "datasets",
    "metrics",
    "pl",
    "tl",
]
