"""Differential expression from a trained count VAE, batch-corrected, with FDR control.

For two groups of cells ``A`` and ``B`` the question is whether the *population* mean
expression proportion of a gene differs. Each group's is estimated from its pooled,
batch-corrected counts::

    m_Ag = (sum_{n in A} c_ng x_ng + 1/2) / (sum_{n in A} sum_g' c_ng' x_ng' + G/2)
    c_ng = mean_{s in S} mu_g(z_n, s) / mu_g(z_n, s_n),      z_n ~ q(z | x_n, s_n)

where the model supplies the correction ``c`` of every count to the average batch of ``S``
(every batch by default), and ``LFC_g = log2 m_Ag - log2 m_Bg``. Its uncertainty has two
parts:

* the cells: a group is a sample of its population. Rubin's Bayesian bootstrap (weights
  ``w ~ Dirichlet(1, ..., 1)`` over the cells) gives the ratio of weighted sums a variance
  that is, to first order, ``sum_n (x_ng / S_g - l_n / L)^2`` (``S_g``, ``L`` the pooled
  gene and library counts): computed in closed form, with no resampling; it is at least the
  Poisson variance of the pooled counts, which the bootstrap cannot see for a gene observed in
  a handful of cells;
* the model: ``n_samples`` posterior draws of every cell's ``z`` (hence of ``c``), decoded under
  each batch; the spread of the estimate over them adds to its variance.

The estimate and its standard error go through an empirical-Bayes prior fitted to all genes of
the comparison (:mod:`scvae.models._shrinkage`), whose posterior gives

* ``mode="change"``: ``proba_de = P(|LFC_g| > delta)``;
* ``mode="vanilla"``: ``proba_m1 = P(LFC_g > 0)`` (half the prior's point mass at 0 counted
  on each side), ``bayes_factor = log(proba_m1 / proba_m2)`` and ``proba_de = max(P(LFC_g >
  0), P(LFC_g < 0))``, one minus the local false sign rate;

and the genes called at a target posterior expected false discovery rate (Boyeau et al.,
PNAS 2023): the largest set of top-ranked genes whose mean ``1 - proba_de`` is at most
``fdr_target``. Why the counts and not the decoded proportions: ``docs/math.md``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from scvae import checks
from scvae.data import CellData, _obs_labels, check_in_memory
from scvae.minibatch import CSRMinibatches, Minibatch, sparse_input_pays
from scvae.models._shrinkage import shrink
from scvae.models._vae_queries import _seeded

__all__ = ["MIN_CELLS_PER_GROUP", "DifferentialExpression", "GroupStats", "estimate_delta"]

#: the fewest cells a compared group may have (the mean of fewer is left to chance)
MIN_CELLS_PER_GROUP = 5
#: elements of one (J, B, G) block of decoded proportions (bounds memory; as scoring)
_BLOCK_BUDGET = 2**23
#: counts added to every gene of a pooled group (a gene never seen gets a finite, shrunk LFC)
_PSEUDOCOUNT = 0.5
#: floor of ``p`` and ``1 - p`` in the log Bayes factor (as scvi-tools)
_EPS = 1e-8
REST = "rest"


@dataclass
class GroupStats:
    """Sums over the cells of each atom group: what every comparison is computed from.

    An *atom* is one label of ``groupby``; a compared group is a union of atoms (the rest is
    all atoms but one), so one pass over the cells serves every comparison.

    Attributes
    ----------
    counts
        (J, A, G) ``sum_n c_jng x_ng``: the pooled corrected counts under posterior draw ``j``.
    totals
        (J, A) ``sum_n sum_g c_jng x_ng``: the pooled corrected library sizes.
    squares
        (A, G) ``sum_n xbar_ng^2``, with ``xbar`` the counts corrected by the mean factor.
    cross
        (A, G) ``sum_n xbar_ng lbar_n``, ``lbar_n = sum_g xbar_ng``.
    library_squares
        (A,) ``sum_n lbar_n^2``.
    scale_sums
        (A, G) ``sum_n E_q[rho_n]``: the model's denoised proportions (batch-averaged).
    rank_sums
        (A, G) sum over the cells of each atom of the rank of ``log1p(1e4 xbar_ng / lbar_n)``
        among all compared cells, ties at their mean rank; filled by :meth:`rank_cells`.
    n_cells
        (A,) cells of each atom.
    """

    counts: torch.Tensor
    totals: torch.Tensor
    squares: torch.Tensor
    cross: torch.Tensor
    library_squares: torch.Tensor
    scale_sums: torch.Tensor
    rank_sums: np.ndarray
    n_cells: torch.Tensor
    _entries: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)

    @classmethod
    def zeros(cls, n_draws: int, n_atoms: int, n_genes: int) -> GroupStats:
        """Empty accumulators (float64, on the CPU)."""
        f64 = torch.float64
        return cls(
            counts=torch.zeros(n_draws, n_atoms, n_genes, dtype=f64),
            totals=torch.zeros(n_draws, n_atoms, dtype=f64),
            squares=torch.zeros(n_atoms, n_genes, dtype=f64),
            cross=torch.zeros(n_atoms, n_genes, dtype=f64),
            library_squares=torch.zeros(n_atoms, dtype=f64),
            scale_sums=torch.zeros(n_atoms, n_genes, dtype=f64),
            rank_sums=np.zeros((n_atoms, n_genes)),
            n_cells=torch.zeros(n_atoms, dtype=f64),
        )

    def add_model_means(self, rho: torch.Tensor, atom: torch.Tensor) -> None:
        """Accumulate draws ``rho`` (J, B, G) of the denoised proportions of cells in ``atom``."""
        self.scale_sums.index_add_(0, atom, rho.mean(0).double())
        self.n_cells.index_add_(0, atom, torch.ones(len(atom), dtype=torch.float64))

    def add_counts(
        self, corrected: torch.Tensor, row: torch.Tensor, col: torch.Tensor, atom: torch.Tensor
    ) -> None:
        """Accumulate one chunk of ``B`` cells.

        ``corrected`` (J, nnz) holds ``J`` posterior draws (or one, uncorrected) of the
        corrected non-zero counts at rows ``row`` (cell in the chunk) and columns ``col``.
        """
        n_draws = corrected.shape[0]
        n_atoms, n_genes = self.squares.shape
        target = atom[row] * n_genes + col  # (nnz,) flat (atom, gene) of each non-zero
        flat = torch.zeros(n_draws, n_atoms * n_genes, dtype=torch.float64)
        self.counts += flat.index_add_(1, target, corrected).view(n_draws, n_atoms, n_genes)
        library = torch.zeros(n_draws, len(atom), dtype=torch.float64).index_add_(1, row, corrected)
        self.totals.index_add_(1, atom, library)
        mean, mean_library = corrected.mean(0), library.mean(0)  # (nnz,), (B,)
        self.squares.view(-1).index_add_(0, target, mean.square())
        self.cross.view(-1).index_add_(0, target, mean * mean_library[row])
        self.library_squares.index_add_(0, atom, mean_library.square())
        self._keep_for_ranks(mean, mean_library, row, col, atom)

    def log2_ratio(self, atoms1: Sequence[int], atoms2: Sequence[int]) -> np.ndarray:
        """``log2 m_1g - log2 m_2g`` under each posterior draw: (J, G)."""
        return (self._log2_proportions(atoms1) - self._log2_proportions(atoms2)).numpy()

    def _log2_proportions(self, atoms: Sequence[int]) -> torch.Tensor:
        """``log2`` of the pooled proportions of the union of ``atoms`` per draw: (J, G).

        Half a count per gene is added (and ``G / 2`` to the total), so that a gene without a
        count in a group has a finite, shrunk fold change.
        """
        index = torch.as_tensor(list(atoms), dtype=torch.int64)
        counts = self.counts.index_select(1, index).sum(1) + _PSEUDOCOUNT  # (J, G)
        totals = self.totals.index_select(1, index).sum(1, keepdim=True)  # (J, 1)
        return torch.log2(counts / (totals + _PSEUDOCOUNT * counts.shape[-1]))

    def pooled(self, atoms: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Pooled corrected counts (G,) and their proportions (G,), mean over the draws."""
        index = torch.as_tensor(list(atoms), dtype=torch.int64)
        counts = self.counts.index_select(1, index).sum(1).mean(0)  # (G,)
        return counts.numpy(), torch.exp2(self._log2_proportions(atoms)).mean(0).numpy()

    def bootstrap_var(self, atoms: Sequence[int]) -> np.ndarray:
        """Variance of ``log2 m_g`` over Bayesian-bootstrap weights of the group's cells, to
        first order: ``sum_n (x_ng / S_g - l_n / L)^2 / ln(2)^2`` (with the pseudocounts in
        ``S`` and ``L``), expanded into the accumulated sums: (G,)."""
        index = torch.as_tensor(list(atoms), dtype=torch.int64)
        s = self.counts.index_select(1, index).sum(1).mean(0) + _PSEUDOCOUNT  # (G,)
        n_genes = s.shape[0]
        total = self.totals.index_select(1, index).sum(1).mean(0) + _PSEUDOCOUNT * n_genes
        squares = self.squares.index_select(0, index).sum(0)
        cross = self.cross.index_select(0, index).sum(0)
        library_squares = self.library_squares[index].sum()
        var = squares / s**2 - 2 * cross / (s * total) + library_squares / total**2
        return (var.clamp_min(0.0) / np.log(2.0) ** 2).numpy()

    def scale(self, atoms: Sequence[int]) -> torch.Tensor:
        """The model's mean denoised proportions over the cells of ``atoms``: (G,)."""
        index = torch.as_tensor(list(atoms), dtype=torch.int64)
        return self.scale_sums.index_select(0, index).sum(0) / self.n_cells[index].sum()

    def _keep_for_ranks(
        self,
        corrected: torch.Tensor,
        library: torch.Tensor,
        row: torch.Tensor,
        col: torch.Tensor,
        atom: torch.Tensor,
    ) -> None:
        """Keep the log-normalized corrected non-zeros of one chunk (for :meth:`rank_cells`)."""
        value = torch.log1p(1e4 * corrected / library[row])  # (nnz,) > 0
        self._entries.append(
            (
                atom[row].numpy().astype(np.int32),
                col.numpy().astype(np.int32),
                value.float().numpy(),
            )
        )

    def rank_cells(self) -> None:
        """Rank every gene's corrected expression among the compared cells (zeros tied at the
        bottom) and sum the ranks by atom into :attr:`rank_sums`."""
        n_atoms, n_genes = self.rank_sums.shape
        n = float(self.n_cells.sum())
        atom, col, value = (np.concatenate(parts) for parts in zip(*self._entries, strict=True))
        self._entries = []
        order = np.lexsort((value, col))  # by gene, then value
        col, atom, value = col[order], atom[order], value[order]
        starts = np.searchsorted(col, np.arange(n_genes + 1))
        # rank among the gene's non-zeros (1-based, ties at their mean), above its zeros
        new_run = np.ones(len(value), dtype=bool)
        new_run[1:] = (col[1:] != col[:-1]) | (value[1:] != value[:-1])
        run = np.cumsum(new_run) - 1  # tie run of each entry
        first = np.flatnonzero(new_run)  # (runs,) position where each run starts
        last = np.append(first[1:], len(value)) - 1
        position = np.arange(len(value)) - starts[col]  # 0-based within the gene
        mean_position = (position[first] + position[last]) / 2  # (runs,)
        n_zero = n - np.diff(starts)  # (G,)
        ranks = mean_position[run] + 1 + n_zero[col]
        zero_rank = (n - np.diff(starts) + 1) / 2  # (G,) mean rank of the tied zeros
        flat = atom.astype(np.int64) * n_genes + col  # (nnz,) flat (atom, gene)
        size = n_atoms * n_genes
        nonzero = np.bincount(flat, minlength=size).reshape(n_atoms, n_genes)
        self.rank_sums += np.bincount(flat, weights=ranks, minlength=size).reshape(n_atoms, -1)
        self.rank_sums += (self.n_cells.numpy()[:, None] - nonzero) * zero_rank[None, :]

    def superiority(self, atoms1: Sequence[int], atoms2: Sequence[int]) -> np.ndarray:
        """``P(X1 > X2) + P(X1 = X2) / 2`` per gene for random cells of the two groups (the
        Mann-Whitney AUC of the corrected log-normalized counts): (G,).

        Needs the two groups to hold every ranked cell (true of every comparison made).
        """
        n1 = float(self.n_cells[list(atoms1)].sum())
        n2 = float(self.n_cells[list(atoms2)].sum())
        r1 = self.rank_sums[list(atoms1)].sum(0)
        return (r1 - n1 * (n1 + 1) / 2) / (n1 * n2)


class DifferentialExpression:
    """Differential expression between groups of cells (mixed into the count VAEs).

    The host class provides ``_trained_module()``, ``_cells(adata)``, ``setup``, ``device``,
    ``var_names``, ``observation`` and ``_adata`` (the training AnnData, by reference).
    """

    @torch.inference_mode()
    def differential_expression(
        self,
        adata: AnnData | None = None,
        *,
        groupby: str,
        group1: Any = None,
        group2: Any = None,
        mode: Literal["change", "vanilla"] = "change",
        delta: float | None = 0.25,
        fdr_target: float = 0.05,
        batch_correction: bool = True,
        batches: Sequence[Any] | None = None,
        transform_covariates: Mapping[str, Any] | None = None,
        n_samples: int = 10,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Genes whose mean normalized expression differs between groups of cells.

        See the module :mod:`scvae.models._de` (and ``docs/math.md``) for the procedure:
        each group's mean expression from its batch-corrected pooled counts, its uncertainty
        from a Bayesian bootstrap over the cells and posterior draws of the model, a prior
        over genes learnt from all of them, and calls at a posterior expected false discovery
        rate.

        Parameters
        ----------
        adata
            The cells (same genes and batches as training). None: the training AnnData (its
            ``obs`` as it is now, so a column added after training, e.g. ``leiden``, works).
        groupby
            ``obs`` column naming each cell's group. Cells with a missing value are in no group.
        group1
            The group to test. None: every group against the rest, in one long table.
        group2
            The group to compare with; None: all other cells (``"rest"``).
        mode
            ``"change"``: ``P(|LFC| > delta)``, genes whose fold change is larger than
            ``delta``. ``"vanilla"``: the Bayes factor of ``m1 > m2``; with group means of
            hundreds of cells almost every gene has a direction, so prefer ``"change"``.
        delta
            Smallest log2 fold change that counts as a change (``mode="change"``): 0.25 is a
            fold of 1.19. None chooses it from the data (:func:`estimate_delta`).
        fdr_target
            Target posterior expected false discovery rate of the calls ``is_de_fdr_<target>``.
        batch_correction
            Decode every cell under each batch (``batches``, or all the model knows) and
            average; False decodes each cell under its own batch. With one batch there is
            nothing to correct and both are the same.
        batches
            The batches to average over with ``batch_correction`` (labels as in
            ``obs[batch_key]``); None: every batch.
        transform_covariates
            For a model with covariates: compare the cells as if each had these values
            (``{"donor": "d1", "percent_mito": 5.0}``, categories or numbers in the column's
            units), correcting each cell's counts to them as to the average batch. None:
            each cell keeps its own.
        n_samples
            Posterior draws of ``z`` per cell (each decoded under every batch of the
            correction), as in :meth:`get_normalized_expression`: the model's part of the
            uncertainty. Cost and memory grow linearly with it.
        batch_size
            Cells per forward pass; None fits a block of ``n_samples x cells x genes`` in
            about 32 MB.
        seed
            Seeds every draw: the same seed gives the same table.

        Returns
        -------
        pandas.DataFrame
            Indexed by gene, best first (by ``proba_de``, then ``|lfc_mean|``), with columns
            ``proba_de``, ``proba_not_de``, ``bayes_factor``, ``lfc_mean``, ``lfc_median``,
            ``lfc_std`` (the posterior under the prior over genes), ``lfc_raw_mean``,
            ``lfc_raw_std`` (the estimate and its standard error before it), ``scale1``,
            ``scale2`` (the model's mean denoised proportions), ``pooled_proportion1``,
            ``pooled_proportion2`` (of the corrected counts), ``raw_mean1``, ``raw_mean2``
            (mean counts),
            ``non_zeros_proportion1``, ``non_zeros_proportion2``, ``raw_normalized_mean1``,
            ``raw_normalized_mean2`` (mean counts per 10k), ``auc`` (the probability that a
            random cell of group 1 expresses the gene more than one of group 2, in batch-
            corrected log-normalized counts: the Mann-Whitney statistic, which ranks marker
            genes in :func:`scvae.tl.rank_genes_groups`), ``is_de_fdr_<fdr_target>``,
            ``delta``; vanilla adds ``proba_m1`` and ``proba_m2``. With ``group1=None`` the
            tables of every group against the rest are stacked, with columns ``group1``,
            ``group2`` and ``comparison`` (``"B vs rest"``).

        Raises
        ------
        KeyError
            ``groupby`` is not an obs column, or a group is not in it.
        ValueError
            ``group1 == group2``, a group with fewer than ``MIN_CELLS_PER_GROUP`` (5) cells,
            ``batches`` for a model without a batch covariate, or a non-count model.
        """
        module = self._trained_module()
        if not module.observation.counts:
            raise ValueError(
                f"differential_expression compares expression proportions of a count model; "
                f"{type(self).__name__} models {self.observation.__name__} data. Use ZINBVAE, "
                "NBVAE or PoissonVAE."
            )
        mode = checks.choice("mode", mode, ("change", "vanilla"))
        if delta is not None:
            delta = checks.fraction("delta", delta, low=0.0, high=np.inf, include_low=False)
        fdr_target = checks.fraction("fdr_target", fdr_target, low=0.0, high=1.0)
        n_samples = checks.positive_int("n_samples", n_samples)
        batch_correction = checks.boolean("batch_correction", batch_correction)
        decode_codes = self._decode_batches(batch_correction, batches)
        if transform_covariates is not None:
            self._covariate_values(transform_covariates)  # validated before any work
            transform_covariates = transform_covariates or None

        adata, data = self._de_cells(adata)
        labels = _group_labels(adata, groupby)
        comparisons, atoms = _comparisons(labels, groupby, group1, group2)
        atom_of_cell = np.full(len(labels), -1, dtype=np.int64)
        for a, name in enumerate(atoms):
            atom_of_cell[labels == name] = a
        cells = np.flatnonzero(atom_of_cell >= 0)
        stats = self._group_stats(
            module,
            data,
            cells,
            atom_of_cell[cells],
            n_atoms=len(atoms),
            decode_codes=decode_codes,
            n_samples=n_samples,
            batch_size=batch_size,
            seed=checks.resolve_seed(seed),
            covariates=transform_covariates,
        )
        raw, n_cells = _raw_sums(data, atom_of_cell, len(atoms))  # once for every comparison
        tables = []
        for name1, atoms1, name2, atoms2 in comparisons:
            (counts1, proportion1), (counts2, proportion2) = (
                stats.pooled(atoms1),
                stats.pooled(atoms2),
            )
            table = _summarize(
                stats.log2_ratio(atoms1, atoms2),
                stats.bootstrap_var(atoms1) + stats.bootstrap_var(atoms2),
                poisson_se(counts1, counts2),
                mode=mode,
                delta=delta,
                fdr_target=fdr_target,
            )
            table["scale1"] = stats.scale(atoms1).numpy()
            table["scale2"] = stats.scale(atoms2).numpy()
            table["pooled_proportion1"] = proportion1
            table["pooled_proportion2"] = proportion2
            table["auc"] = stats.superiority(atoms1, atoms2)
            for column, per_atom in raw.items():
                table[f"{column}1"] = per_atom[atoms1].sum(0) / n_cells[atoms1].sum()
                table[f"{column}2"] = per_atom[atoms2].sum(0) / n_cells[atoms2].sum()
            table.index = pd.Index(self.var_names, name=None)
            table = _ordered(table, mode)
            if group1 is None:
                table.insert(0, "comparison", f"{name1} vs {name2}")
                table.insert(0, "group2", name2)
                table.insert(0, "group1", name1)
            tables.append(table)
        return tables[0] if len(tables) == 1 else pd.concat(tables)

    # ------------------------------------------------------------------------------ inputs
    def _de_cells(self, adata: AnnData | None) -> tuple[AnnData, CellData]:
        """The AnnData naming the groups and its validated cells."""
        source = adata if adata is not None else self._adata
        if source is not None:  # the raw means read the whole matrix: in memory only
            check_in_memory(source)
        if adata is None:
            if self._adata is None:
                raise ValueError(
                    "This model was loaded without its training AnnData: pass the cells, "
                    "model.differential_expression(adata, groupby=...)."
                )
            adata = self._adata
            data = self._cells(None)
            if adata.n_obs != data.X.shape[0]:
                raise ValueError(
                    f"The training AnnData now has {adata.n_obs} cells, the model was trained "
                    f"on {data.X.shape[0]}: pass the cells explicitly, "
                    "model.differential_expression(adata, groupby=...)."
                )
            return adata, data
        return adata, self._cells(adata)

    def _decode_batches(self, batch_correction: bool, batches: Sequence[Any] | None) -> list[int]:
        """Batch codes to decode every cell under ([] for each cell's own batch)."""
        if batches is not None:
            if self.setup.batch_key is None:
                raise ValueError(
                    "batches= names batches to correct for, but this model was trained "
                    "without batch_key: there are no batches to average over. Drop batches=."
                )
            if not batch_correction:
                raise ValueError("batches= is the set averaged by batch_correction=True.")
            codes = self._batch_label_codes(batches)
            if not codes:
                raise ValueError("batches= is empty; give batch labels, or None for all.")
            return codes
        if not batch_correction or self.setup.n_batch == 1:
            return []  # one batch: every cell is in it already, nothing to correct
        return list(range(self.setup.n_batch))

    # ------------------------------------------------------------------------------ draws
    def _group_stats(
        self,
        module: Any,
        data: CellData,
        cells: np.ndarray,
        atom: np.ndarray,
        *,
        n_atoms: int,
        decode_codes: list[int],
        n_samples: int,
        batch_size: int | None,
        seed: int,
        covariates: Mapping[str, Any] | None = None,
    ) -> GroupStats:
        """One pass over the compared cells: every atom's sums (:class:`GroupStats`)."""
        n_genes = self.setup.n_genes
        if batch_size is None:
            batch_size = max(1, min(1024, _BLOCK_BUDGET // (n_samples * n_genes)))
        batch_size = checks.positive_int("batch_size", batch_size)
        corrects = bool(decode_codes) or covariates is not None
        stats = GroupStats.zeros(n_samples if corrects else 1, n_atoms, n_genes)
        with _seeded(seed, self.device):
            start = 0
            for batch in self._de_minibatches(data, cells, batch_size):
                atom_b = torch.as_tensor(atom[start : start + batch.n_cells])
                start += batch.n_cells
                target = None if covariates is None else self._decode_covariates(batch, covariates)
                rho, factor = _decoded(module, batch, n_samples, decode_codes, target)
                stats.add_model_means(rho.cpu(), atom_b)
                corrected = (batch.nz.x.unsqueeze(0) * factor).cpu().double()  # (J', nnz)
                stats.add_counts(corrected, batch.nz.row.cpu(), batch.nz.col.cpu(), atom_b)
        stats.rank_cells()
        return stats

    def _de_minibatches(
        self, data: CellData, cells: np.ndarray, batch_size: int
    ) -> Iterator[Minibatch]:
        """The cells at ``cells``, in order, as minibatches on the model's device (eval mode)."""
        module = self._trained_module().to(self.device).eval()
        module.sparse_input = sparse_input_pays(data, self.device)
        loader = CSRMinibatches(
            data, cells, batch_size=batch_size, shuffle=False, dense=not module.sparse_input
        ).to(self.device)
        yield from loader


# ------------------------------------------------------------------------------ helpers
def _decoded(
    module: Any,
    batch: Minibatch,
    n_draws: int,
    decode_codes: list[int],
    target_covariates: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoised proportions and correction factors of a chunk, for ``n_draws`` draws.

    For ``z_j ~ q(z | x)``: ``rho(z_j, s, c*)`` averaged over the batches ``decode_codes``
    (each cell's own batch when empty) at the covariates ``c*`` (``target_covariates``, or
    the cells' own), (J, B, G); and at the non-zero counts the factors
    ``mean_s mu(z_j, s, c*) / mu(z_j, s_n, c_n)`` of the expected counts (zero inflation
    included), (J, nnz), or ones (1, nnz) when nothing is corrected.
    """
    qz, _ = module.encode(batch)
    z = qz.sample((n_draws,))  # (J, B, L)
    own = batch.batch_index
    observation = module.observation
    zero_library = torch.zeros(n_draws, batch.n_cells, 1, device=z.device)

    def decode(codes: torch.Tensor, covariates: Any) -> tuple[torch.Tensor, torch.Tensor]:
        out = module.decode(z, codes, covariates)
        px = observation.from_decoder(out, zero_library, codes, module.observation_parameter)
        return observation.normalized(out, 1.0), px.mean  # (J, B, G) each

    nz = batch.nz
    if not decode_codes and target_covariates is None:  # nothing to correct: no means needed
        rho = observation.normalized(module.decode(z, own, batch.covariates), 1.0)
        return rho, torch.ones(1, len(nz.x), device=z.device)
    target = batch.covariates if target_covariates is None else target_covariates
    rho, mu = None, None
    for code in decode_codes or [None]:
        codes = own if code is None else own.new_full((batch.n_cells,), code)
        r, m = decode(codes, target)
        rho, mu = (r, m) if rho is None else (rho + r, mu + m)
    n_codes = max(len(decode_codes), 1)
    rho, mu = rho / n_codes, mu / n_codes
    _, mu_own = decode(own, batch.covariates)
    factor = (mu / mu_own)[:, nz.row, nz.col]  # (J, nnz)
    return rho, factor


def _group_labels(adata: AnnData, groupby: str) -> np.ndarray:
    """(N,) object array of group names; None where the label is missing."""
    if not isinstance(groupby, str) or groupby not in adata.obs:
        columns = ", ".join(repr(c) for c in adata.obs.columns) or "none"
        raise KeyError(
            f"groupby={groupby!r} is not a column of adata.obs (available columns: {columns})."
        )
    column = adata.obs[groupby]
    present = column.notna().to_numpy()
    labels = np.full(len(column), None, dtype=object)
    labels[present] = _obs_labels(column[present])
    return labels


def _comparisons(
    labels: np.ndarray, groupby: str, group1: Any, group2: Any
) -> tuple[list[tuple[str, list[int], str, list[int]]], list[str]]:
    """The comparisons ``(name1, atoms1, name2, atoms2)`` and the atom groups they use."""
    present = labels[labels != None]  # noqa: E711 (object array of str or None)
    names, counts = np.unique(present.astype(str), return_counts=True)
    size = dict(zip(names.tolist(), counts.tolist(), strict=True))
    known = ", ".join(repr(n) for n in names)

    def name_of(group: Any, which: str) -> str:
        name = str(_obs_labels(pd.Series([group]))[0])
        if name not in size:
            raise KeyError(f"{which}={group!r} is not a group of adata.obs[{groupby!r}] ({known}).")
        return name

    def check_size(name: str, n: int) -> None:
        if n < MIN_CELLS_PER_GROUP:
            raise ValueError(
                f"Group {name!r} of adata.obs[{groupby!r}] has {n} cells; differential "
                f"expression needs at least {MIN_CELLS_PER_GROUP} per group. Merge or drop it."
            )

    atoms = names.tolist()
    position = {n: i for i, n in enumerate(atoms)}
    if group1 is None:
        if group2 is not None:
            raise ValueError("group2 needs group1: pass group1 too, or neither.")
        if len(atoms) < 2:
            raise ValueError(f"adata.obs[{groupby!r}] has one group ({known}): nothing to compare.")
        out = []
        for name in atoms:
            check_size(name, size[name])
            rest = [position[n] for n in atoms if n != name]
            check_size(REST, sum(size[atoms[a]] for a in rest))
            out.append((name, [position[name]], REST, rest))
        return out, atoms
    name1 = name_of(group1, "group1")
    check_size(name1, size[name1])
    if group2 is None:
        rest = [position[n] for n in atoms if n != name1]
        check_size(REST, sum(size[atoms[a]] for a in rest))
        return [(name1, [position[name1]], REST, rest)], atoms
    name2 = name_of(group2, "group2")
    if name2 == name1:
        raise ValueError(f"group1 and group2 are both {name1!r}: compare two different groups.")
    check_size(name2, size[name2])
    return [(name1, [0], name2, [1])], [name1, name2]


def _summarize(
    lfc: np.ndarray,
    bootstrap_var: np.ndarray,
    se_floor: np.ndarray,
    *,
    mode: str,
    delta: float | None,
    fdr_target: float,
) -> pd.DataFrame:
    """The per-gene table of one comparison.

    ``lfc`` (J, G) holds the estimate under each posterior draw: their mean is the estimate
    ``b``, their variance the model's part of its variance, ``bootstrap_var`` (G,) the
    cells' part; the standard error ``s`` is at least ``se_floor``. The probabilities and the
    reported LFC are the posterior under the prior fitted to all the genes
    (:mod:`scvae.models._shrinkage`).
    """
    b = lfc.mean(0)
    model_var = lfc.var(0, ddof=1) if lfc.shape[0] > 1 else np.zeros_like(b)
    s = np.maximum(np.sqrt(bootstrap_var + model_var), se_floor)
    if delta is None:
        delta = estimate_delta(b)
    post = shrink(b, s)
    table = {}
    if mode == "change":
        proba_de = np.clip(post.proba_beyond(delta), 0.0, 1.0)  # sums of tails: round-off
        bayes_factor = np.log(proba_de + _EPS) - np.log(1.0 - proba_de + _EPS)
    else:
        positive = np.clip(post.proba_positive(), 0.0, 1.0)
        negative = np.clip(post.proba_negative(), 0.0, 1.0)
        null = np.clip(1.0 - positive - negative, 0.0, 1.0)  # the point mass at LFC = 0
        proba_m1, proba_m2 = positive + null / 2, negative + null / 2
        table = {"proba_m1": proba_m1, "proba_m2": proba_m2}
        proba_de = np.maximum(positive, negative)  # 1 - the local false sign rate
        bayes_factor = np.log(proba_m1 + _EPS) - np.log(proba_m2 + _EPS)
    out = pd.DataFrame(
        {
            "proba_de": proba_de,
            "proba_not_de": 1.0 - proba_de,
            "bayes_factor": bayes_factor,
            **table,
            "lfc_mean": post.mean(),
            "lfc_median": post.median(),
            "lfc_std": post.std(),
            "lfc_raw_mean": b,
            "lfc_raw_std": s,
        }
    )
    out[f"is_de_fdr_{fdr_target:g}"] = fdr_calls(proba_de, fdr_target)
    out["delta"] = delta if mode == "change" else np.nan
    return out


def poisson_se(counts1: np.ndarray, counts2: np.ndarray) -> np.ndarray:
    """Poisson standard error of ``log2`` of the ratio of two pooled counts (with the
    pseudocount): ``sqrt(1 / (c1 + 0.5) + 1 / (c2 + 0.5)) / ln 2``.

    The bootstrap over cells cannot see the noise of counts that did not happen: a gene seen
    in five cells of one group and none of the other has a bootstrap standard error near 0.
    Its standard error is at least that of the counts themselves.
    """
    c1, c2 = counts1 + _PSEUDOCOUNT, counts2 + _PSEUDOCOUNT
    return np.sqrt(1.0 / c1 + 1.0 / c2) / np.log(2.0)


def fdr_calls(proba_de: np.ndarray, fdr_target: float) -> np.ndarray:
    """The largest top set of genes whose posterior expected FDR is at most ``fdr_target``.

    Genes ranked by ``proba_de``; the expected false discovery proportion of the top ``k`` is
    ``mean(1 - proba_de)`` over them (Boyeau et al. 2023); ties are kept together.
    """
    order = np.argsort(-proba_de, kind="stable")
    expected_fdr = np.cumsum(1.0 - proba_de[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(expected_fdr <= fdr_target)
    calls = np.zeros(len(proba_de), dtype=bool)
    if ok.size:
        threshold = proba_de[order[ok[-1]]]
        calls = proba_de >= threshold
        # ties at the threshold may push the rate over the target: then drop the whole tie
        if (1.0 - proba_de[calls]).mean() > fdr_target:
            calls = proba_de > threshold
    return calls


def posterior_fdr(proba_de: np.ndarray) -> np.ndarray:
    """For each gene, the posterior expected FDR of calling it and every gene ranked above."""
    order = np.argsort(-proba_de, kind="stable")
    expected_fdr = np.cumsum(1.0 - proba_de[order]) / np.arange(1, len(order) + 1)
    out = np.empty_like(expected_fdr)
    # a q-value: the smallest expected FDR of a top set that contains the gene
    out[order] = np.minimum.accumulate(expected_fdr[::-1])[::-1]
    return out


def estimate_delta(lfc_mean: np.ndarray, *, floor: float = 0.1) -> float:
    """``delta`` from the data: the half-width of the central mode of the genes' LFCs.

    Fits a three-component Gaussian mixture to the posterior mean LFCs (down, unchanged, up;
    started at the 5 %, 50 % and 95 % quantiles) and returns ``|mu_0| + 2 sigma_0`` of the
    component nearest zero: the spread of the fold changes of genes that do not change.
    At least ``floor``.
    """
    x = np.asarray(lfc_mean, dtype=np.float64)
    mu = np.quantile(x, [0.05, 0.5, 0.95])
    sd = np.full(3, max(x.std(), 1e-3))
    pi = np.full(3, 1 / 3)
    for _ in range(200):
        log_r = np.log(pi) - np.log(sd) - 0.5 * ((x[:, None] - mu) / sd) ** 2
        r = np.exp(log_r - log_r.max(1, keepdims=True))
        r /= r.sum(1, keepdims=True)
        nk = r.sum(0) + 1e-12
        pi = nk / nk.sum()
        mu = (r * x[:, None]).sum(0) / nk
        sd = np.sqrt((r * (x[:, None] - mu) ** 2).sum(0) / nk) + 1e-6
    c = int(np.argmin(np.abs(mu)))
    return float(max(floor, abs(mu[c]) + 2.0 * sd[c]))


def _raw_sums(
    data: CellData, atom_of_cell: np.ndarray, n_atoms: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per atom (A, G): the sums of the counts, of the cells with a count and of the counts per
    10k; and the cells of each atom (A,). Divided by a group's cells, they are its means."""
    member = atom_of_cell >= 0
    rows = np.flatnonzero(member)
    indicator = sp.csr_matrix(
        (np.ones(len(rows)), (atom_of_cell[member], rows)), shape=(n_atoms, len(atom_of_cell))
    )  # (A, N): which atom each cell is in
    X = data.X
    normalized = sp.diags(1e4 / data.library_size) @ X
    raw = {
        "raw_mean": indicator @ X,
        "non_zeros_proportion": indicator @ (X > 0).astype(np.float64),
        "raw_normalized_mean": indicator @ normalized,
    }
    dense = {k: np.asarray(v.toarray() if sp.issparse(v) else v) for k, v in raw.items()}
    return dense, np.bincount(atom_of_cell[member], minlength=n_atoms).astype(np.float64)


def _ordered(table: pd.DataFrame, mode: str) -> pd.DataFrame:
    """Best first: by ``proba_de`` (change) or ``|bayes_factor|`` (vanilla), then ``|lfc|``."""
    key = table["proba_de"] if mode == "change" else table["bayes_factor"].abs()
    order = np.lexsort((-table["lfc_mean"].abs().to_numpy(), -key.to_numpy()))
    return table.iloc[order]
