"""Neural-network blocks: MLPs with batch-covariate injection, the encoder and the decoder.

Injecting the batch one-hot ``s`` into a linear layer, ``W [h; onehot(s)] + b``, equals
``W_h h + b + E[s]`` with one learned bias row ``E[s]`` per batch: we store it as an
``nn.Embedding`` and skip the concatenation (same function, fewer FLOPs, no one-hot tensor).
Further covariates enter the same way (scVI's ``n_cats_per_cov`` and ``n_continuous_cov``):
each categorical covariate ``c_j`` adds its own bias row ``E_j[c_j]`` and the (standardized)
continuous covariates ``u`` add ``u V``, so ``W [h; onehot(s); onehot(c_1); ...; u] + b``
is ``h W + b + E[s] + sum_j E_j[c_j] + u V``. They are passed as one :class:`Covariates`.

An encoder's first layer can also take its input by the non-zeros (:class:`SparseInput`):
``h W`` is then a sum of the rows of ``W`` at the non-zero genes weighted by their values, one
``embedding_bag``; the dense product multiplies ``G`` inputs per cell, this only ``nnz``.

Reference mapping (scArches) adds rows for new batches and categories to every embedding
(:meth:`CovariateLinear.grow`): during the mapping each is a :class:`GrownEmbedding`, the
reference rows a fixed buffer and only the new rows a parameter, and :meth:`CovariateLinear.merge`
makes it one ``nn.Embedding`` again, the reference rows bit for bit.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal

__all__ = [
    "MLP",
    "CountDecoder",
    "CovariateSizes",
    "Covariates",
    "DecoderOutput",
    "GaussianDecoder",
    "GaussianEncoder",
    "GrownEmbedding",
    "SparseInput",
]

#: how the rows of new batches or categories start: ``"zero"`` (as a fresh embedding: the
#: reference layer without a batch term) or ``"mean"`` (the mean of the reference rows)
NewRowInit = Literal["zero", "mean"]


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


@dataclass(frozen=True)
class CovariateSizes:
    """The covariates beyond the batch that a layer takes.

    Attributes
    ----------
    n_categories
        Number of categories of each categorical covariate (one embedding each).
    n_continuous
        Number of continuous covariates (one linear map of them all).
    """

    n_categories: tuple[int, ...] = ()
    n_continuous: int = 0

    def __bool__(self) -> bool:
        return bool(self.n_categories) or self.n_continuous > 0

    def describe(self) -> str:
        """``"2 categorical and 1 continuous covariates"``, for messages."""
        return f"{len(self.n_categories)} categorical and {self.n_continuous} continuous covariates"


@dataclass
class Covariates:
    """The covariates beyond the batch of ``N`` cells, as a module reads them.

    Attributes
    ----------
    categorical
        (N, C) int64 codes, column ``j`` of the ``j``-th categorical covariate, or None.
    continuous
        (N, D) float32 standardized values, or None.
    """

    categorical: torch.Tensor | None = None
    continuous: torch.Tensor | None = None

    @property
    def sizes(self) -> tuple[int, int]:
        """``(C, D)``: the numbers of categorical and continuous covariates."""
        c = 0 if self.categorical is None else self.categorical.shape[-1]
        d = 0 if self.continuous is None else self.continuous.shape[-1]
        return c, d

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> Covariates:
        """The same covariates on ``device``."""
        return Covariates(
            *(None if t is None else t.to(device, non_blocking=non_blocking) for t in self._both())
        )

    def expand(self, lead: torch.Size) -> Covariates:
        """Covariates of (N, .) repeated over the leading dimensions of ``lead`` ([K,] N) and
        flattened to (K*N, .), as ``batch_index`` is in :meth:`VAEModule.decode`."""
        return Covariates(
            *(None if t is None else t.expand(*lead, t.shape[-1]).reshape(-1, t.shape[-1])
              for t in self._both())
        )  # fmt: skip

    def _both(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return (self.categorical, self.continuous)


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
    """``Linear([h; onehot(s); onehot(c_1); ...; u])`` written as
    ``h W + b + E[s] + sum_j E_j[c_j] + u V``.

    ``W`` is stored (n_in, n_out), rows indexed by input feature, so that a sparse input
    gathers rows of ``W`` (:class:`SparseInput`); initialised as ``nn.Linear``. The embeddings
    ``E``, ``E_j`` and the map ``V`` (D, n_out) start at zero, so a layer with covariates
    starts as the same layer without them (and creating them draws no random numbers).

    Parameters
    ----------
    n_in, n_out
        Input and output widths.
    n_batch
        Number of batch categories; 0 or 1 means no covariate.
    covariates
        The covariates beyond the batch; None (or empty) for none.
    """

    def __init__(
        self, n_in: int, n_out: int, *, n_batch: int, covariates: CovariateSizes | None = None
    ) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)  # nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_out).uniform_(-bound, bound))
        self.batch_embedding = nn.Embedding(n_batch, n_out) if n_batch > 1 else None
        if self.batch_embedding is not None:
            nn.init.zeros_(self.batch_embedding.weight)
        sizes = covariates or CovariateSizes()
        self.covariate_sizes = sizes
        # created only with covariates: a layer without them has today's parameters exactly
        self.covariate_embeddings = (
            nn.ModuleList(_zero_embedding(n, n_out) for n in sizes.n_categories)
            if sizes.n_categories
            else None
        )
        self.continuous_weight = (
            nn.Parameter(torch.zeros(sizes.n_continuous, n_out)) if sizes.n_continuous else None
        )  # V, (D, n_out)

    def forward(
        self,
        h: torch.Tensor | SparseInput,
        batch_index: torch.Tensor,
        covariates: Covariates | None = None,
    ) -> torch.Tensor:
        """Apply the layer; ``h`` is (N, n_in) or its non-zeros, ``batch_index`` (N,) int64,
        ``covariates`` those of the N cells (None if the layer has none)."""
        if isinstance(h, SparseInput):
            out = F.embedding_bag(
                h.col, self.weight, h.offsets, mode="sum", per_sample_weights=h.values
            )  # (N, n_out) sum over non-zeros of value * W[gene]
            out = out + self.bias
        else:
            out = torch.addmm(self.bias, h, self.weight)  # (N, n_out)
        if self.batch_embedding is not None:
            out = out + self.batch_embedding(batch_index)  # (N, n_out)
        self._check_covariates(covariates)
        if self.covariate_embeddings is not None:
            for j, embedding in enumerate(self.covariate_embeddings):
                out = out + embedding(covariates.categorical[:, j])  # (N, n_out) E_j[c_j]
        if self.continuous_weight is not None:
            out = out + covariates.continuous @ self.continuous_weight  # (N, n_out) u V
        return out

    def grow(
        self,
        n_new_batches: int,
        n_new_categories: tuple[int, ...] = (),
        *,
        init: NewRowInit = "zero",
    ) -> list[nn.Parameter]:
        """Add rows for new batches (and new categories of each categorical covariate).

        Every existing row is kept as a fixed buffer of a :class:`GrownEmbedding`; only the
        new rows are parameters. A layer built for one batch (no embedding: its batch term is
        zero) gets a zero row for it. Call :meth:`merge` after training.

        Parameters
        ----------
        n_new_batches
            Rows to add to the batch embedding (0: none).
        n_new_categories
            Rows to add to the embedding of each categorical covariate (empty: none); ignored
            by a layer without covariate embeddings.
        init
            ``"zero"`` or ``"mean"`` (the mean of the existing rows).

        Returns
        -------
        list of nn.Parameter
            The new rows, the only parameters the mapping trains.
        """
        new: list[nn.Parameter] = []
        n_out = self.bias.shape[0]
        if n_new_batches > 0:
            old = (
                self.batch_embedding.weight.detach()
                if self.batch_embedding is not None
                else self.bias.new_zeros(1, n_out)  # one batch: no embedding, a zero term
            )
            self.batch_embedding = GrownEmbedding(old, n_new_batches, init=init)
            new.append(self.batch_embedding.new)
        if self.covariate_embeddings is not None and any(n_new_categories):
            sizes = list(self.covariate_sizes.n_categories)
            for j, n_new in enumerate(n_new_categories):
                if n_new > 0:
                    grown = GrownEmbedding(
                        self.covariate_embeddings[j].weight.detach(), n_new, init=init
                    )
                    self.covariate_embeddings[j] = grown
                    new.append(grown.new)
                    sizes[j] += n_new
            self.covariate_sizes = CovariateSizes(tuple(sizes), self.covariate_sizes.n_continuous)
        return new

    def merge(self) -> None:
        """Make every :class:`GrownEmbedding` one ``nn.Embedding`` again (after mapping)."""
        if isinstance(self.batch_embedding, GrownEmbedding):
            self.batch_embedding = self.batch_embedding.merged()
        if self.covariate_embeddings is not None:
            for j, embedding in enumerate(self.covariate_embeddings):
                if isinstance(embedding, GrownEmbedding):
                    self.covariate_embeddings[j] = embedding.merged()

    def _check_covariates(self, covariates: Covariates | None) -> None:
        """The covariates given are those the layer was built for."""
        sizes = self.covariate_sizes
        expected = (len(sizes.n_categories), sizes.n_continuous)
        given = (0, 0) if covariates is None else covariates.sizes
        if given != expected:
            raise ValueError(
                f"This layer was built for {sizes.describe()}, got {given[0]} categorical and "
                f"{given[1]} continuous (pass the covariates the module was built with, e.g. "
                "batch.covariates)."
            )


class GrownEmbedding(nn.Module):
    """An embedding whose first rows are fixed and whose last rows are learned.

    The rows of the reference's batches (or categories) are a buffer, so no optimizer can move
    them; the rows of the query's new ones are the only parameter. The lookup gathers from
    both, as one ``nn.Embedding`` of all the rows would.

    Parameters
    ----------
    fixed
        (n_old, n_out) the existing rows (copied).
    n_new
        Number of rows to add.
    init
        ``"zero"`` or ``"mean"`` (each new row the mean of the fixed rows).
    """

    def __init__(self, fixed: torch.Tensor, n_new: int, *, init: NewRowInit = "zero") -> None:
        super().__init__()
        if init not in ("zero", "mean"):
            raise ValueError(f"init must be 'zero' or 'mean', got {init!r}.")
        fixed = fixed.detach().clone()
        self.register_buffer("fixed", fixed)  # (n_old, n_out)
        start = (
            fixed.mean(0, keepdim=True) if init == "mean" else fixed.new_zeros(1, fixed.shape[1])
        )
        self.new = nn.Parameter(start.expand(n_new, -1).clone())  # (n_new, n_out)

    @property
    def weight(self) -> torch.Tensor:
        """(n_old + n_new, n_out) every row, fixed first."""
        return torch.cat([self.fixed, self.new])

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """The rows of ``index`` (N,): (N, n_out)."""
        return F.embedding(index, self.weight)

    def merged(self) -> nn.Embedding:
        """One ``nn.Embedding`` of every row (the fixed ones bit for bit)."""
        weight = self.weight.detach().clone()
        return nn.Embedding(weight.shape[0], weight.shape[1], _weight=weight)


def _zero_embedding(n_categories: int, n_out: int) -> nn.Embedding:
    """An ``nn.Embedding`` initialised at zero, without drawing random numbers."""
    return nn.Embedding(n_categories, n_out, _weight=torch.zeros(n_categories, n_out))


class MLP(nn.Module):
    """Stack of ``CovariateLinear -> BatchNorm -> ReLU -> Dropout`` layers.

    The batch covariate (and any further covariates) is injected into every layer, as scVI's
    decoder does.

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
    covariates
        The covariates beyond the batch, injected into every layer; None for none.
    """

    def __init__(
        self,
        n_in: int,
        n_hidden: int,
        *,
        n_layers: int,
        n_batch: int,
        dropout_rate: float,
        covariates: CovariateSizes | None = None,
    ) -> None:
        super().__init__()
        widths = [n_in] + [n_hidden] * n_layers
        self.layers = nn.ModuleList(
            CovariateLinear(a, b, n_batch=n_batch, covariates=covariates)
            for a, b in itertools.pairwise(widths)
        )
        # momentum only moves the running statistics used in eval mode, never training: 0.1
        # (scVI uses 0.01) keeps eval-mode validation scores current within ~10 steps instead
        # of ~100; fit() recalibrates them exactly at the end anyway
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(n_hidden, momentum=0.1, eps=1e-3) for _ in range(n_layers)
        )
        self.dropout = nn.Dropout(dropout_rate)

    def forward(
        self,
        h: torch.Tensor | SparseInput,
        batch_index: torch.Tensor,
        covariates: Covariates | None = None,
    ) -> torch.Tensor:
        """Return the last hidden layer, (N, n_hidden); ``h`` may be sparse (first layer)."""
        for layer, norm in zip(self.layers, self.norms, strict=True):
            h = self.dropout(torch.relu(norm(layer(h, batch_index, covariates))))  # (N, n_hidden)
        return h


class GaussianEncoder(nn.Module):
    """Amortized ``q(v | x, s) = Normal(mean(x, s), diag var(x, s))``.

    Parameters
    ----------
    n_in
        Input width (genes).
    n_out
        Dimension of ``v``.
    n_hidden, n_layers, n_batch, dropout_rate, covariates
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
        covariates: CovariateSizes | None = None,
    ) -> None:
        super().__init__()
        self.mlp = MLP(
            n_in,
            n_hidden,
            n_layers=n_layers,
            n_batch=n_batch,
            dropout_rate=dropout_rate,
            covariates=covariates,
        )
        self.mean = nn.Linear(n_hidden, n_out)
        self.log_var = nn.Linear(n_hidden, n_out)
        self.var_eps = var_eps

    def forward(
        self,
        x: torch.Tensor | SparseInput,
        batch_index: torch.Tensor,
        covariates: Covariates | None = None,
    ) -> Normal:
        """Return ``q(v | x, s)`` for inputs ``x`` (N, n_in), dense or by its non-zeros."""
        h = self.mlp(x, batch_index, covariates)  # (N, n_hidden)
        mean = self.mean(h)  # (N, n_out)
        var = torch.exp(self.log_var(h).clamp(max=20.0)) + self.var_eps  # (N, n_out)
        return Normal(mean, var.sqrt(), validate_args=False)


class CountDecoder(nn.Module):
    """``f_w(z, s)`` and ``f_h(z, s)`` of scVI: expression proportions and zero-inflation logits.

    Parameters
    ----------
    n_latent
        Dimension of ``z``.
    n_genes
        Number of genes ``G``.
    n_hidden, n_layers, n_batch, covariates
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
        covariates: CovariateSizes | None = None,
    ) -> None:
        super().__init__()
        self.mlp = MLP(
            n_latent,
            n_hidden,
            n_layers=n_layers,
            n_batch=n_batch,
            dropout_rate=0.0,
            covariates=covariates,
        )
        self.rho_logits = nn.Linear(n_hidden, n_genes)
        self.zi_logits = nn.Linear(n_hidden, n_genes) if zero_inflation else None
        self.log_theta = nn.Linear(n_hidden, n_genes) if gene_cell_dispersion else None

    def forward(
        self, z: torch.Tensor, batch_index: torch.Tensor, covariates: Covariates | None = None
    ) -> DecoderOutput:
        """Return ``log rho`` (N, G), zero-inflation logits and per-cell log theta (or None)."""
        h = self.mlp(z, batch_index, covariates)  # (N, n_hidden)
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
    n_hidden, n_layers, n_batch, covariates
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
        covariates: CovariateSizes | None = None,
    ) -> None:
        super().__init__()
        self.mlp = MLP(
            n_latent,
            n_hidden,
            n_layers=n_layers,
            n_batch=n_batch,
            dropout_rate=0.0,
            covariates=covariates,
        )
        self.mean = nn.Linear(n_hidden, n_genes)

    def forward(
        self, z: torch.Tensor, batch_index: torch.Tensor, covariates: Covariates | None = None
    ) -> DecoderOutput:
        """Return the mean ``mu(z, s)``, (N, G), as the output's ``location``."""
        return DecoderOutput(self.mean(self.mlp(z, batch_index, covariates)))  # (N, G)
