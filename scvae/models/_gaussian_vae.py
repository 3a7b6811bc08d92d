"""The Gaussian VAE baseline on log-normalized expression, through the shared VAE code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from anndata import AnnData

from scvae.data import CellData, log_normalize
from scvae.models._vae import VAEModel
from scvae.models._vae_config import VAEConfig

__all__ = ["GaussianVAE"]


class GaussianVAE(VAEModel):
    """Gaussian VAE baseline on log-normalized expression.

    ``z ~ N(0, I)``; ``x ~ Normal(mu(z, s), diag sigma^2)`` with gene-wise variances, where
    ``x = log1p(normalize_total(counts, 1e4))`` is computed inside from the counts (sparse,
    on the non-zeros), or, with ``log_normalize=False``, the given layer used as it is.
    Trained, scored (ELBO, IWAE estimate of log p(x) in the log-normalized space) and saved
    exactly like :class:`~scvae.ZINBVAE`, by the same training loop.

    Parameters
    ----------
    adata
        Cells x genes AnnData.
    layer
        Layer with raw counts (``log_normalize=True``) or with the data to model as it is.
    batch_key
        ``obs`` column of batches (one-hot covariate in encoder and decoder).
    categorical_covariate_keys, continuous_covariate_keys, encode_covariates
        Covariates beyond the batch, as in :class:`~scvae.ZINBVAE`.
    log_normalize
        Log-normalize counts inside (default). False: model the layer's values as they are
        (finite values required; negative values allowed, e.g. scaled data).
    n_latent, n_hidden, n_layers, dropout_rate
        Latent dimension and network sizes.
    """

    likelihood = "gaussian"
    default_key = "gaussianvae"

    def __init__(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        batch_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
        encode_covariates: bool = False,
        log_normalize: bool = True,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
    ) -> None:
        config = VAEConfig(
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            dispersion="gene",
            library="observed",
            log_normalize=log_normalize,
            encode_covariates=encode_covariates,
        )
        self._setup_from(
            adata,
            layer=layer,
            batch_key=batch_key,
            config=config,
            categorical_covariate_keys=categorical_covariate_keys,
            continuous_covariate_keys=continuous_covariate_keys,
        )

    def _reads_counts(self, config: VAEConfig) -> bool:
        return config.log_normalize

    def _transform(self, data: CellData, config: VAEConfig) -> CellData:
        return log_normalize(data) if config.log_normalize else data

    def _config_record(self) -> dict[str, Any]:
        return self.config.to_dict()
