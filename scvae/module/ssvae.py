"""The semi-supervised VAE (SSVAE): Kingma et al.'s M1+M2 stacked on scVI's count model.

Generative model for cell ``n`` with batch ``s_n`` (as scANVI, Xu et al. 2021, stacks M2 on
scVI; covariates ``c_n`` beside ``s_n`` in the count networks, as in
:class:`~scvae.module.vae.VAEModule`)::

    y_n   ~ Categorical(pi)                           (the cell type, C labels)
    z2_n  ~ Normal(0, I)
    z1_n  ~ Normal(mu(z2_n, y_n), diag sigma^2(z2_n, y_n))     (a small MLP)
    l_n   ~ LogNormal(l_mu[s_n], l_var[s_n])          (empirical per-batch prior, as scVI)
    x_n   ~ p(x | z1_n, l_n, s_n)                     (ZINB, NB or Poisson, as scVI)

``z1`` is the embedding. Inference: ``q(z1 | x, s)`` and ``q(log l | x, s)`` are the encoders
of :class:`~scvae.module.vae.VAEModule`; ``q(y | x) = softmax(f(m(x)))`` a classifier on the
posterior mean ``m(x)`` of ``z1`` (so one ``q(y | x)``, deterministic in ``x``, serves the bound,
the classification term and the predictions); ``q(z2 | z1, y)`` an MLP.

The bound of a cell with observed label ``y`` (one draw of ``z1``, ``l`` and ``z2``)::

    L(x, y) = E[log p(x | z1, l)] - KL(q(l) || p(l))
              + H[q(z1 | x)] + E[log p(z1 | z2, y)] - KL(q(z2 | z1, y) || N(0, I)) + log pi_y

and of an unlabelled cell, the sum over the C labels exact (all labels in one pass)::

    U(x) = sum_y q(y | x) L(x, y) + H[q(y | x)]

The loss is ``-L(x, y) - alpha log q(y | x)`` per labelled cell and ``-U(x)`` per unlabelled
cell, averaged over the minibatch (Kingma et al. 2014, eq. 9). In :class:`LossOutput`,
``reconstruction`` is ``E[log p(x | z1, l)]``, ``kl_l`` the library's KL and ``kl_z`` the rest
(every term of ``z1``, ``z2`` and ``y``), so the shared training loop (KL warm-up, early
stopping on ``elbo``) runs unchanged; the classification term enters ``loss`` only.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from scvae.minibatch import Minibatch
from scvae.module.vae import Inference, LossOutput, VAEModule

__all__ = ["GaussianMLP", "SSVAEModule"]


class GaussianMLP(nn.Module):
    """``Normal(mean(h), diag var(h))`` of an input ``h`` (..., n_in): one hidden ReLU layer.

    No BatchNorm: these networks read every cell once per label (C copies in one pass), and
    batch statistics pooled across labels would couple the C bounds of a cell.

    Parameters
    ----------
    n_in, n_out, n_hidden
        Input, output and hidden widths.
    var_eps
        Floor added to the variance.
    """

    def __init__(self, n_in: int, n_out: int, n_hidden: int, *, var_eps: float = 1e-4) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(n_in, n_hidden), nn.ReLU())
        self.mean = nn.Linear(n_hidden, n_out)
        self.log_var = nn.Linear(n_hidden, n_out)
        self.var_eps = var_eps

    def forward(self, h: torch.Tensor) -> Normal:
        """The Gaussian over (..., n_out)."""
        hidden = self.hidden(h)
        var = torch.exp(self.log_var(hidden).clamp(max=20.0)) + self.var_eps
        return Normal(self.mean(hidden), var.sqrt(), validate_args=False)


class SSVAEModule(VAEModule):
    """:class:`~scvae.module.vae.VAEModule` with labels: the M1+M2 stack (module docstring).

    Parameters
    ----------
    n_labels
        Number of labels ``C`` (at least 2).
    log_pi
        (C,) log prior probabilities of the labels; None: uniform.
    alpha
        Weight of ``log q(y | x)`` per labelled cell, relative to its bound.
    *args, **kwargs
        As :class:`~scvae.module.vae.VAEModule` (``likelihood`` one of the count models).
    """

    def __init__(
        self,
        *args,
        n_labels: int,
        log_pi: torch.Tensor | None = None,
        alpha: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not self.observation.counts:
            raise ValueError("SSVAEModule models counts: likelihood 'zinb', 'nb' or 'poisson'.")
        self.n_labels = int(n_labels)
        if self.n_labels < 2:
            raise ValueError(f"SSVAEModule needs at least 2 labels, got {self.n_labels}.")
        c, d = self.n_labels, self.n_latent
        n_hidden = kwargs.get("n_hidden", 128)
        dropout_rate = kwargs.get("dropout_rate", 0.1)
        self.classifier = nn.Sequential(  # logits of q(y | x) from the mean of q(z1 | x)
            nn.Linear(d, n_hidden),
            nn.ReLU(),
            nn.Dropout(dropout_rate),
            nn.Linear(n_hidden, c),
        )
        self.z2_encoder = GaussianMLP(d + c, d, n_hidden)  # q(z2 | z1, y)
        self.z1_decoder = GaussianMLP(d + c, d, n_hidden)  # p(z1 | z2, y)
        if log_pi is None:
            log_pi = torch.full((c,), -math.log(c))
        self.register_buffer("log_pi", torch.log_softmax(log_pi.float().reshape(c), -1))
        self.alpha = float(alpha)

    # ----------------------------------------------------------------------------- labels
    def classify(self, qz: Normal) -> torch.Tensor:
        """Logits of ``q(y | x)`` (N, C), from the posterior mean of ``z1``."""
        return self.classifier(qz.loc)

    def _with_labels(self, z: torch.Tensor) -> torch.Tensor:
        """``[z; onehot(y)]`` for every label ``y``: (C, ..., L + C) from ``z`` (..., L)."""
        c = self.n_labels
        onehot = torch.eye(c, device=z.device, dtype=z.dtype)  # (C, C)
        lead = z.shape[:-1]
        onehot = onehot.reshape(c, *([1] * len(lead)), c).expand(c, *lead, c)
        return torch.cat([z.unsqueeze(0).expand(c, *z.shape), onehot], dim=-1)

    def label_terms(self, z1: torch.Tensor) -> torch.Tensor:
        """``-log p(z1 | z2_y, y) + KL(q(z2 | z1, y) || N(0, I)) - log pi_y`` per label: (C, ...).

        One reparameterized draw ``z2_y ~ q(z2 | z1, y)`` for every label ``y`` and cell (the
        C draws are made together, so the labelled and unlabelled bounds of a cell use the
        same random numbers). ``z1`` is ([K,] N, L).
        """
        h = self._with_labels(z1)  # (C, [K,] N, L + C)
        qz2 = self.z2_encoder(h)  # over (C, [K,] N, L)
        z2 = qz2.rsample()
        prior_z2 = Normal(
            torch.zeros_like(qz2.loc), torch.ones_like(qz2.scale), validate_args=False
        )
        kl_z2 = kl_divergence(qz2, prior_z2).sum(-1)  # (C, [K,] N)
        pz1 = self.z1_decoder(torch.cat([z2, h[..., self.n_latent :]], dim=-1))
        log_pz1 = pz1.log_prob(z1.unsqueeze(0)).sum(-1)  # (C, [K,] N)
        log_pi = self.log_pi.reshape(-1, *([1] * (z1.dim() - 1)))  # (C, 1[, 1])
        return -log_pz1 + kl_z2 - log_pi

    def bound_terms(
        self, inf: Inference, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``kl_z`` (N,), the logits of ``q(y | x)`` (N, C) and the labelled mask (N,).

        ``kl_z`` is ``-H[q(z1)] + t_y`` for a cell with label ``y`` and ``-H[q(z1)] + sum_y
        q(y|x) t_y - H[q(y|x)]`` for an unlabelled one, ``t_y`` from :meth:`label_terms`.
        """
        logits = self.classify(inf.qz)  # (N, C)
        log_q = torch.log_softmax(logits, dim=-1)  # (N, C)
        terms = self.label_terms(inf.z).T  # (N, C)
        entropy_z1 = inf.qz.entropy().sum(-1)  # (N,)
        unlabelled = (log_q.exp() * (terms + log_q)).sum(-1)  # sum_y q_y t_y - H[q(y)]
        if labels is None:
            labelled = torch.zeros_like(entropy_z1, dtype=torch.bool)
            kl_z = unlabelled - entropy_z1
        else:
            labelled = labels >= 0
            observed = terms.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            kl_z = torch.where(labelled, observed, unlabelled) - entropy_z1
        return kl_z, logits, labelled

    # ----------------------------------------------------------------------------------- loss
    def loss(self, batch: Minibatch, *, kl_weight: float = 1.0) -> LossOutput:
        """``-L(x, y) - alpha log q(y|x)`` (labelled) or ``-U(x)`` (unlabelled), minibatch mean.

        ``batch.labels`` holds the label codes (-1: unlabelled); None: every cell unlabelled.
        ``kl_weight`` weighs ``kl_z`` (every term of ``z1``, ``z2``, ``y``) during warm-up.
        """
        inf = self.inference(batch)
        px = self.generative(inf.z, inf.log_library, batch.batch_index, batch.covariates)
        reconstruction = px.log_likelihood(batch.x, nz=batch.nz)  # (N,)
        kl_z, logits, labelled = self.bound_terms(inf, batch.labels)
        if inf.ql is not None:
            kl_l = kl_divergence(inf.ql, self.library_prior(batch.batch_index)).sum(-1)
        else:
            kl_l = torch.zeros_like(kl_z)
        per_cell = -reconstruction + kl_weight * kl_z + kl_l
        if batch.labels is not None and self.alpha > 0:
            log_q = torch.log_softmax(logits, dim=-1)
            log_q_obs = log_q.gather(-1, batch.labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            per_cell = per_cell - self.alpha * torch.where(labelled, log_q_obs, 0.0)
        return LossOutput(loss=per_cell.mean(), reconstruction=reconstruction, kl_z=kl_z, kl_l=kl_l)

    def log_importance_weights(
        self,
        batch: Minibatch,
        *,
        n_samples: int,
        posterior: tuple[Normal, Normal | None] | None = None,
    ) -> torch.Tensor:
        """``log w_k`` of ``log p(x)``, ``y`` summed out and ``z2`` importance-sampled: (K, N).

        ``log w = log p(x | z1, l) + log p(l) - log q(z1, l | x)
        + log sum_y pi_y p(z1 | z2_y, y) N(z2_y; 0, I) / q(z2_y | z1, y)`` with one
        ``z2_y ~ q(z2 | z1, y)`` per label: the last sum is an unbiased estimate of ``p(z1)``,
        so ``logsumexp_k log w_k - log K`` is a lower bound on ``log p(x)`` (labels ignored).
        """
        inf = self.inference(batch, n_samples=n_samples, posterior=posterior)
        px = self.generative(inf.z, inf.log_library, batch.batch_index, batch.covariates)
        log_w = px.log_likelihood(batch.x, nz=batch.nz) - inf.qz.log_prob(inf.z).sum(-1)
        h = self._with_labels(inf.z)  # (C, K, N, L + C)
        qz2 = self.z2_encoder(h)
        z2 = qz2.sample()
        pz1 = self.z1_decoder(torch.cat([z2, h[..., self.n_latent :]], dim=-1))
        log_joint = (
            pz1.log_prob(inf.z.unsqueeze(0)).sum(-1)
            + Normal(0.0, 1.0, validate_args=False).log_prob(z2).sum(-1)
            - qz2.log_prob(z2).sum(-1)
            + self.log_pi.reshape(-1, 1, 1)
        )  # (C, K, N)
        log_w = log_w + torch.logsumexp(log_joint, dim=0)
        if inf.ql is not None:
            log_pl = self.library_prior(batch.batch_index).log_prob(inf.log_library).sum(-1)
            log_w = log_w + log_pl - inf.ql.log_prob(inf.log_library).sum(-1)
        return log_w

    # ----------------------------------------------------------------------------- sampling
    def sample_prior_z_given_y(self, labels: torch.Tensor) -> torch.Tensor:
        """Draws of ``z1`` for the labels ``labels`` (N,): ``z2 ~ N(0, I)``, ``z1 ~ p(z1 | z2,
        y)``: (N, L)."""
        n, d = labels.shape[0], self.n_latent
        z2 = torch.randn(n, d, device=labels.device)
        onehot = torch.nn.functional.one_hot(labels, self.n_labels).to(z2.dtype)
        return self.z1_decoder(torch.cat([z2, onehot], dim=-1)).sample()

    def sample_prior_z(self, n_cells: int, *, device: torch.device) -> torch.Tensor:
        """``n_cells`` draws of ``z1`` from its prior: ``y ~ Cat(pi)``, ``z2``, ``z1 | z2, y``."""
        labels = torch.multinomial(self.log_pi.exp().to(device), n_cells, replacement=True)
        return self.sample_prior_z_given_y(labels)
