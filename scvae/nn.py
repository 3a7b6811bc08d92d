"""Neural-network blocks: MLPs with batch-covariate injection, the encoder and the decoder.

Injecting the batch one-hot ``s`` into a linear layer, ``W [h; onehot(s)] + b``, equals
``W_h h + b + E[s]`` with one learned bias row ``E[s]`` per batch: we store it as an
``nn.Embedding`` and skip the concatenation (same function, fewer FLOPs, no one-hot tensor).

An encoder's first layer can also take its input by the non-zeros (:class:`SparseInput`):
``h W`` is then a sum of the rows of ``W`` at the non-zero genes weighted by their values, one
``embedding_bag``; the dense product multiplies ``G`` inputs per cell, this only ``nnz``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal

__all__ = [
    "MLP",
    "CountDecoder",
    "DecoderOutput",
    "GaussianDecoder",
    "GaussianEncoder",
    "SparseInput",
]


@dataclass
class SparseInput:
    """The rows of an (N, n_in) input by their non-zeros, CSR-like.

    Attributes
    ----------
    values
        (nnz,) the non-zero values, row by row.
    col
        (nnz,) int64 column of each value.
    offsets
        (N,) int64 position in ``values`` where each row starts.
    """

    values: torch.Tensor
    col: torch.Tensor
    offsets: torch.Tensor


@dataclass
class DecoderOutput:
    """What a decoder emits for each cell and gene, (N, G) each (or ([K,] N, G) reshaped).

    Attributes
    ----------
    location
        ``log rho`` (log expression proportions) for counts, the mean for Gaussian data.
    zi_logits
        Zero-inflation logits, or None.
    log_theta
        Per-cell log inverse dispersion (``dispersion="gene-cell"``), or None.
    """

    location: torch.Tensor
    zi_logits: torch.Tensor | None = None
    log_theta: torch.Tensor | None = None

    def reshape(self, *shape: int) -> DecoderOutput:
        """Every tensor reshaped to ``shape`` (e.g. (K*N, G) -> (K, N, G))."""
        return DecoderOutput(*(None if t is None else t.reshape(*shape) for t in self._tensors()))

    def _tensors(self) -> tuple[torch.Tensor | None, ...]:
        return (self.location, self.zi_logits, self.log_theta)


class CovariateLinear(nn.Module):
    """``Linear([h; onehot(s)])`` written as ``h W + b + E[s]``.

    ``W`` is stored (n_in, n_out), rows indexed by input feature, so that a sparse input
    gathers rows of ``W`` (:class:`SparseInput`); initialised as ``nn.Linear``.

    Parameters
    ----------
    n_in, n_out
        Input and output widths.
    n_batch
        Number of batch categories; 0 or 1 means no covariate.
    """

    def __init__(self, n_in: int, n_out: int, *, n_batch: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)  # nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_out).uniform_(-bound, bound))
        self.batch_embedding = nn.Embedding(n_batch, n_out) if n_batch > 1 else None
        if self.batch_embedding is not None:
            nn.init.zeros_(self.batch_embedding.weight)

    def forward(self, h: torch.Tensor | SparseInput, batch_index: torch.Tensor) -> torch.Tensor:
        """Apply the layer; ``h`` is (N, n_in) or its non-zeros, ``batch_index`` (N,) int64."""
        if isinstance(h, SparseInput):
            out = F.embedding_bag(
                h.col, self.weight, h.offsets, mode="sum", per_sample_weights=h.values
            )  # (N, n_out) sum over non-zeros of value * W[gene]
            out = out + self.bias
        else:
            out = torch.addmm(self.bias, h, self.weight)  # (N, n_out)
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
        # momentum only moves the running statistics used in eval mode, never training: 0.1
        # (scVI uses 0.01) keeps eval-mode validation scores current within ~10 steps instead
        # of ~100; fit() recalibrates them exactly at the end anyway
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(n_hidden, momentum=0.1, eps=1e-3) for _ in range(n_layers)
        )
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, h: torch.Tensor | SparseInput, batch_index: torch.Tensor) -> torch.Tensor:
        """Return the last hidden layer, (N, n_hidden); ``h`` may be sparse (first layer)."""
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

    def forward(self, x: torch.Tensor | SparseInput, batch_index: torch.Tensor) -> Normal:
        """Return ``q(v | x, s)`` for inputs ``x`` (N, n_in), dense or by its non-zeros."""
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

    def forward(self, z: torch.Tensor, batch_index: torch.Tensor) -> DecoderOutput:
        """Return ``log rho`` (N, G), zero-inflation logits and per-cell log theta (or None)."""
        h = self.mlp(z, batch_index)  # (N, n_hidden)
        log_rho = torch.log_softmax(self.rho_logits(h), dim=-1)  # (N, G) log of simplex
        zi_logits = self.zi_logits(h) if self.zi_logits is not None else None  # (N, G)
        log_theta = self.log_theta(h) if self.log_theta is not None else None  # (N, G)
        return DecoderOutput(log_rho, zi_logits, log_theta)


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

    def forward(self, z: torch.Tensor, batch_index: torch.Tensor) -> DecoderOutput:
        """Return the mean ``mu(z, s)``, (N, G), as the output's ``location``."""
        return DecoderOutput(self.mean(self.mlp(z, batch_index)))  # (N, G)
