"""Neural-network blocks: MLPs with batch-covariate injection, the encoder and the decoder.

Injecting the batch one-hot ``s`` into a linear layer, ``W [h; onehot(s)] + b``, equals
``W_h h + b + E[s]`` with one learned bias row ``E[s]`` per batch: we store it as an
``nn.Embedding`` and skip the concatenation (same function, fewer FLOPs, no one-hot tensor).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.distributions import Normal

__all__ = ["MLP", "CountDecoder", "GaussianDecoder", "GaussianEncoder"]


class CovariateLinear(nn.Module):
    """``Linear([h; onehot(s)])`` written as ``Linear(h) + E[s]``.

    Parameters
    ----------
    n_in, n_out
        Input and output widths.
    n_batch
        Number of batch categories; 0 or 1 means no covariate.
    """

    def __init__(self, n_in: int, n_out: int, *, n_batch: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.batch_embedding = nn.Embedding(n_batch, n_out) if n_batch > 1 else None
        if self.batch_embedding is not None:
            nn.init.zeros_(self.batch_embedding.weight)

    def forward(self, h: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """Apply the layer; ``h`` is (N, n_in), ``batch_index`` is (N,) int64."""
        out = self.linear(h)  # (N, n_out)
        if self.batch_embedding is not None:
            out = out + self.batch_embedding(batch_index)  # (N, n_out)
        return out


class MLP(nn.Module):
    """Stack of ``CovariateLinear -> BatchNorm -> ReLU -> Dropout`` layers.

    The batch covariate is injected into every layer, as scVI's decoder does.

    Parameters
    ----------
    n_in
        Input width.
    n_hidden
        Width of every hidden layer (also the output width).
    n_layers
        Number of layers (at least 1).
    n_batch
        Number of batch categories.
    dropout_rate
        Dropout probability after each layer.
    """

    def __init__(
        self,
        n_in: int,
        n_hidden: int,
        *,
        n_layers: int,
        n_batch: int,
        dropout_rate: float,
    ) -> None:
        super().__init__()
        widths = [n_in] + [n_hidden] * n_layers
        self.layers = nn.ModuleList(
            CovariateLinear(a, b, n_batch=n_batch) for a, b in itertools.pairwise(widths)
        )
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(n_hidden, momentum=0.01, eps=1e-3) for _ in range(n_layers)
        )
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, h: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """Return the last hidden layer, (N, n_hidden)."""
        for layer, norm in zip(self.layers, self.norms, strict=True):
            h = self.dropout(torch.relu(norm(layer(h, batch_index))))  # (N, n_hidden)
        return h


class GaussianEncoder(nn.Module):
    """Amortized ``q(v | x, s) = Normal(mean(x, s), diag var(x, s))``.

    Parameters
    ----------
    n_in
        Input width (genes).
    n_out
        Dimension of ``v``.
    n_hidden, n_layers, n_batch, dropout_rate
        As in :class:`MLP`.
    var_eps
        Floor added to the variance, keeps the posterior proper.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        *,
        n_hidden: int,
        n_layers: int,
        n_batch: int,
        dropout_rate: float,
        var_eps: float = 1e-4,
    ) -> None:
        super().__init__()
        self.mlp = MLP(
            n_in, n_hidden, n_layers=n_layers, n_batch=n_batch, dropout_rate=dropout_rate
        )
        self.mean = nn.Linear(n_hidden, n_out)
        self.log_var = nn.Linear(n_hidden, n_out)
        self.var_eps = var_eps

    def forward(self, x: torch.Tensor, batch_index: torch.Tensor) -> Normal:
        """Return ``q(v | x, s)`` for inputs ``x`` (N, n_in)."""
        h = self.mlp(x, batch_index)  # (N, n_hidden)
        mean = self.mean(h)  # (N, n_out)
        var = torch.exp(self.log_var(h).clamp(max=20.0)) + self.var_eps  # (N, n_out)
        return Normal(mean, var.sqrt())


class CountDecoder(nn.Module):
    """``f_w(z, s)`` and ``f_h(z, s)`` of scVI: expression proportions and zero-inflation logits.

    Parameters
    ----------
    n_latent
        Dimension of ``z``.
    n_genes
        Number of genes ``G``.
    n_hidden, n_layers, n_batch
        As in :class:`MLP`. The decoder has no dropout: it is the generative model
        ``p(x | z, s)``, and dropout there would make the likelihood itself noisy (as in scVI).
    gene_cell_dispersion
        Also output a per-cell, per-gene log inverse dispersion (``dispersion="gene-cell"``).
    zero_inflation
        Also output zero-inflation logits.
    """

    def __init__(
        self,
        n_latent: int,
        n_genes: int,
        *,
        n_hidden: int,
        n_layers: int,
        n_batch: int,
        gene_cell_dispersion: bool,
        zero_inflation: bool,
    ) -> None:
        super().__init__()
        self.mlp = MLP(n_latent, n_hidden, n_layers=n_layers, n_batch=n_batch, dropout_rate=0.0)
        self.rho_logits = nn.Linear(n_hidden, n_genes)
        self.zi_logits = nn.Linear(n_hidden, n_genes) if zero_inflation else None
        self.log_theta = nn.Linear(n_hidden, n_genes) if gene_cell_dispersion else None

    def forward(
        self, z: torch.Tensor, batch_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Return ``log rho`` (N, G), zero-inflation logits and per-cell log theta (or None)."""
        h = self.mlp(z, batch_index)  # (N, n_hidden)
        log_rho = torch.log_softmax(self.rho_logits(h), dim=-1)  # (N, G) log of simplex
        zi_logits = self.zi_logits(h) if self.zi_logits is not None else None  # (N, G)
        log_theta = self.log_theta(h) if self.log_theta is not None else None  # (N, G)
        return log_rho, zi_logits, log_theta


class GaussianDecoder(nn.Module):
    """``mu(z, s)`` of the Gaussian VAE: an MLP and a linear head to the (log-normalized) genes.

    Parameters
    ----------
    n_latent
        Dimension of ``z``.
    n_genes
        Number of genes ``G``.
    n_hidden, n_layers, n_batch
        As in :class:`MLP`. The decoder has no dropout: it is the generative model
        ``p(x | z, s)``, and dropout there would make the likelihood itself noisy (as in scVI).
    """

    def __init__(
        self,
        n_latent: int,
        n_genes: int,
        *,
        n_hidden: int,
        n_layers: int,
        n_batch: int,
    ) -> None:
        super().__init__()
        self.mlp = MLP(n_latent, n_hidden, n_layers=n_layers, n_batch=n_batch, dropout_rate=0.0)
        self.mean = nn.Linear(n_hidden, n_genes)

    def forward(self, z: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """Return the mean ``mu(z, s)``, (N, G)."""
        return self.mean(self.mlp(z, batch_index))  # (N, G)
