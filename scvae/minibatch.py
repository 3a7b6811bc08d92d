"""Minibatches: one named shape for every model, gathered on the training device from a CSR.

A :class:`Minibatch` holds what a module's ``loss`` reads for ``B`` cells: the dense counts
(or None when the encoders read the non-zeros), the batch codes, the non-zeros in coordinate
form for the sparse likelihoods, labels, and the covariates beyond the batch
(:class:`~scvae.nn.Covariates`: categorical codes, standardized continuous values).
:class:`CSRMinibatches` serves them from a validated :class:`~scvae.data.CellData`: the
counts are copied to the training device once, as CSR, and each minibatch is gathered there by
index, so the host sends only the index vector per step (no torch DataLoader, no per-batch
AnnData slicing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from scvae.data import CellData
from scvae.distributions import NonZeros
from scvae.nn import Covariates

__all__ = ["CSRMinibatches", "Covariates", "Minibatch", "shard_batches", "sparse_input_pays"]

#: Largest fraction of non-zero counts at which the encoders read their input sparsely on the
#: CPU, and the fewest genes (measured at 27e3092; `benchmarks/speed.py --genes 1000 2000 5000 all`
#: shows the effect through fit).
SPARSE_INPUT_MAX_DENSITY = 0.1
SPARSE_INPUT_MIN_GENES = 8000


def sparse_input_pays(data: CellData, device: torch.device) -> bool:
    """Whether the encoders' first layer should read the counts by their non-zeros.

    On the CPU a sparse product costs ``nnz`` row gathers against ``G`` multiply-adds per cell
    for the dense one. Measured on PBMC 3k (about 5-7 % non-zeros): 1.16x faster per training
    step with all 16.6k genes, on par with 1 thread and 0.88x with 2 threads at 2,000 genes
    (the gather does not parallelize as well as the dense product). So: sparse for many genes
    at low density. On a GPU the dense product is so fast that the gather does not pay.
    """
    n_cells, n_genes = data.X.shape
    density = data.X.nnz / max(n_cells * n_genes, 1)
    return bool(
        device.type == "cpu"
        and density <= SPARSE_INPUT_MAX_DENSITY
        and n_genes >= SPARSE_INPUT_MIN_GENES
    )


@dataclass
class Minibatch:
    """The cells of one optimizer step (or one scoring chunk).

    Attributes
    ----------
    x
        (B, G) dense counts, or None when only the non-zeros are needed.
    batch_index
        (B,) int64 batch codes.
    nz
        Non-zeros of ``x`` in coordinate form (for the sparse likelihoods and sparse input);
        None selects the dense likelihood (tests compare the two).
    labels
        (B,) int64 label codes (-1: unlabelled), or None for models without labels.
    covariates
        The covariates beyond the batch: (B, C) int64 categorical codes and (B, D)
        standardized continuous values (:class:`~scvae.nn.Covariates`), or None for a model
        without them.
    """

    x: torch.Tensor | None
    batch_index: torch.Tensor
    nz: NonZeros | None
    labels: torch.Tensor | None = None
    covariates: Covariates | None = None

    @classmethod
    def from_dense(
        cls,
        x: torch.Tensor,
        batch_index: torch.Tensor,
        *,
        nonzeros: bool = True,
        covariates: Covariates | None = None,
    ) -> Minibatch:
        """A minibatch of dense counts (B, G); ``nonzeros=False`` selects the dense likelihood."""
        nz = NonZeros.from_dense(x) if nonzeros else None
        return cls(x=x, batch_index=batch_index, nz=nz, covariates=covariates)

    @property
    def n_cells(self) -> int:
        """``B``, the number of cells."""
        return self.batch_index.shape[0]

    @property
    def device(self) -> torch.device:
        """Where the tensors live."""
        return self.batch_index.device

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> Minibatch:
        """The same minibatch with every tensor on ``device``."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        nz = self.nz
        moved = None if nz is None else NonZeros(
            move(nz.row), move(nz.col), move(nz.x), move(nz.log_x_factorial), nz.n_cells,
            move(nz.offsets),
        )  # fmt: skip
        return dataclasses.replace(
            self,
            x=move(self.x),
            batch_index=move(self.batch_index),
            nz=moved,
            labels=move(self.labels),
            covariates=None
            if self.covariates is None
            else self.covariates.to(device, non_blocking=non_blocking),
        )


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
    labels
        (N,) int64 label codes of every cell of ``data`` (-1: unlabelled), sliced into
        :attr:`Minibatch.labels`; None takes ``data.labels`` when ``data`` has that attribute
        (the semi-supervised model's cells, :class:`~scvae.models._ssvae.LabelledCellData`),
        else the minibatches have no labels (``labels=None``), as before.
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
        labels: np.ndarray | None = None,
    ) -> None:
        X = data.X
        self.data = data  # the validated cells (shared, not copied)
        self.n_genes = X.shape[1]
        # the loaders share the validated CSR's memory on the CPU (no copy per loader)
        self.crow = torch.from_numpy(X.indptr.astype(np.int64, copy=False))  # (N+1,)
        self.col = torch.from_numpy(X.indices.astype(np.int32, copy=False))  # (nnz,) int32
        self.val = torch.from_numpy(X.data.astype(np.float32, copy=False))  # (nnz,)
        self.batch_index = torch.from_numpy(data.batch_index)  # (N,)
        self.categorical = _optional_tensor(data.categorical_covariates)  # (N, C) int64
        self.continuous = _optional_tensor(data.continuous_covariates)  # (N, D) float32
        self.log_x_factorial = torch.from_numpy(data.log_x_factorial)  # (N,) computed once
        if labels is None:
            labels = getattr(data, "labels", None)
        self.labels = None if labels is None else _labels_tensor(labels, X.shape[0])  # (N,)
        self.indices = torch.as_tensor(np.asarray(indices, dtype=np.int64))  # (n,)
        self.batch_size = batch_size
        self.shuffle = shuffle
        # only a last minibatch of fewer than 3 cells is dropped: BatchNorm needs 2, and a
        # cell or two would make one noisy step; larger remainders are real training signal
        n, rest = len(self.indices), len(self.indices) % batch_size
        self.drop_last = drop_last and 0 < rest < 3 and (n > 3 or rest == 1 < n)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.device = torch.device("cpu")  # where minibatches are served
        self.dense = dense
        # host copies of the row pointers and positions: each epoch's minibatch sizes in
        # non-zeros are known on the host, so a gather on a GPU never waits for the device
        self._host_crow = self.crow.numpy()
        self._host_indices = self.indices.numpy()
        self._n_serve: int | None = None  # cells served per epoch (None: every cell)
        self._n_batches: int | None = None  # fixed number of minibatches (a validation shard)
        self.drop_last_requested = drop_last
        self.shard_of: tuple[int, int] = (0, 1)  # (rank, world size)
        self.cells = self._host_indices  # positions in ``data`` of the cells held

    _STORAGE = ("crow", "col", "val", "batch_index", "log_x_factorial", "indices")
    #: stored only for a model with covariates beyond the batch (None otherwise)
    _OPTIONAL_STORAGE = ("categorical", "continuous", "labels")

    def _stored(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self._STORAGE + self._OPTIONAL_STORAGE:
            tensor = getattr(self, name)
            if tensor is not None:
                yield name, tensor

    @property
    def nbytes(self) -> int:
        """Bytes of the stored counts and per-cell vectors."""
        return sum(t.element_size() * t.numel() for _, t in self._stored())

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
        for name, tensor in list(self._stored()):
            tensor = tensor.to(storage)
            if storage.type == "cpu" and device.type == "cuda":
                tensor = tensor.pin_memory()
            setattr(self, name, tensor)
        self.device = device
        return self

    def shard(self, rank: int, world_size: int) -> CSRMinibatches:
        """Keep only this rank's disjoint share of the cells, for distributed training.

        The cells ``indices[rank::world_size]`` stay; the ranks' shards are disjoint and
        cover every cell, and the counts of the other ranks' cells are dropped from this
        loader (each process holds only its shard on its device). A shuffled loader serves
        ``len(indices) // world_size`` cells of its shard per epoch, so that every rank takes
        the same number of optimizer steps (a rank with one cell more leaves out a different
        one each epoch); its generator is seeded with ``seed + rank``. A loader in order
        (validation) serves all its cells in the same number of minibatches on every rank,
        so that no rank waits for another in a collective.

        Parameters
        ----------
        rank
            This process's global rank, in ``[0, world_size)``.
        world_size
            The number of processes.

        Returns
        -------
        ``self``, restricted to its shard.
        """
        n_all = len(self._host_indices)
        n_batches = shard_batches(n_all, rank, world_size, self.batch_size, self.shard_of)
        keep = np.sort(self._host_indices[rank::world_size])
        self._restrict(keep)
        self.shard_of = (rank, world_size)
        if self.shuffle:
            self._n_serve = n_all // world_size
            rest = self._n_serve % self.batch_size
            self.drop_last = self.drop_last_requested and 0 < rest < 3 and self._n_serve > 3
            self.generator = torch.Generator().manual_seed(self.seed + rank)
        else:  # the same number of minibatches on every rank
            self._n_batches = n_batches
        return self

    def _restrict(self, keep: np.ndarray) -> None:
        """Hold only the cells at positions ``keep`` (sorted), renumbered ``0..len(keep)-1``."""
        device = self.crow.device
        crow = self._host_crow
        starts, stops = crow[keep], crow[keep + 1]
        lengths = stops - starts
        take = np.repeat(stops - np.cumsum(lengths), lengths) + np.arange(lengths.sum())
        self._host_crow = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.crow = torch.from_numpy(self._host_crow).to(device)
        take_t = torch.from_numpy(take).to(self.col.device)
        self.col, self.val = self.col[take_t], self.val[take_t]
        keep_t = torch.from_numpy(keep)
        for name in ("batch_index", "log_x_factorial", *self._OPTIONAL_STORAGE):
            tensor = getattr(self, name)
            if tensor is not None:
                setattr(self, name, tensor[keep_t.to(tensor.device)])
        self._host_indices = np.arange(len(keep), dtype=np.int64)
        self.indices = torch.from_numpy(self._host_indices).to(self.indices.device)
        self.cells = keep  # positions in ``data`` of the cells this loader holds

    @property
    def n_cells_per_epoch(self) -> int:
        """Cells served by one pass (all of them unless a tiny last minibatch is dropped, or
        a training shard's equal share)."""
        n = self._n_serve if self._n_serve is not None else len(self.indices)
        return n - n % self.batch_size if self.drop_last else n

    def __len__(self) -> int:
        if self._n_batches is not None:
            return self._n_batches
        n = self._n_serve if self._n_serve is not None else len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def gather(self, rows: torch.Tensor, nnz: int | None = None) -> Minibatch:
        """The minibatch of the cells at ``rows``: dense counts (B, G) (None unless ``dense``),
        batch codes (B,), the non-zeros, the labels and the covariates (None without).

        ``nnz``, the minibatch's number of non-zeros when the caller knows it (iteration
        computes it on the host), spares a GPU the wait for that size.
        """
        start = self.crow[rows]  # (B,)
        n_nz = self.crow[rows + 1] - start  # (B,)
        if nnz is None:
            nnz = int(n_nz.sum())  # a device sync: only when the caller does not know it
        row_of_nz = torch.repeat_interleave(
            torch.arange(len(rows), device=rows.device), n_nz, output_size=nnz
        )  # (nnz_B,)
        first_nz = torch.cumsum(n_nz, 0) - n_nz  # (B,) exclusive prefix sum
        position = (
            torch.arange(nnz, device=rows.device) - first_nz[row_of_nz] + start[row_of_nz]
        )  # (nnz_B,) positions in col/val
        col, val = self.col[position].long(), self.val[position]  # (nnz_B,)
        x = None
        if self.dense:
            x = torch.zeros(len(rows), self.n_genes, device=rows.device)  # (B, G)
            x[row_of_nz, col] = val
        nz = NonZeros(row_of_nz, col, val, self.log_x_factorial[rows], len(rows), first_nz)
        covariates = None
        if self.categorical is not None or self.continuous is not None:
            covariates = Covariates(
                None if self.categorical is None else self.categorical[rows],
                None if self.continuous is None else self.continuous[rows],
            )  # (B, C), (B, D)
        labels = None if self.labels is None else self.labels[rows]  # (B,)
        return Minibatch(
            x=x, batch_index=self.batch_index[rows], nz=nz, labels=labels, covariates=covariates
        )

    def _epoch_order(self) -> tuple[np.ndarray, np.ndarray]:
        """This epoch's cells in serving order and the bounds of its minibatches (host)."""
        order = self._host_indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator).numpy()]
        if self._n_serve is not None:
            order = order[: self._n_serve]
        n_batches = len(self)
        if self._n_batches is not None:  # equal numbers of minibatches across ranks
            bounds = np.linspace(0, len(order), n_batches + 1).round().astype(np.int64)
        else:
            bounds = np.minimum(np.arange(n_batches + 1) * self.batch_size, len(order))
        return order, bounds

    def __iter__(self) -> Iterator[Minibatch]:
        order, bounds = self._epoch_order()
        crow = self._host_crow
        nnz = np.concatenate([[0], np.cumsum(crow[order + 1] - crow[order])])[bounds]  # host
        rows = torch.from_numpy(order).to(self.indices.device, non_blocking=True)
        streaming = rows.device != self.device
        for b in range(len(bounds) - 1):
            batch = self.gather(rows[bounds[b] : bounds[b + 1]], int(nnz[b + 1] - nnz[b]))
            yield batch.to(self.device, non_blocking=True) if streaming else batch


def shard_batches(
    n_cells: int, rank: int, world_size: int, batch_size: int, shard_of: tuple[int, int]
) -> int:
    """Check a request to shard a loader; return the minibatches of an in-order shard.

    Every rank's in-order (validation) shard is served in this many minibatches, that of the
    largest shard (but never more than the smallest shard's cells), so that no rank waits for
    another in a collective.

    Parameters
    ----------
    n_cells
        Cells of the loader before sharding.
    rank, world_size
        The process's global rank and the number of processes.
    batch_size
        Cells per minibatch.
    shard_of
        The loader's current ``(rank, world_size)``; ``(0, 1)`` when it is not a shard.

    Raises
    ------
    ValueError
        A rank outside ``[0, world_size)``, or fewer cells than processes.
    RuntimeError
        The loader is a shard already.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}.")
    if shard_of != (0, 1):
        raise RuntimeError(f"This loader is already a shard {shard_of}.")
    if n_cells < world_size:
        raise ValueError(
            f"{n_cells} cells cannot be shared by {world_size} processes: each needs at "
            "least one; use fewer devices."
        )
    largest = -(-n_cells // world_size)
    return max(1, min(-(-largest // batch_size), n_cells // world_size))


def _optional_tensor(array: np.ndarray | None) -> torch.Tensor | None:
    """A tensor sharing ``array``'s memory, or None."""
    return None if array is None else torch.from_numpy(np.ascontiguousarray(array))


def _labels_tensor(labels: np.ndarray, n_cells: int) -> torch.Tensor:
    """(N,) int64 label codes as a tensor, checked against the number of cells."""
    codes = np.asarray(labels)
    if codes.shape != (n_cells,) or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(
            f"labels must be ({n_cells},) integer codes (-1: unlabelled), got shape "
            f"{codes.shape} and dtype {codes.dtype}."
        )
    return torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64))
