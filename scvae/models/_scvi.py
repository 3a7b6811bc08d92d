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
    categorical_covariate_keys
        ``obs`` columns of further categorical covariates to condition on (donor, chemistry,
        ...), as scVI's. Each gets its own learned embedding ``E_j[c_j]`` added in every layer
        of the decoder (like the batch); every cell needs a label, each column at least two
        (unused categories of a categorical column play no part). Queried cells must carry
        the same columns with categories seen in training.
    continuous_covariate_keys
        ``obs`` columns of numeric covariates (percent mitochondrial counts, cell-cycle
        scores, ...): standardized with the training mean and standard deviation and mapped
        linearly into every decoder layer. Finite values in every cell, not constant.
    encode_covariates
        Also inject the covariates into the encoders ``q(z | x, s, c)`` and ``q(l | x, s, c)``;
        by default (False, as scVI) only the decoder sees them, so ``z`` is encouraged to
        describe the cell without them. ``get_normalized_expression(transform_covariates=...)``
        decodes every cell under chosen covariate values.
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

    With covariates beyond the batch:

    >>> model = scvae.ZINBVAE(
    ...     adata,
    ...     batch_key="batch",
    ...     categorical_covariate_keys=["donor"],
    ...     continuous_covariate_keys=["pct_counts_mt"],
    ... )
    >>> model.fit()
    >>> model.get_normalized_expression(transform_covariates={"pct_counts_mt": 2.0})
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
