"""The scVI count models: ZINBVAE, NBVAE and PoissonVAE (Lopez et al., Nature Methods 2019).

Each is :class:`~scvae.models._vae.VAEModel` with its observation model named; everything
else (training, scoring, writing, saving) is shared.
"""

from __future__ import annotations

from scvae.models._vae import VAEModel

__all__ = ["NBVAE", "ZINBVAE", "PoissonVAE"]


class ZINBVAE(VAEModel):
    """scVI with a zero-inflated negative-binomial decoder (Lopez et al., Nature Methods 2019).

    ``z ~ N(0, I)``; ``l ~ LogNormal`` with the per-batch empirical prior of log library size;
    ``rho = softmax(f_w(z, s))``; ``x ~ ZINB(mean l * rho, inverse dispersion theta, gate
    sigmoid(f_h(z, s)))``. Fitted by amortized variational inference on the ELBO.

    Parameters
    ----------
    adata
        Cells x genes AnnData with raw counts (sparse or dense, float or integer).
    layer
        Layer with the raw counts; None uses ``adata.X``.
    batch_key
        ``obs`` column of batches to correct for (one-hot covariate in encoder and decoder).
    n_latent, n_hidden, n_layers, dropout_rate
        Latent dimension and network sizes.
    dispersion
        ``"gene"`` (default), ``"gene-batch"`` or ``"gene-cell"``.
    library
        ``"latent"`` (default: LogNormal latent with the empirical per-batch prior) or
        ``"observed"`` (the observed total count, no q(l)).

    Examples
    --------
    >>> model = scvae.ZINBVAE(adata, layer="counts", batch_key="batch")
    >>> model.fit()
    >>> model.write_latent(adata)  # adata.obsm["X_zinbvae"], adata.uns["zinbvae"]["params"]
    >>> sc.pp.neighbors(adata, use_rep="X_zinbvae")
    """

    likelihood = "zinb"
    default_key = "zinbvae"


class NBVAE(VAEModel):
    """scVI with a negative-binomial (Gamma-Poisson) decoder, no zero inflation.

    Same parameters and methods as :class:`ZINBVAE`; default key ``"nbvae"``.
    """

    likelihood = "nb"
    default_key = "nbvae"


class PoissonVAE(VAEModel):
    """scVI with a Poisson decoder (no Gamma overdispersion, no zero inflation).

    Same parameters and methods as :class:`ZINBVAE` (``dispersion`` is ignored); default key
    ``"poissonvae"``.
    """

    likelihood = "poisson"
    default_key = "poissonvae"
