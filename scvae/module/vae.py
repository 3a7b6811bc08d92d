"""The scVI generative model and its amortized posterior, in pure torch (no AnnData here).

Generative model for cell ``n`` with batch ``s_n`` (Lopez et al., Nature Methods 2019)::

    z_n   ~ Normal(0, I)
    l_n   ~ LogNormal(l_mu[s_n], l_var[s_n])        (empirical per-batch prior)
    rho_n = softmax(f_w(z_n, s_n))                  (expression proportions over genes)
    w_ng  ~ Gamma(theta_g, theta_g / rho_ng)
    y_ng  ~ Poisson(l_n w_ng)                       (so y_ng ~ NB(l_n rho_ng, theta_g))
    h_ng  ~ Bernoulli(sigmoid(f_h(z_n, s_n)))
    x_ng  = 0 if h_ng else y_ng                     (zero inflation)

Variational posterior ``q(z | x, s) q(log l | x, s)``: two Gaussian encoders on ``log1p(x)``.
``library="observed"`` replaces the latent ``l`` by the observed total count.

Covariates beyond the batch ``c_n`` (categorical codes and standardized continuous values,
:class:`~scvae.nn.Covariates`, in ``batch.covariates``) enter the decoder wherever ``s_n`` does,
``f_w(z_n, s_n, c_n)``, and with ``encode_covariates`` the encoders too, as in scVI.

``likelihood`` picks the observation model ``p(x | z, l, s)`` (:mod:`scvae.distributions`):
ZINB, NB, Poisson, or the Gaussian VAE baseline on log-normalized data, ``x ~ Normal(mu(z, s),
diag sigma^2)`` with gene-wise variances, no library and the encoder on ``x`` itself. The
module asks the observation-model class for its decoder heads and parameter once, at
construction; after that every method works the same for all of them.

The ELBO is ``E_q[log p(x | z, l, s)] - KL(q(z) || p(z)) - KL(q(l) || p(l))``; the importance-
weighted bound (IWAE) uses ``log w = log p(x|z,l) + log p(z) + log p(l) - log q(z) - log q(l)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from scvae.distributions import DISPERSIONS, ObservationModel, observation_model
from scvae.distributions.observation import Dispersion, Likelihood
from scvae.minibatch import Minibatch
from scvae.nn import (
    CovariateLinear,
    Covariates,
    CovariateSizes,
    DecoderOutput,
    GaussianEncoder,
    NewRowInit,
    SparseInput,
)

__all__ = ["DISPERSIONS", "LIBRARIES", "Inference", "Library", "LossOutput", "VAEModule"]

Library = Literal["latent", "observed"]
LIBRARIES: tuple[str, ...] = ("latent", "observed")


@dataclass
class Inference:
    """Output of :meth:`VAEModule.inference`.

    ``z`` is (N, L) for one sample or (K, N, L) for ``K`` samples; ``log_library`` likewise
    (N, 1) or (K, N, 1). ``ql`` is None when the library is observed (or absent).
    """

    qz: Normal
    z: torch.Tensor
    ql: Normal | None
    log_library: torch.Tensor


@dataclass
class LossOutput:
    """Per-cell terms of the ELBO and the scalar training loss.

    ``elbo = reconstruction - kl_z - kl_l``; the loss weighs ``kl_z`` by the warm-up weight.
    """

    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl_z: torch.Tensor
    kl_l: torch.Tensor

    @property
    def elbo(self) -> torch.Tensor:
        """Per-cell evidence lower bound, (N,)."""
        return self.reconstruction - self.kl_z - self.kl_l


class VAEModule(nn.Module):
    """scVI as a torch module: ``inference()``, ``generative()``, ``loss()``.

    Parameters
    ----------
    n_genes
        Number of genes ``G``.
    n_batch
        Number of batch categories (1 when there is no batch covariate).
    library_log_mean, library_log_var
        (n_batch,) empirical mean and variance of ``log(total counts)`` within each batch:
        the prior of the latent library size.
    n_latent, n_hidden, n_layers, dropout_rate
        Network sizes; ``dropout_rate`` applies to the encoders only (the decoder is the
        generative model and has none, as in scVI).
    likelihood
        ``"zinb"``, ``"nb"``, ``"poisson"`` or ``"gaussian"`` (log-normalized input).
    dispersion
        ``"gene"`` (theta_g), ``"gene-batch"`` (theta_{g,s}) or ``"gene-cell"`` (decoded per cell).
    library
        ``"latent"`` (LogNormal latent with the empirical prior) or ``"observed"``.
    n_cats_per_cov
        Number of categories of each categorical covariate beyond the batch (scVI's name).
    n_continuous_cov
        Number of continuous covariates.
    encode_covariates
        Also inject the covariates into the encoders (by default only into the decoder).
    """

    def __init__(
        self,
        n_genes: int,
        n_batch: int,
        library_log_mean: torch.Tensor,
        library_log_var: torch.Tensor,
        *,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        likelihood: Likelihood = "zinb",
        dispersion: Dispersion = "gene",
        library: Library = "latent",
        n_cats_per_cov: Sequence[int] = (),
        n_continuous_cov: int = 0,
        encode_covariates: bool = False,
    ) -> None:
        super().__init__()
        self.n_genes, self.n_batch, self.n_latent = n_genes, n_batch, n_latent
        covariates = CovariateSizes(tuple(int(n) for n in n_cats_per_cov), int(n_continuous_cov))
        self.covariate_sizes = covariates
        self.encode_covariates = bool(encode_covariates) and bool(covariates)
        self.observation: type[ObservationModel] = observation_model(likelihood)
        # encoders read x by its non-zeros when given them (same function; faster on the CPU
        # for sparse data): a switch of the computation, not of the model
        self.sparse_input = False
        encoder_kwargs = {
            "n_hidden": n_hidden,
            "n_layers": n_layers,
            "n_batch": n_batch,
            "dropout_rate": dropout_rate,
            "covariates": covariates if self.encode_covariates else None,
        }
        self.z_encoder = GaussianEncoder(n_genes, n_latent, **encoder_kwargs)
        self.l_encoder = (
            GaussianEncoder(n_genes, 1, **encoder_kwargs)
            if library == "latent" and self.observation.counts
            else None
        )
        self.decoder = self.observation.make_decoder(
            n_latent,
            n_genes,
            n_hidden=n_hidden,
            n_layers=n_layers,
            n_batch=n_batch,
            dispersion=dispersion,
            covariates=covariates or None,
        )
        parameter = self.observation.make_parameter(n_genes, n_batch, dispersion)
        if parameter is not None:  # log_theta (NB, ZINB) or log_var (Gaussian)
            self.register_parameter(self.observation.parameter_name, parameter)
        self.register_buffer("library_log_mean", library_log_mean.float().reshape(n_batch))
        self.register_buffer("library_log_var", library_log_var.float().reshape(n_batch))

    @property
    def observation_parameter(self) -> torch.Tensor | None:
        """The observation model's learned, non-decoded parameter (``log theta``, ``log var``).

        While a query is mapped (:meth:`grow`), a per-batch parameter is the reference's rows
        followed by the new batches' rows.
        """
        name = self.observation.parameter_name
        parameter = None if name is None else getattr(self, name, None)
        new_rows = getattr(self, "observation_parameter_new", None)
        return parameter if new_rows is None else torch.cat([parameter, new_rows])

    # ------------------------------------------------------------------ reference mapping
    def grow(
        self,
        n_new_batches: int,
        library_log_mean: torch.Tensor,
        library_log_var: torch.Tensor,
        *,
        n_new_categories: Sequence[int] = (),
        init: NewRowInit = "zero",
    ) -> list[nn.Parameter]:
        """Add the parameters of new batches and categories, for mapping a query (scArches).

        Every batch embedding (encoders and decoder) gets ``n_new_batches`` rows, each
        categorical covariate's embeddings the rows of its new categories, a per-batch
        dispersion (``dispersion="gene-batch"``) rows initialised at the mean of the
        reference's ``log theta`` rows, and the library prior the new batches' empirical
        log-library mean and variance. The existing rows stay as fixed buffers; :meth:`merge`
        makes the module an ordinary one of ``n_batch + n_new_batches`` batches again.

        Parameters
        ----------
        n_new_batches
            Number of new batches (appended after the reference's).
        library_log_mean, library_log_var
            (n_new_batches,) the library prior of the new batches.
        n_new_categories
            New categories of each categorical covariate (empty: none).
        init
            How the new embedding rows start: ``"zero"`` or ``"mean"`` of the reference rows.

        Returns
        -------
        list of nn.Parameter
            The new parameters: the only ones a mapping trains.
        """
        n_new_categories = tuple(int(n) for n in n_new_categories)
        new: list[nn.Parameter] = []
        for layer in self.modules():
            if isinstance(layer, CovariateLinear):
                new += layer.grow(n_new_batches, n_new_categories, init=init)
        if any(n_new_categories):
            sizes = self.covariate_sizes
            grown = tuple(a + b for a, b in zip(sizes.n_categories, n_new_categories, strict=True))
            self.covariate_sizes = CovariateSizes(grown, sizes.n_continuous)
        if n_new_batches > 0:
            parameter = self.observation_parameter
            if parameter is not None and parameter.dim() == 2:  # (S, G) per-batch theta
                start = parameter.detach().mean(0, keepdim=True).expand(n_new_batches, -1)
                self.observation_parameter_new = nn.Parameter(start.clone())
                new.append(self.observation_parameter_new)
            mean = library_log_mean.float().to(self.library_log_mean.device).reshape(-1)
            var = library_log_var.float().to(self.library_log_var.device).reshape(-1)
            self.library_log_mean = torch.cat([self.library_log_mean, mean])
            self.library_log_var = torch.cat([self.library_log_var, var])
            self.n_batch += n_new_batches
        return new

    def merge(self) -> None:
        """After mapping: every grown embedding and parameter one ordinary tensor again."""
        for layer in self.modules():
            if isinstance(layer, CovariateLinear):
                layer.merge()
        new_rows = getattr(self, "observation_parameter_new", None)
        if new_rows is not None:
            merged = self.observation_parameter.detach().clone()
            del self.observation_parameter_new
            setattr(self, self.observation.parameter_name, nn.Parameter(merged))

    # ----------------------------------------------------------------------------- inference
    def encode(self, batch: Minibatch) -> tuple[Normal, Normal | None]:
        """The amortized posteriors ``q(z | x, s)`` over (N, L) and ``q(log l | x, s)`` over (N, 1).

        ``q(log l | x, s)`` is None when the library is observed (or absent). The encoders read
        the counts by their non-zeros when :attr:`sparse_input` is set or ``batch.x`` is None,
        and ``batch.covariates`` with :attr:`encode_covariates`.
        """
        encoder_input = self._encoder_input(batch)  # (N, G) dense or by its non-zeros
        covariates = batch.covariates if self.encode_covariates else None
        qz = self.z_encoder(encoder_input, batch.batch_index, covariates)  # Normal over (N, L)
        if self.l_encoder is None or not self.observation.counts:
            return qz, None
        # q(log l | x, s) = N(log(1 + sum_g x_g) + m(x, s), v(x, s)): the network learns the
        # correction to the observed log total, so the posterior is right from the first
        # step (from zero it needed ~100 epochs to learn a log library of ~8)
        delta = self.l_encoder(encoder_input, batch.batch_index, covariates)  # over (N, 1)
        return qz, Normal(
            delta.loc + torch.log1p(self._totals(batch)), delta.scale, validate_args=False
        )

    def inference(
        self,
        batch: Minibatch,
        *,
        n_samples: int | None = None,
        posterior: tuple[Normal, Normal | None] | None = None,
    ) -> Inference:
        """Encode a minibatch (or take ``posterior`` from :meth:`encode`) and sample ``z``, ``l``.

        With ``n_samples=K`` the samples get a leading dimension ``K``.
        """
        shape = torch.Size() if n_samples is None else torch.Size([n_samples])
        qz, ql = self.encode(batch) if posterior is None else posterior
        z = qz.rsample(shape)  # ([K,] N, L) reparameterised
        n = batch.n_cells
        if ql is not None:
            log_library = ql.rsample(shape)  # ([K,] N, 1)
        elif self.observation.counts:
            log_library = torch.log(self._totals(batch)).expand((*shape, n, 1))
        else:
            log_library = torch.zeros(*shape, n, 1, device=qz.loc.device)
        return Inference(qz=qz, z=z, ql=ql, log_library=log_library)

    @staticmethod
    def _totals(batch: Minibatch) -> torch.Tensor:
        """Total counts of each cell, (N, 1)."""
        if batch.x is not None:
            return batch.x.sum(-1, keepdim=True)
        return batch.nz.row_sum(batch.nz.x).unsqueeze(-1)

    def _encoder_input(self, batch: Minibatch) -> torch.Tensor | SparseInput:
        """``log1p(x)`` (variance-stabilised counts), or ``x`` itself for Gaussian data."""
        nz, transform = batch.nz, self.observation.encoder_input
        if nz is not None and (self.sparse_input or batch.x is None):
            return SparseInput(transform(nz.x), nz.col, nz.offsets)  # transform(0) = 0
        if batch.x is None:
            raise ValueError("inference needs the counts x or their non-zeros nz.")
        return transform(batch.x)  # (N, G)

    # ---------------------------------------------------------------------------- generative
    def decode(
        self,
        z: torch.Tensor,
        batch_index: torch.Tensor,
        covariates: Covariates | None = None,
    ) -> DecoderOutput:
        """The decoder's output for ``z`` ([K,] N, L) under batches ``batch_index`` (N,) and
        ``covariates`` of the N cells (None for a module without covariates)."""
        lead = z.shape[:-1]  # ([K,] N)
        z_flat = z.reshape(-1, self.n_latent)  # (K*N, L)
        batch_flat = batch_index.expand(lead).reshape(-1)  # (K*N,)
        covariates_flat = None if covariates is None else covariates.expand(lead)  # (K*N, .)
        out = self.decoder(z_flat, batch_flat, covariates_flat)
        return out.reshape(*lead, self.n_genes)  # ([K,] N, G)

    def generative(
        self,
        z: torch.Tensor,
        log_library: torch.Tensor,
        batch_index: torch.Tensor,
        covariates: Covariates | None = None,
    ) -> ObservationModel:
        """Decode ``z`` ([K,] N, L) and ``log l`` ([K,] N, 1) into ``p(x | z, l, s, c)``."""
        out = self.decode(z, batch_index, covariates)
        return self.observation.from_decoder(
            out, log_library, batch_index, self.observation_parameter
        )

    def denoised(
        self,
        z: torch.Tensor,
        batch_index: torch.Tensor,
        *,
        library_size: float,
        covariates: Covariates | None = None,
    ) -> torch.Tensor:
        """Denoised expression: ``library_size * rho(z, s, c)``, or ``mu(z, s, c)`` if Gaussian."""
        out = self.decode(z, batch_index, covariates)
        return self.observation.normalized(out, library_size)

    # --------------------------------------------------------------------------------- priors
    def sample_prior_z(self, n_cells: int, *, device: torch.device) -> torch.Tensor:
        """``n_cells`` draws of ``z`` from its prior ``N(0, I)``: (N, L)."""
        return torch.randn(n_cells, self.n_latent, device=device)

    def library_prior(self, batch_index: torch.Tensor) -> Normal:
        """Per-batch empirical prior ``p(log l | s)`` for each cell, over (N, 1)."""
        mean = self.library_log_mean[batch_index].unsqueeze(-1)  # (N, 1)
        var = self.library_log_var[batch_index].unsqueeze(-1)  # (N, 1)
        return Normal(mean, var.sqrt(), validate_args=False)

    # ----------------------------------------------------------------------------------- loss
    def loss(self, batch: Minibatch, *, kl_weight: float = 1.0) -> LossOutput:
        """Negative ELBO (KL(z) times the warm-up weight), minibatch mean, and per-cell terms.

        The sparse likelihood (non-zeros only; same value, faster) is used.
        """
        inf = self.inference(batch)
        px = self.generative(inf.z, inf.log_library, batch.batch_index, batch.covariates)
        reconstruction = px.log_likelihood(batch.x, nz=batch.nz)  # (N,)
        prior_z = Normal(
            torch.zeros_like(inf.qz.loc), torch.ones_like(inf.qz.scale), validate_args=False
        )
        kl_z = kl_divergence(inf.qz, prior_z).sum(-1)  # (N,)
        if inf.ql is not None:
            kl_l = kl_divergence(inf.ql, self.library_prior(batch.batch_index)).sum(-1)  # (N,)
        else:
            kl_l = torch.zeros_like(kl_z)
        # the warm-up weighs KL(z) only, as scVI does: it exists against posterior collapse of
        # z, while q(l) is anchored at the observed total and its KL to the empirical prior
        # has nothing to collapse (held-out log p(x) on PBMC 3k: +0.10 +- 0.22 nats/cell
        # against warming both, 3 seeds; docs/math.md)
        loss = torch.mean(-reconstruction + kl_weight * kl_z + kl_l)
        return LossOutput(loss=loss, reconstruction=reconstruction, kl_z=kl_z, kl_l=kl_l)

    def log_importance_weights(
        self,
        batch: Minibatch,
        *,
        n_samples: int,
        posterior: tuple[Normal, Normal | None] | None = None,
    ) -> torch.Tensor:
        """``log w_k = log p(x, z_k, l_k) - log q(z_k, l_k | x)`` for ``K`` posterior draws: (K, N).

        ``logsumexp(log w, 0) - log K`` is the IWAE estimate of ``log p(x)``. ``posterior``
        (from :meth:`encode`) lets blocks of draws share one pass of the encoders.
        """
        inf = self.inference(batch, n_samples=n_samples, posterior=posterior)
        px = self.generative(inf.z, inf.log_library, batch.batch_index, batch.covariates)
        log_px = px.log_likelihood(batch.x, nz=batch.nz)  # (K, N)
        log_pz = Normal(0.0, 1.0, validate_args=False).log_prob(inf.z).sum(-1)  # (K, N)
        log_qz = inf.qz.log_prob(inf.z).sum(-1)  # (K, N)
        log_w = log_px + log_pz - log_qz
        if inf.ql is not None:
            log_pl = self.library_prior(batch.batch_index).log_prob(inf.log_library).sum(-1)
            log_ql = inf.ql.log_prob(inf.log_library).sum(-1)  # (K, N)
            log_w = log_w + log_pl - log_ql
        return log_w

    @staticmethod
    def iwae_estimate(log_w: torch.Tensor) -> torch.Tensor:
        """``log (1/K) sum_k exp(log w_k)`` over the leading dimension: (N,)."""
        return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
