"""The AnnData boundary: validation, batch encoding, library priors and device-resident loaders.

Everything that touches a user's AnnData goes through :func:`read_training_data` or
:func:`read_query_data`. They only read: the AnnData is never modified, no column is added,
and the count matrix is never densified as a whole (it becomes one CSR copy in float32).
Minibatches are gathered from that CSR by index, on the training device, by
:class:`CSRMinibatches`: no torch DataLoader and no per-batch AnnData slicing. Each minibatch
also carries its non-zeros in coordinate form, for the sparse likelihoods.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from scipy.special import gammaln

from scvae.distributions import NonZeros

__all__ = [
    "CSRMinibatches",
    "DataSetup",
    "log_normalize",
    "read_query_data",
    "read_training_data",
]

_MAX_LISTED = 10


def _listing(items: Sequence[str]) -> str:
    items = [str(i) for i in items]
    shown = ", ".join(repr(i) for i in items[:_MAX_LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _MAX_LISTED else "")


@dataclass(frozen=True)
class DataSetup:
    """What a model remembers of its training AnnData.

    Attributes
    ----------
    layer
        The layer the counts were read from (None for ``adata.X``).
    batch_key
        The ``obs`` column of batches (None for one batch).
    batch_categories
        Batch labels in code order.
    var_names
        Gene names in training order.
    """

    layer: str | None
    batch_key: str | None
    batch_categories: tuple[str, ...]
    var_names: tuple[str, ...] = field(repr=False)

    @property
    def n_batch(self) -> int:
        """Number of batch categories (1 without a batch covariate)."""
        return len(self.batch_categories)

    @property
    def n_genes(self) -> int:
        """Number of genes."""
        return len(self.var_names)

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return {
            "layer": self.layer,
            "batch_key": self.batch_key,
            "batch_categories": list(self.batch_categories),
            "var_names": list(self.var_names),
        }

    @classmethod
    def from_dict(cls, d: dict) -> DataSetup:
        """Inverse of :meth:`to_dict`."""
        return cls(
            layer=d["layer"],
            batch_key=d["batch_key"],
            batch_categories=tuple(d["batch_categories"]),
            var_names=tuple(d["var_names"]),
        )


def _get_matrix(adata: AnnData, layer: str | None) -> sp.csr_matrix | np.ndarray:
    if not isinstance(adata, AnnData):
        raise TypeError(f"Expected an AnnData object, got {type(adata).__name__}.")
    if adata.isbacked:
        raise ValueError(
            "adata is backed on disk; load it into memory first with adata = adata.to_memory()."
        )
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"adata is empty ({adata.n_obs} cells x {adata.n_vars} genes).")
    if layer is None:
        X = adata.X
        if X is None:
            raise ValueError(
                "adata.X is None. Put the raw counts in adata.X or pass layer=<name of the "
                f"counts layer>; layers present: {_listing(list(adata.layers.keys())) or 'none'}."
            )
        return X
    if layer not in adata.layers:
        raise KeyError(
            f"layer={layer!r} is not in adata.layers. Layers present: "
            f"{_listing(list(adata.layers.keys())) or 'none'}; use layer=None for adata.X."
        )
    return adata.layers[layer]


def _to_csr(X) -> sp.csr_matrix:
    """One float32 CSR copy of ``X`` (dense, CSR, CSC or COO), never densifying sparse input."""
    if sp.issparse(X):
        csr = sp.csr_matrix(X, dtype=np.float32, copy=True)
    elif isinstance(X, np.ndarray):
        csr = sp.csr_matrix(np.asarray(X, dtype=np.float32))
    else:
        raise TypeError(
            f"Unsupported matrix type {type(X).__name__}; expected a numpy array or a scipy "
            "sparse matrix (dask and backed arrays: call .compute() / .to_memory() first)."
        )
    csr.sum_duplicates()
    csr.sort_indices()
    return csr


def _check_values(csr: sp.csr_matrix, *, where: str, counts: bool, nonnegative: bool) -> None:
    values = csr.data
    n_bad = int(np.count_nonzero(~np.isfinite(values)))
    if n_bad:
        raise ValueError(
            f"{where} contains {n_bad} NaN or infinite values. Remove or impute them before "
            "fitting (for example adata = adata[~np.isnan(...)] or recompute the counts)."
        )
    n_neg = int(np.count_nonzero(values < 0)) if nonnegative else 0
    if n_neg:
        raise ValueError(
            f"{where} contains {n_neg} negative values (minimum {values.min():g}). The models "
            "need non-negative raw counts: pass the raw UMI counts (e.g. layer='counts'), not "
            "scaled or centered data."
        )
    if counts:
        n_frac = int(np.count_nonzero(values != np.round(values)))
        if n_frac:
            example = values[values != np.round(values)][0]
            raise ValueError(
                f"{where} contains {n_frac} non-integer values (e.g. {example:g}); count "
                "models need raw integer counts. This looks normalized or log-transformed: "
                "pass the raw counts, e.g. layer='counts' (keep them with "
                "adata.layers['counts'] = adata.X.copy() before sc.pp.normalize_total)."
            )


def _check_cells(csr: sp.csr_matrix, *, where: str) -> np.ndarray:
    totals = np.asarray(csr.sum(axis=1)).ravel()  # (N,)
    n_empty = int(np.count_nonzero(totals <= 0))
    if n_empty:
        raise ValueError(
            f"{where} has {n_empty} cells with zero total counts; their library size is "
            "undefined. Remove them first, e.g. sc.pp.filter_cells(adata, min_counts=1)."
        )
    return totals


def _batch_codes(
    adata: AnnData, batch_key: str | None, categories: Sequence[str] | None
) -> tuple[np.ndarray, tuple[str, ...]]:
    if batch_key is None:
        return np.zeros(adata.n_obs, dtype=np.int64), ("0",) if categories is None else tuple(
            categories
        )
    if batch_key not in adata.obs.columns:
        raise KeyError(
            f"batch_key={batch_key!r} is not a column of adata.obs. Columns present: "
            f"{_listing(list(adata.obs.columns)) or 'none'}."
        )
    column = adata.obs[batch_key]
    if column.isna().any():
        raise ValueError(
            f"adata.obs[{batch_key!r}] has {int(column.isna().sum())} missing values; give "
            "every cell a batch label."
        )
    labels = column.astype(str).to_numpy()
    if categories is None:
        if isinstance(column.dtype, pd.CategoricalDtype):
            present = set(labels)
            categories = tuple(str(c) for c in column.cat.categories if str(c) in present)
        else:
            categories = tuple(sorted(set(labels)))
    lookup = {c: i for i, c in enumerate(categories)}
    unseen = sorted(set(labels) - lookup.keys())
    if unseen:
        raise ValueError(
            f"adata.obs[{batch_key!r}] has batch categories unseen in training: "
            f"{_listing(unseen)}. The model knows {_listing(categories)}. Subset to known "
            "batches or train a model that includes them."
        )
    return np.fromiter((lookup[v] for v in labels), dtype=np.int64, count=len(labels)), tuple(
        categories
    )


@dataclass
class CellData:
    """Validated counts and batch codes, ready for the module."""

    X: sp.csr_matrix
    batch_index: np.ndarray
    library_size: np.ndarray

    @cached_property
    def log_x_factorial(self) -> np.ndarray:
        """(N,) float32 ``sum_g lgamma(x_g + 1)`` of each cell: the data-only term of the count
        likelihoods, computed once and shared by every loader (no per-entry index array)."""
        X = self.X
        terms = gammaln(X.data + 1).astype(np.float32, copy=False)  # (nnz,)
        per_entry = sp.csr_matrix((terms, X.indices, X.indptr), shape=X.shape)
        return np.asarray(per_entry.sum(axis=1), dtype=np.float32).ravel()


def read_training_data(
    adata: AnnData,
    *,
    layer: str | None,
    batch_key: str | None,
    counts: bool = True,
    nonnegative: bool = True,
) -> tuple[DataSetup, CellData]:
    """Validate a training AnnData and read it, without modifying it.

    Parameters
    ----------
    adata
        Cells x genes AnnData (a view is fine: it is only read).
    layer
        Layer holding the counts, or None for ``adata.X``.
    batch_key
        ``obs`` column with batch labels, or None.
    counts
        Require non-negative integer counts and non-empty cells.
    nonnegative
        Refuse negative values (implied by ``counts``).

    Returns
    -------
    DataSetup, CellData

    Raises
    ------
    KeyError
        Unknown layer or batch_key (the message lists what exists).
    ValueError
        Negative, NaN/inf or (for counts) non-integer values, empty cells, missing batch labels.
    """
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    csr = _to_csr(_get_matrix(adata, layer))
    _check_values(csr, where=where, counts=counts, nonnegative=nonnegative or counts)
    totals = _check_cells(csr, where=where) if counts else np.ones(csr.shape[0])
    codes, categories = _batch_codes(adata, batch_key, None)
    setup = DataSetup(
        layer=layer,
        batch_key=batch_key,
        batch_categories=categories,
        var_names=tuple(str(v) for v in adata.var_names),
    )
    return setup, CellData(X=csr, batch_index=codes, library_size=totals)


def read_query_data(
    adata: AnnData, setup: DataSetup, *, counts: bool = True, nonnegative: bool = True
) -> CellData:
    """Validate new cells against what a model was trained on and read them.

    Raises
    ------
    ValueError
        Genes differ from training, unseen batch categories, or bad values (see
        :func:`read_training_data`).
    """
    if tuple(str(v) for v in adata.var_names) != setup.var_names:
        train = pd.Index(setup.var_names)
        query = pd.Index([str(v) for v in adata.var_names])
        missing = train.difference(query, sort=False)
        extra = query.difference(train, sort=False)
        detail = (
            f"missing {len(missing)} training genes ({_listing(list(missing))}), "
            f"{len(extra)} genes not in training ({_listing(list(extra))})"
            if len(missing) or len(extra)
            else "the same genes in another order"
        )
        raise ValueError(
            f"adata has {adata.n_vars} genes but the model was trained on {setup.n_genes}: "
            f"{detail}. Subset and order the genes as in training: "
            "adata[:, model.var_names] (genes missing from adata cannot be scored)."
        )
    where = "adata.X" if setup.layer is None else f"adata.layers[{setup.layer!r}]"
    csr = _to_csr(_get_matrix(adata, setup.layer))
    _check_values(csr, where=where, counts=counts, nonnegative=nonnegative or counts)
    totals = _check_cells(csr, where=where) if counts else np.ones(csr.shape[0])
    if setup.batch_key is not None:
        codes, _ = _batch_codes(adata, setup.batch_key, setup.batch_categories)
    else:
        codes = np.zeros(adata.n_obs, dtype=np.int64)
    return CellData(X=csr, batch_index=codes, library_size=totals)


def log_normalize(data: CellData, *, target_sum: float = 1e4) -> CellData:
    """``log1p(x / total * target_sum)`` per cell, on the CSR non-zeros only (stays sparse).

    The same transform as ``sc.pp.normalize_total(target_sum=1e4)`` then ``sc.pp.log1p``.
    """
    X = data.X.copy()
    scale = np.repeat(target_sum / data.library_size, np.diff(X.indptr))  # (nnz,)
    X.data = np.log1p(X.data * scale).astype(np.float32)
    return CellData(X=X, batch_index=data.batch_index, library_size=data.library_size)


def library_log_prior(
    library_size: np.ndarray, batch_index: np.ndarray, n_batch: int, *, min_var: float = 1e-2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Empirical mean and variance of ``log(total counts)`` within each batch: (S,), (S,).

    A batch with a single cell gets the variance floor ``min_var``.
    """
    log_l = np.log(library_size)
    mean = np.zeros(n_batch)
    var = np.full(n_batch, min_var)
    for s in range(n_batch):
        in_s = log_l[batch_index == s]
        if in_s.size:
            mean[s] = in_s.mean()
            var[s] = max(in_s.var(), min_var)
    return torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(var, dtype=torch.float32)


class CSRMinibatches:
    """Minibatches gathered by index from a CSR matrix that lives on the training device.

    The counts are copied to the device once, as CSR (``crow``, ``col``, ``val``). Each
    minibatch is a dense (B, G) tensor built on the device by a scatter of the selected rows'
    non-zeros, so host-device traffic per step is only the index vector.

    Parameters
    ----------
    data
        Validated cells.
    indices
        Positions of the cells to iterate over.
    batch_size
        Cells per minibatch.
    shuffle
        Reshuffle every epoch (with ``generator``).
    drop_last
        Drop a last partial minibatch of fewer than 3 cells (BatchNorm needs two).
    seed
        Seed of the shuffling generator.
    dense
        Also build the dense (B, G) counts of each minibatch. False yields ``None`` in their
        place, for a module that reads its input by the non-zeros (saves a (B, G) fill and
        scatter per step).
    """

    def __init__(
        self,
        data: CellData,
        indices: np.ndarray,
        *,
        batch_size: int,
        shuffle: bool,
        drop_last: bool = False,
        seed: int = 0,
        dense: bool = True,
    ) -> None:
        X = data.X
        self.n_genes = X.shape[1]
        # the loaders share the validated CSR's memory on the CPU (no copy per loader)
        self.crow = torch.from_numpy(X.indptr.astype(np.int64, copy=False))  # (N+1,)
        self.col = torch.from_numpy(X.indices.astype(np.int32, copy=False))  # (nnz,) int32
        self.val = torch.from_numpy(X.data.astype(np.float32, copy=False))  # (nnz,)
        self.batch_index = torch.from_numpy(data.batch_index)  # (N,)
        self.log_x_factorial = torch.from_numpy(data.log_x_factorial)  # (N,) computed once
        self.indices = torch.as_tensor(np.asarray(indices, dtype=np.int64))  # (n,)
        self.batch_size = batch_size
        self.shuffle = shuffle
        # only a last minibatch of fewer than 3 cells is dropped: BatchNorm needs 2, and a
        # cell or two would make one noisy step; larger remainders are real training signal
        self.drop_last = drop_last and 0 < len(self.indices) % batch_size < 3 < len(self.indices)
        self.generator = torch.Generator().manual_seed(seed)
        self.device = torch.device("cpu")  # where minibatches are served
        self.dense = dense

    _STORAGE = ("crow", "col", "val", "batch_index", "log_x_factorial", "indices")

    @property
    def nbytes(self) -> int:
        """Bytes of the stored counts and per-cell vectors."""
        return sum(
            getattr(self, n).element_size() * getattr(self, n).numel() for n in self._STORAGE
        )

    def to(self, device: torch.device | str, *, resident: bool | None = None) -> CSRMinibatches:
        """Serve minibatches on ``device``.

        Parameters
        ----------
        device
            Where minibatches are consumed.
        resident
            Copy the counts to ``device`` once and gather there (fast path). False streams:
            the counts stay in (pinned) host memory, each minibatch is gathered on the host and
            copied asynchronously. None: resident unless the counts take more than half of
            the free memory of a CUDA device.
        """
        device = torch.device(device)
        if resident is None:
            resident = (
                device.type != "cuda" or self.nbytes < 0.5 * torch.cuda.mem_get_info(device)[0]
            )
        storage = device if resident else torch.device("cpu")
        for name in self._STORAGE:
            tensor = getattr(self, name).to(storage)
            if storage.type == "cpu" and device.type == "cuda":
                tensor = tensor.pin_memory()
            setattr(self, name, tensor)
        self.device = device
        return self

    @property
    def n_cells_per_epoch(self) -> int:
        """Cells served by one pass (all of them unless a tiny last minibatch is dropped)."""
        n = len(self.indices)
        return n - n % self.batch_size if self.drop_last else n

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def gather(self, rows: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, NonZeros]:
        """Dense counts (B, G) (None unless ``dense``), batch codes (B,) and the non-zeros of
        the cells at ``rows``."""
        start = self.crow[rows]  # (B,)
        n_nz = self.crow[rows + 1] - start  # (B,)
        row_of_nz = torch.repeat_interleave(
            torch.arange(len(rows), device=rows.device), n_nz
        )  # (nnz_B,)
        first_nz = torch.cumsum(n_nz, 0) - n_nz  # (B,) exclusive prefix sum
        position = (
            torch.arange(len(row_of_nz), device=rows.device)
            - first_nz[row_of_nz]
            + start[row_of_nz]
        )  # (nnz_B,) positions in col/val
        col, val = self.col[position].long(), self.val[position]  # (nnz_B,)
        x = None
        if self.dense:
            x = torch.zeros(len(rows), self.n_genes, device=rows.device)  # (B, G)
            x[row_of_nz, col] = val
        nz = NonZeros(row_of_nz, col, val, self.log_x_factorial[rows], len(rows), first_nz)
        return x, self.batch_index[rows], nz

    def __iter__(self) -> Iterator[tuple[torch.Tensor | None, torch.Tensor, NonZeros]]:
        order = self.indices
        if self.shuffle:
            perm = torch.randperm(len(order), generator=self.generator).to(order.device)
            order = order[perm]
        streaming = order.device != self.device
        for b in range(len(self)):
            x, batch_index, nz = self.gather(order[b * self.batch_size : (b + 1) * self.batch_size])
            if streaming:
                move = lambda t: t.to(self.device, non_blocking=True)  # noqa: E731
                x = None if x is None else move(x)
                batch_index = move(batch_index)
                nz = NonZeros(
                    move(nz.row),
                    move(nz.col),
                    move(nz.x),
                    move(nz.log_x_factorial),
                    nz.n_cells,
                    move(nz.offsets),
                )
            yield x, batch_index, nz
