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

``likelihood="gaussian"`` is the Gaussian VAE baseline on log-normalized data ``x``:
``x ~ Normal(mu(z, s), diag sigma^2)`` with gene-wise variances, no library, encoder on ``x``.

The ELBO is ``E_q[log p(x | z, l, s)] - KL(q(z) || p(z)) - KL(q(l) || p(l))``; the importance-
weighted bound (IWAE) uses ``log w = log p(x|z,l) + log p(z) + log p(l) - log q(z) - log q(l)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from scvae.distributions import (
    NonZeros,
    log_gaussian_sum,
    log_nb,
    log_nb_sum,
    log_poisson,
    log_poisson_sum,
    log_zinb,
    log_zinb_sum,
    sample_nb,
    sample_poisson,
    sample_zinb,
)
from scvae.nn import CountDecoder, GaussianDecoder, GaussianEncoder, SparseInput

__all__ = ["DISPERSIONS", "LIBRARIES", "LIKELIHOODS", "LossOutput", "VAEModule"]

LIKELIHOODS = ("zinb", "nb", "poisson", "gaussian")
DISPERSIONS = ("gene", "gene-batch", "gene-cell")
LIBRARIES = ("latent", "observed")


@dataclass
class Inference:
    """Output of :meth:`VAEModule.inference`.

    ``z`` is (N, L) for one sample or (K, N, L) for ``K`` samples; ``log_library`` likewise
    (N, 1) or (K, N, 1). ``ql`` is None when the library is observed.
    """

    qz: Normal
    z: torch.Tensor
    ql: Normal | None
    log_library: torch.Tensor


@dataclass
class Generative:
    """Parameters of ``p(x | z, l, s)``, each (N, G) or (K, N, G).

    Count models: ``log_rho``, ``log_mu = log l + log rho``, ``log_theta`` ((G,), (N, G) or
    per cell; None for Poisson) and ``zi_logits`` (None unless ZINB). Gaussian: ``mean``.
    """

    log_rho: torch.Tensor | None = None
    log_mu: torch.Tensor | None = None
    log_theta: torch.Tensor | None = None
    zi_logits: torch.Tensor | None = None
    mean: torch.Tensor | None = None

    @property
    def mu(self) -> torch.Tensor:
        """Mean of ``p(x | z, l, s)`` (computed on demand: the sparse likelihoods skip it)."""
        return self.mean if self.mean is not None else torch.exp(self.log_mu)

    @property
    def theta(self) -> torch.Tensor | None:
        """Inverse dispersion, or None."""
        return None if self.log_theta is None else torch.exp(self.log_theta)


@dataclass
class LossOutput:
    """Per-cell terms of the ELBO and the scalar training loss.

    ``elbo = reconstruction - kl_z - kl_l``; the loss weighs the KL terms by the warm-up weight.
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
        likelihood: str = "zinb",
        dispersion: str = "gene",
        library: str = "latent",
    ) -> None:
        super().__init__()
        self.n_genes, self.n_batch, self.n_latent = n_genes, n_batch, n_latent
        self.likelihood, self.dispersion, self.library = likelihood, dispersion, library
        # encoders read x by its non-zeros when given them (same function; faster on the CPU
        # for sparse data): a switch of the computation, not of the model
        self.sparse_input = False
        encoder_kwargs = {
            "n_hidden": n_hidden,
            "n_layers": n_layers,
            "n_batch": n_batch,
            "dropout_rate": dropout_rate,
        }
        self.z_encoder = GaussianEncoder(n_genes, n_latent, **encoder_kwargs)
        self.l_encoder = (
            GaussianEncoder(n_genes, 1, **encoder_kwargs)
            if library == "latent" and likelihood != "gaussian"
            else None
        )
        self.log_theta = None
        if likelihood == "gaussian":
            self.decoder = GaussianDecoder(
                n_latent, n_genes, n_hidden=n_hidden, n_layers=n_layers, n_batch=n_batch
            )
            self.log_var = nn.Parameter(torch.zeros(n_genes))  # (G,) gene-wise log sigma^2
            self.register_buffer("library_log_mean", library_log_mean.float().reshape(n_batch))
            self.register_buffer("library_log_var", library_log_var.float().reshape(n_batch))
            return
        self.decoder = CountDecoder(
            n_latent,
            n_genes,
            n_hidden=n_hidden,
            n_layers=n_layers,
            n_batch=n_batch,
            gene_cell_dispersion=likelihood != "poisson" and dispersion == "gene-cell",
            zero_inflation=likelihood == "zinb",
        )
        if likelihood == "poisson" or dispersion == "gene-cell":
            pass
        elif dispersion == "gene":
            self.log_theta = nn.Parameter(torch.randn(n_genes))  # (G,)
        else:
            self.log_theta = nn.Parameter(torch.randn(n_batch, n_genes))  # (S, G)
        self.register_buffer("library_log_mean", library_log_mean.float().reshape(n_batch))
        self.register_buffer("library_log_var", library_log_var.float().reshape(n_batch))

    # ----------------------------------------------------------------------------- inference
    def inference(
        self,
        x: torch.Tensor | None,
        batch_index: torch.Tensor,
        *,
        n_samples: int | None = None,
        nz: NonZeros | None = None,
    ) -> Inference:
        """Encode counts ``x`` (N, G) into ``q(z | x, s)`` and ``q(log l | x, s)`` and sample.

        With ``n_samples=K`` the samples get a leading dimension ``K``. ``nz``, the non-zeros of
        ``x``, lets the encoders read the input sparsely when :attr:`sparse_input` is set
        (``x`` may then be None).
        """
        shape = torch.Size() if n_samples is None else torch.Size([n_samples])
        encoder_input = self._encoder_input(x, nz)  # (N, G) dense or by its non-zeros
        qz = self.z_encoder(encoder_input, batch_index)  # Normal over (N, L)
        z = qz.rsample(shape)  # ([K,] N, L) reparameterised
        if self.likelihood == "gaussian":
            ql = None
            log_library = torch.zeros(*shape, batch_index.shape[0], 1, device=qz.loc.device)
        elif self.l_encoder is not None:
            # q(log l | x, s) = N(log(1 + sum_g x_g) + m(x, s), v(x, s)): the network learns the
            # correction to the observed log total, so the posterior is right from the first
            # step (from zero it needed ~100 epochs to learn a log library of ~8)
            delta = self.l_encoder(encoder_input, batch_index)  # Normal over (N, 1)
            ql = Normal(delta.loc + torch.log1p(self._totals(x, nz)), delta.scale)
            log_library = ql.rsample(shape)  # ([K,] N, 1)
        else:
            ql = None
            log_library = torch.log(self._totals(x, nz)).expand((*shape, batch_index.shape[0], 1))
        return Inference(qz=qz, z=z, ql=ql, log_library=log_library)

    @staticmethod
    def _totals(x: torch.Tensor | None, nz: NonZeros | None) -> torch.Tensor:
        """Total counts of each cell, (N, 1)."""
        if x is not None:
            return x.sum(-1, keepdim=True)
        return nz.row_sum(nz.x).unsqueeze(-1)

    def _encoder_input(
        self, x: torch.Tensor | None, nz: NonZeros | None
    ) -> torch.Tensor | SparseInput:
        """``log1p(x)`` (variance-stabilised counts) or ``x`` itself for the Gaussian model."""
        transform = (lambda t: t) if self.likelihood == "gaussian" else torch.log1p
        if nz is not None and (self.sparse_input or x is None):
            return SparseInput(transform(nz.x), nz.col, nz.offsets)  # log1p(0) = 0: sparse too
        if x is None:
            raise ValueError("inference needs the counts x or their non-zeros nz.")
        return transform(x)  # (N, G)

    # ---------------------------------------------------------------------------- generative
    def generative(
        self, z: torch.Tensor, log_library: torch.Tensor, batch_index: torch.Tensor
    ) -> Generative:
        """Decode ``z`` ([K,] N, L) and ``log l`` ([K,] N, 1) into ``p(x | z, l, s)``."""
        lead = z.shape[:-1]  # ([K,] N)
        z_flat = z.reshape(-1, self.n_latent)  # (K*N, L)
        batch_flat = batch_index.expand(lead).reshape(-1)  # (K*N,)
        if self.likelihood == "gaussian":
            mean = self.decoder(z_flat, batch_flat).reshape(*lead, self.n_genes)  # ([K,] N, G)
            return Generative(mean=mean)
        log_rho, zi_logits, log_theta_cell = self.decoder(z_flat, batch_flat)  # (K*N, G) each
        log_rho = log_rho.reshape(*lead, self.n_genes)  # ([K,] N, G)
        log_mu = log_library + log_rho  # ([K,] N, G) log(l * rho)
        if zi_logits is not None:
            zi_logits = zi_logits.reshape(*lead, self.n_genes)
        if self.likelihood == "poisson":
            log_theta = None
        elif self.dispersion == "gene-cell":
            log_theta = log_theta_cell.reshape(*lead, self.n_genes)  # ([K,] N, G)
        elif self.dispersion == "gene":
            log_theta = self.log_theta  # (G,)
        else:
            log_theta = self.log_theta[batch_index]  # (N, G)
        return Generative(log_rho=log_rho, log_mu=log_mu, log_theta=log_theta, zi_logits=zi_logits)

    def log_likelihood(
        self, x: torch.Tensor | None, gen: Generative, *, nz: NonZeros | None = None
    ) -> torch.Tensor:
        """``log p(x | z, l, s)`` summed over genes: (N,) or (K, N).

        With ``nz`` (the non-zeros of ``x``) the sparse form is used: dense terms without any
        ``lgamma``, plus corrections at the non-zeros only. Same value, far less work.
        """
        if nz is not None:
            return self._log_likelihood_sparse(nz, gen)
        return self._log_likelihood_dense(x, gen)

    def _log_likelihood_sparse(self, nz: NonZeros, gen: Generative) -> torch.Tensor:
        if self.likelihood == "gaussian":
            return log_gaussian_sum(nz, gen.mean, self.log_var)
        if self.likelihood == "poisson":
            return log_poisson_sum(nz, gen.log_mu)
        if self.likelihood == "nb":
            return log_nb_sum(nz, gen.log_mu, gen.log_theta)
        return log_zinb_sum(nz, gen.log_mu, gen.log_theta, gen.zi_logits)

    def _log_likelihood_dense(self, x: torch.Tensor, gen: Generative) -> torch.Tensor:
        """The element-wise formulas summed over genes: the reference for the sparse form."""
        if self.likelihood == "gaussian":
            log_p = Normal(gen.mu, torch.exp(0.5 * self.log_var)).log_prob(x)  # ([K,] N, G)
        elif self.likelihood == "poisson":
            log_p = log_poisson(x, gen.mu)
        elif self.likelihood == "nb":
            log_p = log_nb(x, gen.mu, gen.theta)
        else:
            log_p = log_zinb(x, gen.mu, gen.theta, gen.zi_logits)
        return log_p.sum(-1)

    def sample_counts(self, gen: Generative) -> torch.Tensor:
        """Draw ``x ~ p(x | z, l, s)`` with the shape of ``gen.mu``."""
        if self.likelihood == "gaussian":
            return gen.mu + torch.exp(0.5 * self.log_var) * torch.randn_like(gen.mu)
        if self.likelihood == "poisson":
            return sample_poisson(gen.mu)
        if self.likelihood == "nb":
            return sample_nb(gen.mu, gen.theta)
        return sample_zinb(gen.mu, gen.theta, gen.zi_logits)

    def denoised(
        self, z: torch.Tensor, batch_index: torch.Tensor, *, library_size: float
    ) -> torch.Tensor:
        """Denoised expression: ``library_size * rho(z, s)``, or ``mu(z, s)`` if Gaussian."""
        if self.likelihood == "gaussian":
            return self.decoder(z, batch_index)  # (N, G) log-normalized scale
        log_rho, _, _ = self.decoder(z, batch_index)  # (N, G)
        return torch.exp(log_rho) * library_size

    # --------------------------------------------------------------------------------- priors
    def library_prior(self, batch_index: torch.Tensor) -> Normal:
        """Per-batch empirical prior ``p(log l | s)`` for each cell, over (N, 1)."""
        mean = self.library_log_mean[batch_index].unsqueeze(-1)  # (N, 1)
        var = self.library_log_var[batch_index].unsqueeze(-1)  # (N, 1)
        return Normal(mean, var.sqrt())

    # ----------------------------------------------------------------------------------- loss
    def loss(
        self,
        x: torch.Tensor | None,
        batch_index: torch.Tensor,
        *,
        nz: NonZeros | None = None,
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Negative ELBO (KL terms times the warm-up weight), minibatch mean, and per-cell terms.

        ``nz``, the non-zeros of ``x``, selects the sparse likelihood (same value, faster).
        """
        inf = self.inference(x, batch_index, nz=nz)
        gen = self.generative(inf.z, inf.log_library, batch_index)
        reconstruction = self.log_likelihood(x, gen, nz=nz)  # (N,)
        prior_z = Normal(torch.zeros_like(inf.qz.loc), torch.ones_like(inf.qz.scale))
        kl_z = kl_divergence(inf.qz, prior_z).sum(-1)  # (N,)
        if inf.ql is not None:
            kl_l = kl_divergence(inf.ql, self.library_prior(batch_index)).sum(-1)  # (N,)
        else:
            kl_l = torch.zeros_like(kl_z)
        loss = torch.mean(-reconstruction + kl_weight * (kl_z + kl_l))
        return LossOutput(loss=loss, reconstruction=reconstruction, kl_z=kl_z, kl_l=kl_l)

    def log_importance_weights(
        self,
        x: torch.Tensor | None,
        batch_index: torch.Tensor,
        *,
        n_samples: int,
        nz: NonZeros | None = None,
    ) -> torch.Tensor:
        """``log w_k = log p(x, z_k, l_k) - log q(z_k, l_k | x)`` for ``K`` posterior draws: (K, N).

        ``logsumexp(log w, 0) - log K`` is the IWAE estimate of ``log p(x)``.
        """
        inf = self.inference(x, batch_index, n_samples=n_samples, nz=nz)
        gen = self.generative(inf.z, inf.log_library, batch_index)
        log_px = self.log_likelihood(x, gen, nz=nz)  # (K, N)
        log_pz = Normal(0.0, 1.0).log_prob(inf.z).sum(-1)  # (K, N)
        log_qz = inf.qz.log_prob(inf.z).sum(-1)  # (K, N)
        log_w = log_px + log_pz - log_qz
        if inf.ql is not None:
            log_pl = self.library_prior(batch_index).log_prob(inf.log_library).sum(-1)  # (K, N)
            log_ql = inf.ql.log_prob(inf.log_library).sum(-1)  # (K, N)
            log_w = log_w + log_pl - log_ql
        return log_w

    @staticmethod
    def iwae_estimate(log_w: torch.Tensor) -> torch.Tensor:
        """``log (1/K) sum_k exp(log w_k)`` over the leading dimension: (N,)."""
        return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
