"""Counts larger than memory: an AnnData backed on disk, read in contiguous row blocks.

``anndata.read_h5ad(path, backed="r")`` keeps the count matrix in the file.
:func:`read_backed_counts` validates it block by block (the checks and messages of the
in-memory path) and keeps only per-cell vectors in memory (library size,
``log_x_factorial``: N numbers each);
:class:`BackedCounts` stands for the matrix. :class:`BlockMinibatches` serves minibatches the way
annbatch and scDataset do: each epoch the cells' contiguous row blocks are visited in a seeded
random order, a buffer of a few blocks is read (in a background thread, while the previous
buffer is consumed), its cells are shuffled within the buffer and gathered into minibatches by
:class:`~scvae.minibatch.CSRMinibatches` on the buffer. Memory is bounded by the buffer, not the
number of cells. :func:`minibatches` picks the loader for any :class:`~scvae.data.CellData`.

Why not a loader library: annbatch needs Python >= 3.12 and scvae supports 3.10 and 3.11;
scDataset (0.3) yields user-transformed batches through a torch ``DataLoader``, while every
scvae loader serves :class:`~scvae.minibatch.Minibatch` objects gathered from a CSR (the
sparse likelihoods read the non-zeros) with a checkpointed ``torch.Generator``. The scheme is a
hundred lines on top of anndata's backed sparse datasets (``X[start:stop]`` reads one row block
as a scipy CSR through h5py), so it is built here. Zarr stores are not supported: anndata has no
backed mode for them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData

from scvae.data import CellData, _check_cells, _check_values, _listing, _to_csr
from scvae.minibatch import CSRMinibatches, Minibatch, shard_batches

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_BUFFER_BLOCKS",
    "BackedCellData",
    "BackedCounts",
    "BlockMinibatches",
    "is_backed",
    "minibatches",
    "read_backed_counts",
]

#: Rows of the file read at once (one contiguous block).
DEFAULT_BLOCK_SIZE = 4096
#: Blocks per shuffle buffer: memory is about ``prefetch + 2`` buffers of counts.
DEFAULT_BUFFER_BLOCKS = 4
#: Rows per read while validating a backed matrix.
_VALIDATION_ROWS = 16384
#: At most this many suspicious values (NaN, negative, fractional) are kept to word the error.
_MAX_SUSPECTS = 2**24

_IN_MEMORY_HINT = (
    "Load the AnnData into memory first: adata = adata.to_memory() (or subset it on disk)."
)


def _unsupported(what: str) -> str:
    return f"{what} is not supported for an AnnData backed on disk. {_IN_MEMORY_HINT}"


class BackedCounts:
    """An (N, G) count matrix that stays in the file of a backed AnnData.

    Only :attr:`shape`, :attr:`nnz`, the per-cell vectors and :meth:`read` are available;
    anything that needs the whole matrix in memory raises an ``AttributeError`` saying so.

    Parameters
    ----------
    matrix
        ``adata.X`` (or a layer) of a backed AnnData: anndata's backed CSR dataset, an h5py
        dense dataset, or anything whose ``matrix[start:stop]`` is a scipy sparse matrix or a
        numpy array.
    where
        How messages name the matrix (``"adata.X"``).
    row_nnz
        (N,) stored values of each row after canonicalization.
    log_x_factorial
        (N,) float32 ``sum_g lgamma(x_g + 1)`` of each cell.
    reopen
        Returns the matrix again (``adata.X`` of the same AnnData, which anndata reopens):
        used when a read fails because the file was closed under us, as anndata does to
        the whole AnnData when a view of it is loaded (``adata[cells].to_memory()``).
    """

    def __init__(
        self,
        matrix: Any,
        *,
        where: str,
        row_nnz: np.ndarray,
        log_x_factorial: np.ndarray,
        reopen: Callable[[], Any] | None = None,
    ) -> None:
        self._matrix = matrix
        self._reopen = reopen
        self.where = where
        self.shape: tuple[int, int] = (int(matrix.shape[0]), int(matrix.shape[1]))
        self.row_nnz = row_nnz
        self.log_x_factorial = log_x_factorial
        self.nnz = int(row_nnz.sum())

    def read(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` as one canonical float32 CSR (see :func:`scvae.data._to_csr`)."""
        try:
            rows = self._matrix[start:stop]
        except Exception:  # e.g. h5py's "invalid identifier" once the file was closed
            if self._reopen is None:
                raise
            self._matrix = self._reopen()  # once: a second failure is a real one
            rows = self._matrix[start:stop]
        return _to_csr(rows)

    def fingerprint_arrays(self) -> tuple[np.ndarray, ...]:
        """What identifies these counts for a checkpoint (no read of the matrix)."""
        return (np.asarray(self.shape), self.row_nnz, self.log_x_factorial)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_matrix", "_reopen", "row_nnz", "log_x_factorial"):
            raise AttributeError(name)
        raise AttributeError(
            f"The counts ({self.__dict__.get('where', 'adata.X')}) of a backed AnnData stay on "
            f"disk and have no {name!r}: this operation needs them in memory. {_IN_MEMORY_HINT}"
        )

    def __repr__(self) -> str:
        return f"BackedCounts({self.where}, shape={self.shape}, nnz={self.nnz})"


@dataclass
class BackedCellData(CellData):
    """:class:`~scvae.data.CellData` whose ``X`` is a :class:`BackedCounts` (on disk)."""

    X: BackedCounts  # type: ignore[assignment]

    @property  # type: ignore[override]
    def log_x_factorial(self) -> np.ndarray:
        """(N,) float32, computed while the counts were validated."""
        return self.X.log_x_factorial


@dataclass
class _BufferCells(CellData):
    """The cells of one shuffle buffer, in memory, with their precomputed ``log_x_factorial``."""

    precomputed_log_x_factorial: np.ndarray | None = None

    @property  # type: ignore[override]
    def log_x_factorial(self) -> np.ndarray:
        return self.precomputed_log_x_factorial


def is_backed(data: CellData) -> bool:
    """Whether ``data``'s counts stay on disk (:class:`BackedCounts`)."""
    return isinstance(data.X, BackedCounts)


def _backed_matrix(adata: AnnData, layer: str | None) -> tuple[Any, str]:
    """The matrix to read from a backed AnnData and how messages name it."""
    if adata.is_view:
        raise ValueError(
            "adata is a view of an AnnData backed on disk. Pass the backed AnnData itself, or "
            "load the view into memory: adata = adata.to_memory()."
        )
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"adata is empty ({adata.n_obs} cells x {adata.n_vars} genes).")
    if layer is None:
        matrix, where = adata.X, "adata.X"
        if matrix is None:
            raise ValueError(
                "adata.X is None. Put the raw counts in adata.X or pass layer=<name of the "
                f"counts layer>; layers present: {_listing(list(adata.layers.keys())) or 'none'}."
            )
    else:
        if layer not in adata.layers:
            raise KeyError(
                f"layer={layer!r} is not in adata.layers. Layers present: "
                f"{_listing(list(adata.layers.keys())) or 'none'}; use layer=None for adata.X."
            )
        matrix, where = adata.layers[layer], f"adata.layers[{layer!r}]"
    from anndata.abc import CSCDataset

    if isinstance(matrix, CSCDataset) or (sp.issparse(matrix) and matrix.format != "csr"):
        raise ValueError(
            f"{where} is stored as CSC (or another non-CSR format) in the file: its rows cannot "
            "be read in blocks. Rewrite the file with CSR counts (adata.X = "
            f"scipy.sparse.csr_matrix(adata.X) in memory, then write_h5ad), or {_IN_MEMORY_HINT}"
        )
    if not hasattr(matrix, "shape") or len(matrix.shape) != 2:
        raise TypeError(f"{where} of the backed AnnData is not a 2-D matrix: {type(matrix)}.")
    return matrix, where


def read_backed_counts(
    adata: AnnData,
    layer: str | None,
    *,
    counts: bool,
    nonnegative: bool,
    rows_per_read: int = _VALIDATION_ROWS,
) -> tuple[BackedCounts, np.ndarray]:
    """Validate the counts of a backed AnnData block by block, without loading them.

    The values and cells are checked as :func:`scvae.data.read_training_data` checks an
    in-memory matrix, with the same messages (the counts of bad values are over the whole
    matrix, up to :data:`_MAX_SUSPECTS` of them).

    Parameters
    ----------
    adata
        A backed AnnData (``read_h5ad(path, backed="r")``), not a view.
    layer
        Layer holding the counts, or None for ``adata.X``.
    counts, nonnegative
        As in :func:`scvae.data.read_training_data`.
    rows_per_read
        Rows read at once.

    Returns
    -------
    BackedCounts
        The matrix, with its per-cell vectors.
    numpy.ndarray
        (N,) library sizes (total counts; ones when ``counts`` is False).

    Raises
    ------
    ValueError
        A view, a CSC matrix, NaN/inf, negative or (for counts) non-integer values, empty
        cells.
    """
    matrix, where = _backed_matrix(adata, layer)
    n_cells = int(matrix.shape[0])
    nonnegative = nonnegative or counts
    totals, row_nnz, log_x_factorial = [], [], []
    suspects: list[np.ndarray] = []
    n_suspects = 0
    for start in range(0, n_cells, rows_per_read):
        block = _to_csr(matrix[start : min(start + rows_per_read, n_cells)])
        values = block.data
        bad = ~np.isfinite(values)
        if nonnegative:
            bad |= values < 0
        if counts:
            bad |= values != np.round(values)
        if bad.any() and n_suspects < _MAX_SUSPECTS:
            suspects.append(values[bad][: _MAX_SUSPECTS - n_suspects])
            n_suspects += len(suspects[-1])
        totals.append(np.asarray(block.sum(axis=1)).ravel())
        row_nnz.append(np.diff(block.indptr).astype(np.int32))
        log_x_factorial.append(
            CellData(X=block, batch_index=None, library_size=None).log_x_factorial
        )
    if suspects:  # the in-memory check on the bad values alone words the same error
        values = np.concatenate(suspects)
        _check_values(
            sp.csr_matrix(
                (values, np.arange(len(values)), [0, len(values)]), shape=(1, len(values))
            ),
            where=where,
            counts=counts,
            nonnegative=nonnegative,
        )
    library_size = np.concatenate(totals)
    if counts:
        _check_cells(sp.csr_matrix(library_size[:, None]), where=where)
    else:
        library_size = np.ones(n_cells)
    X = BackedCounts(
        matrix,
        where=where,
        row_nnz=np.concatenate(row_nnz),
        log_x_factorial=np.concatenate(log_x_factorial).astype(np.float32, copy=False),
        reopen=lambda: _backed_matrix(adata, layer)[0],
    )
    return X, library_size


# ------------------------------------------------------------------------------ the loader
class _Failure:
    """An exception raised in the reader thread, carried to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


class BlockMinibatches:
    """Minibatches of backed cells: contiguous row blocks, shuffled within a buffer.

    Each epoch the cells of ``indices`` (sorted positions give contiguous reads) are cut into
    blocks of ``block_size`` consecutive cells, visited in a random order drawn from
    :attr:`generator` (in order without ``shuffle``). The visited cells are grouped into
    buffers of ``buffer_blocks * block_size`` cells (rounded down to whole minibatches); a
    background thread reads each buffer from disk while the previous one is consumed (a
    bounded ``queue.Queue`` of ``prefetch`` buffers), the buffer's cells are shuffled within it
    and served by :class:`~scvae.minibatch.CSRMinibatches` over the buffer. At most
    ``prefetch + 2`` buffers are in memory; the dense (B, G) counts are only ever built for one
    minibatch. Without ``shuffle`` the minibatches are exactly those of
    ``CSRMinibatches(shuffle=False)`` on the same cells in memory.

    Parameters
    ----------
    data
        Backed cells (:func:`read_backed_counts`).
    indices, batch_size, shuffle, drop_last, seed, dense, labels
        As in :class:`~scvae.minibatch.CSRMinibatches`.
    block_size
        Cells per contiguous block read from the file.
    buffer_blocks
        Blocks per shuffle buffer (more: better mixing, more memory).
    prefetch
        Buffers read ahead by the background thread.
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
        block_size: int = DEFAULT_BLOCK_SIZE,
        buffer_blocks: int = DEFAULT_BUFFER_BLOCKS,
        prefetch: int = 1,
    ) -> None:
        if not is_backed(data):
            raise TypeError("BlockMinibatches reads backed cells; use CSRMinibatches in memory.")
        for name, value in (
            ("batch_size", batch_size),
            ("block_size", block_size),
            ("buffer_blocks", buffer_blocks),
            ("prefetch", prefetch),
        ):
            if not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        self.data = data
        self._all_indices = np.asarray(indices, dtype=np.int64)  # (n,)
        self.indices = self._all_indices
        if labels is None:
            labels = getattr(data, "labels", None)
        self.labels = None if labels is None else np.asarray(labels)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.block_size = int(block_size)
        self.buffer_blocks = int(buffer_blocks)
        self.prefetch = int(prefetch)
        self.generator = torch.Generator().manual_seed(seed)
        self.device = torch.device("cpu")
        self.dense = dense
        self.resident = True
        self._drop_last_option = drop_last
        self.shard_of: tuple[int, int] = (0, 1)  # (rank, world size)
        self._n_batches: int | None = None  # fixed number of minibatches (a validation shard)
        self._set_count(len(self.indices))
        #: the most cells and stored values one buffer has held (for tests and benchmarks)
        self.peak_buffer_cells = 0
        self.peak_buffer_nnz = 0

    def _set_count(self, n: int) -> None:
        """Serve ``n`` cells per epoch; the drop_last rule of CSRMinibatches on that count."""
        self._n_served = n
        rest = n % self.batch_size
        self.drop_last = self._drop_last_option and 0 < rest < 3 and (n > 3 or rest == 1 < n)
        if self.shard_of != (0, 1):
            self.drop_last = self._drop_last_option and 0 < rest < 3 and n > 3

    @property
    def cells_per_buffer(self) -> int:
        """Cells of a full buffer: ``buffer_blocks * block_size`` in whole minibatches."""
        cells = self.buffer_blocks * self.block_size
        return max(self.batch_size, cells - cells % self.batch_size)

    def shard(self, rank: int, world_size: int) -> BlockMinibatches:
        """Keep only this rank's share ``indices[rank::world_size]``, for distributed training.

        The semantics of :meth:`scvae.minibatch.CSRMinibatches.shard`, except that each
        shard is a contiguous run of the cells (so that a rank reads only its own blocks of
        the file, not every ``world_size``-th row of all of them): the shards are disjoint and
        cover every cell; a shuffled loader serves ``len(indices) // world_size``
        cells of its shard per epoch (every rank takes the same number of steps; drop_last is
        recomputed on that count) and its generator is reseeded with ``seed + rank``; a loader
        in order serves all its cells in the same number of minibatches on every rank.

        Returns
        -------
        ``self``, restricted to its shard.
        """
        n_all = len(self._all_indices)
        n_batches = shard_batches(n_all, rank, world_size, self.batch_size, self.shard_of)
        # contiguous shards: each rank reads its own rows of the file, none reads the others'
        self.indices = np.array_split(self._all_indices, world_size)[rank]
        self.shard_of = (rank, world_size)
        self.generator = torch.Generator().manual_seed(self.seed + rank)
        if self.shuffle:
            self._set_count(n_all // world_size)
        else:  # the same number of minibatches on every rank
            self._n_batches = n_batches
        return self

    def to(self, device: torch.device | str, *, resident: bool | None = None) -> BlockMinibatches:
        """Serve minibatches on ``device``.

        The counts stay on disk whatever ``resident`` says; with ``resident`` (None: True) each
        buffer is copied to ``device`` and minibatches are gathered there, else they are
        gathered on the host and copied one by one.
        """
        self.device = torch.device(device)
        self.resident = resident is None or resident
        return self

    @property
    def cells(self) -> np.ndarray:
        """Positions in ``data`` of the cells this loader serves (its shard under DDP), as
        :attr:`scvae.minibatch.CSRMinibatches.cells`."""
        return self.indices

    @property
    def n_cells_per_epoch(self) -> int:
        """Cells served by one pass."""
        if self._n_batches is not None:
            return len(self.indices)
        n = self._n_served
        return n - n % self.batch_size if self.drop_last else n

    def __len__(self) -> int:
        if self._n_batches is not None:
            return self._n_batches
        n = self._n_served
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    # -------------------------------------------------------------------------- one epoch
    def _epoch_plan(self) -> list[tuple[np.ndarray, int | None, np.ndarray]]:
        """Each buffer of the epoch: its cells' positions (into :attr:`indices`), its shuffle
        seed (None: in order) and the bounds of its minibatches.

        Drawn in the consumer's thread, so :attr:`generator` advances the same way however the
        reader is scheduled.
        """
        n = len(self.indices)
        starts = np.arange(0, n, self.block_size)
        if self.shuffle:
            starts = starts[torch.randperm(len(starts), generator=self.generator).numpy()]
        blocks = [np.arange(s, min(s + self.block_size, n)) for s in starts]
        stream = np.concatenate([np.empty(0, np.int64), *blocks])  # positions, visiting order
        stream = stream[: self.n_cells_per_epoch]  # (n_served,)
        n_batches = len(self)
        if self._n_batches is not None:  # equal numbers of minibatches across ranks
            bounds = np.linspace(0, len(stream), n_batches + 1).round().astype(np.int64)
        else:
            bounds = np.minimum(np.arange(n_batches + 1) * self.batch_size, len(stream))
        plan, first = [], 0  # whole minibatches per buffer, at most cells_per_buffer cells
        while first < n_batches:
            last = first + 1
            while last < n_batches and bounds[last + 1] - bounds[first] <= self.cells_per_buffer:
                last += 1
            plan.append((stream[bounds[first] : bounds[last]], bounds[first : last + 1]))
            first = last
        seeds: list[int | None] = [None] * len(plan)
        if self.shuffle:
            seeds = torch.randint(0, 2**62, (len(plan),), generator=self.generator).tolist()
        return [
            (positions, seed, local - local[0])
            for (positions, local), seed in zip(plan, seeds, strict=True)
        ]

    def _read_buffer(
        self, positions: np.ndarray, seed: int | None, bounds: np.ndarray
    ) -> tuple[CSRMinibatches, np.ndarray]:
        """Read one buffer's cells (one contiguous read per run of a block): its loader over
        them (in their served order) and the bounds of its minibatches."""
        rows = self.indices[positions]  # (M,) rows of the file
        block_of = positions // self.block_size
        cuts = np.flatnonzero(np.diff(block_of)) + 1
        pieces = []
        for run in np.split(rows, cuts):
            first, last = int(run.min()), int(run.max()) + 1
            piece = self.data.X.read(first, last)
            if len(run) != last - first or not np.all(np.diff(run) == 1):
                piece = piece[run - first]
            pieces.append(piece)
        X = pieces[0] if len(pieces) == 1 else sp.vstack(pieces, format="csr")
        X = sp.csr_matrix(X)
        X.has_canonical_format = True
        data = self.data
        cells = _BufferCells(
            X=X,
            batch_index=data.batch_index[rows],
            library_size=data.library_size[rows],
            categorical_covariates=None
            if data.categorical_covariates is None
            else data.categorical_covariates[rows],
            continuous_covariates=None
            if data.continuous_covariates is None
            else data.continuous_covariates[rows],
            precomputed_log_x_factorial=data.X.log_x_factorial[rows],
        )
        order = np.arange(len(rows))
        if seed is not None:
            order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
            order = order.numpy()
        loader = CSRMinibatches(
            cells,
            order,
            batch_size=self.batch_size,
            shuffle=False,
            dense=self.dense,
            labels=None if self.labels is None else self.labels[rows],
        )
        self.peak_buffer_cells = max(self.peak_buffer_cells, X.shape[0])
        self.peak_buffer_nnz = max(self.peak_buffer_nnz, X.nnz)
        return loader.to(self.device, resident=self.resident), bounds

    def _produce(
        self,
        plan: list[tuple[np.ndarray, int | None, np.ndarray]],
        out: queue.Queue,
        stop: threading.Event,
    ) -> None:
        """The reader thread: every buffer of the epoch into ``out``, then :data:`_DONE`."""

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for buffer in plan:
                if stop.is_set() or not put(self._read_buffer(*buffer)):
                    return
            put(_DONE)
        except BaseException as error:  # carried to the consumer, raised there
            put(_Failure(error))

    def __iter__(self) -> Iterator[Minibatch]:
        plan = self._epoch_plan()
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        reader = threading.Thread(
            target=self._produce, args=(plan, out, stop), name="scvae-block-reader", daemon=True
        )
        reader.start()
        try:
            n_left = len(self)
            while n_left > 0:
                item = out.get()
                if item is _DONE:
                    break
                if isinstance(item, _Failure):
                    raise item.error
                loader, bounds = item
                del item
                rows, order, crow = loader.indices, loader._host_indices, loader._host_crow
                # each minibatch's non-zeros counted on the host: no device sync per gather
                nnz = np.concatenate([[0], np.cumsum(crow[order + 1] - crow[order])])[bounds]
                streaming = rows.device != self.device
                for b in range(len(bounds) - 1):
                    batch = loader.gather(rows[bounds[b] : bounds[b + 1]], int(nnz[b + 1] - nnz[b]))
                    yield batch.to(self.device, non_blocking=True) if streaming else batch
                    n_left -= 1
                del loader, rows
        finally:
            stop.set()
            while reader.is_alive():
                try:
                    out.get_nowait()
                except queue.Empty:
                    reader.join(timeout=0.05)


def minibatches(
    data: CellData, indices: np.ndarray, **kwargs: Any
) -> CSRMinibatches | BlockMinibatches:
    """The loader for ``data``: :class:`~scvae.minibatch.CSRMinibatches` in memory,
    :class:`BlockMinibatches` for backed cells; the same arguments and interface.

    The block options (``block_size``, ``buffer_blocks``, ``prefetch``) apply to backed cells
    only and are ignored in memory.
    """
    if is_backed(data):
        return BlockMinibatches(data, indices, **kwargs)
    for name in ("block_size", "buffer_blocks", "prefetch"):
        kwargs.pop(name, None)
    return CSRMinibatches(data, indices, **kwargs)
