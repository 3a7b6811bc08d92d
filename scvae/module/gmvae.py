"""The mixture-prior VAE (GMVAE): scVI's count model with a Gaussian mixture as the prior of z.

Generative model for cell ``n`` with batch ``s_n`` (and covariates ``c_n`` beside ``s_n`` in
the networks, as in :class:`~scvae.module.vae.VAEModule`)::

    y_n   ~ Categorical(pi)                          (the cell's cluster, K components)
    z_n   ~ Normal(mu_{y_n}, diag sigma_{y_n}^2)     (learned per component)
    l_n   ~ LogNormal(l_mu[s_n], l_var[s_n])         (empirical per-batch prior, as scVI)
    x_n   ~ p(x | z_n, l_n, s_n)                     (ZINB, NB or Poisson, as scVI)

Inference: ``q(z | x, s)`` and ``q(log l | x, s)`` are the encoders of
:class:`~scvae.module.vae.VAEModule`; ``q(y | x)`` is not a network but the closed-form optimum
given ``q(z | x, s)``::

    q(y | x) = softmax_y( log pi_y - KL(q(z | x, s) || N(mu_y, sigma_y^2)) )

With it the prior part of the ELBO is exact over y (no sample of y)::

    E_q[log p(z, y) - log q(z, y)] = sum_y q(y|x) [log pi_y - KL_y - log q(y|x)] - ...
                                   = logsumexp_y( log pi_y - KL_y )

so ``kl_z = -logsumexp_y(log pi_y - KL_y) = sum_y q(y|x) KL_y + KL(q(y|x) || pi)``, each
``KL_y`` the closed-form KL between two diagonal Gaussians. ``log_importance_weights`` uses the
exact mixture density ``log p(z) = logsumexp_y(log pi_y + log N(z; mu_y, sigma_y^2))``.

Until :meth:`GMVAEModule.set_mixture` is called (or while :attr:`mixture_prior` is False) the
prior is ``N(0, I)``: that is the pretraining phase, after which the mixture is initialized
from a GMM on the pretrained latent (VaDE, Jiang et al. 2017).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from scvae.minibatch import Minibatch
from scvae.module.vae import LossOutput, VAEModule

__all__ = ["GMVAEModule"]

#: floor of the component variances sigma_y^2 (a component cannot shrink onto one point)
VAR_FLOOR = 1e-3


class GMVAEModule(VAEModule):
    """:class:`~scvae.module.vae.VAEModule` with a K-component Gaussian-mixture prior on z.

    Parameters
    ----------
    n_components
        Number of mixture components ``K``.
    *args, **kwargs
        As :class:`~scvae.module.vae.VAEModule` (``likelihood`` one of the count models).
    """

    def __init__(self, *args, n_components: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not self.observation.counts:
            raise ValueError("GMVAEModule models counts: likelihood 'zinb', 'nb' or 'poisson'.")
        self.n_components = int(n_components)
        k, d = self.n_components, self.n_latent
        self.prior_logits = nn.Parameter(torch.zeros(k))
        self.prior_means = nn.Parameter(torch.randn(k, d))
        self.prior_log_var = nn.Parameter(torch.zeros(k, d))
        # a buffer, so a saved module restores its phase
        self.register_buffer("mixture_active", torch.tensor(False))

    # ---------------------------------------------------------------------------------- prior
    @property
    def mixture_prior(self) -> bool:
        """Whether the prior is the mixture (False during pretraining: ``N(0, I)``)."""
        return bool(self.mixture_active)

    @torch.no_grad()
    def set_mixture(
        self, weights: torch.Tensor, means: torch.Tensor, variances: torch.Tensor
    ) -> None:
        """Set ``pi`` (K,), ``mu`` (K, L), ``sigma^2`` (K, L) and switch the mixture prior on."""
        dev = self.prior_means.device
        self.prior_logits.copy_(torch.log(weights.clamp_min(1e-8)).float().to(dev))
        self.prior_means.copy_(means.float().to(dev))
        log_var = torch.log((variances.float() - VAR_FLOOR).clamp_min(1e-6))
        self.prior_log_var.copy_(log_var.to(dev))
        self.mixture_active.fill_(True)

    def mixture(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``log pi`` (K,), ``mu`` (K, L) and ``sigma^2`` (K, L) of the prior."""
        log_pi = torch.log_softmax(self.prior_logits, dim=-1)
        var = torch.exp(self.prior_log_var.clamp(max=20.0)) + VAR_FLOOR
        return log_pi, self.prior_means, var

    def component_kl(self, qz: Normal) -> torch.Tensor:
        """``KL(q(z | x) || N(mu_y, sigma_y^2))`` for every cell and component: (N, K)."""
        _, mu, var = self.mixture()
        m, s2 = qz.loc.unsqueeze(-2), qz.scale.square().unsqueeze(-2)  # (N, 1, L)
        kl = 0.5 * (torch.log(var) - torch.log(s2) + (s2 + (m - mu).square()) / var - 1.0)
        return kl.sum(-1)  # (N, K)

    def responsibilities(self, qz: Normal) -> torch.Tensor:
        """``log q(y | x) = log_softmax_y(log pi_y - KL_y)``: (N, K)."""
        log_pi, _, _ = self.mixture()
        return torch.log_softmax(log_pi - self.component_kl(qz), dim=-1)

    def mixture_kl(self, qz: Normal) -> torch.Tensor:
        """``sum_y q(y|x) KL_y + KL(q(y|x) || pi) = -logsumexp_y(log pi_y - KL_y)``: (N,)."""
        log_pi, _, _ = self.mixture()
        return -torch.logsumexp(log_pi - self.component_kl(qz), dim=-1)

    def log_prior_z(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)``, the mixture density (or ``N(0, I)`` before it is set): ([K,] N)."""
        if not self.mixture_prior:
            return Normal(0.0, 1.0, validate_args=False).log_prob(z).sum(-1)
        log_pi, mu, var = self.mixture()
        zz = z.unsqueeze(-2)  # ([S,] N, 1, L)
        log_n = -0.5 * (math.log(2 * math.pi) + torch.log(var) + (zz - mu).square() / var)
        return torch.logsumexp(log_pi + log_n.sum(-1), dim=-1)

    def sample_prior_z(self, n_cells: int, *, device: torch.device) -> torch.Tensor:
        """``n_cells`` draws of ``z``: ``y ~ Cat(pi)``, then ``z ~ N(mu_y, sigma_y^2)``: (N, L)."""
        if not self.mixture_prior:
            return super().sample_prior_z(n_cells, device=device)
        log_pi, mu, var = (t.detach().to(device) for t in self.mixture())
        y = torch.multinomial(log_pi.exp(), n_cells, replacement=True)  # (N,)
        return mu[y] + var[y].sqrt() * torch.randn(n_cells, self.n_latent, device=device)

    # ----------------------------------------------------------------------------------- loss
    def loss(self, batch: Minibatch, *, kl_weight: float = 1.0) -> LossOutput:
        """Negative ELBO with the KL to the mixture exact over y; ``kl_z`` is its mixture part."""
        inf = self.inference(batch)
        px = self.generative(inf.z, inf.log_library, batch.batch_index, batch.covariates)
        reconstruction = px.log_likelihood(batch.x, nz=batch.nz)  # (N,)
        if self.mixture_prior:
            kl_z = self.mixture_kl(inf.qz)  # (N,)
        else:
            prior_z = Normal(
                torch.zeros_like(inf.qz.loc), torch.ones_like(inf.qz.scale), validate_args=False
            )
            kl_z = kl_divergence(inf.qz, prior_z).sum(-1)
        if inf.ql is not None:
            kl_l = kl_divergence(inf.ql, self.library_prior(batch.batch_index)).sum(-1)
        else:
            kl_l = torch.zeros_like(kl_z)
        loss = torch.mean(-reconstruction + kl_weight * kl_z + kl_l)
        return LossOutput(loss=loss, reconstruction=reconstruction, kl_z=kl_z, kl_l=kl_l)

    def log_importance_weights(
        self,
        batch: Minibatch,
        *,
        n_samples: int,
        posterior: tuple[Normal, Normal | None] | None = None,
    ) -> torch.Tensor:
        """``log w_k = log p(x | z_k, l_k) + log p(z_k) + log p(l_k) - log q(z_k, l_k | x)``.

        ``log p(z)`` is the mixture density, y summed out exactly: (K, N).
        """
        inf = self.inference(batch, n_samples=n_samples, posterior=posterior)
        px = self.generative(inf.z, inf.log_library, batch.batch_index, batch.covariates)
        log_w = px.log_likelihood(batch.x, nz=batch.nz)  # (K, N)
        log_w = log_w + self.log_prior_z(inf.z) - inf.qz.log_prob(inf.z).sum(-1)
        if inf.ql is not None:
            log_pl = self.library_prior(batch.batch_index).log_prob(inf.log_library).sum(-1)
            log_w = log_w + log_pl - inf.ql.log_prob(inf.log_library).sum(-1)
        return log_w
