"""The AnnData boundary: every read of a user's AnnData and every slot name written into it.

Counts go through :func:`read_training_data` or :func:`read_query_data` (with the batch and
any further covariates: categorical ``obs`` columns as codes, continuous ones standardized by
the training mean and standard deviation, :class:`CovariateSetup`) or, for a query mapped onto
a reference (scArches), :func:`read_mapping_data` (genes aligned to the reference's by name,
new batches and categories appended; :data:`MIN_GENE_OVERLAP`, :data:`WARN_GENE_OVERLAP`),
embeddings through
:func:`read_embedding`, ``obs`` columns through :func:`read_obs_column`. They only read: the
AnnData is never modified, no column is added, and the count matrix is never densified as a
whole (it becomes a canonical float32 CSR: no stored zeros, no duplicates, sorted indices, so
the representation of the input never changes a result; a CSR that is canonical already is
shared, read-only, not copied, see :func:`_to_csr`). Writers call
:func:`check_writable` first and take their slot names from :func:`latent_slots` or
:func:`cluster_slots`. The validated :class:`CellData` is served as minibatches by
:mod:`scvae.minibatch`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from scipy.special import gammaln

__all__ = [
    "MIN_GENE_OVERLAP",
    "WARN_GENE_OVERLAP",
    "CellData",
    "CovariateSetup",
    "DataSetup",
    "GeneOverlap",
    "check_in_memory",
    "check_writable",
    "cluster_slots",
    "latent_slots",
    "library_log_prior",
    "log_normalize",
    "read_embedding",
    "read_mapping_data",
    "read_obs_column",
    "read_query_data",
    "read_training_data",
]

_MAX_LISTED = 10

#: Mapping a query (``map_query``): the smallest fraction of the reference's genes the query
#: must have; below it the mapping is refused (the missing genes would be read as zeros in
#: most of the model's input and likelihood).
MIN_GENE_OVERLAP = 0.5
#: Below this fraction of the reference's genes present in the query, mapping warns (as
#: scvi-tools' ``prepare_query_anndata`` does below 0.8).
WARN_GENE_OVERLAP = 0.8


def _listing(items: Sequence[object]) -> str:
    items = [str(i) for i in items]
    shown = ", ".join(repr(i) for i in items[:_MAX_LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _MAX_LISTED else "")


# ------------------------------------------------------------------------ checks and slot names
_VIEW_MESSAGE = (
    "adata is a view; writing to it would silently copy it. Write to the full AnnData, or make "
    "the view a real object first: adata = adata.copy()."
)
_BACKED_MESSAGE = (
    "adata is backed on disk; load it into memory first with adata = adata.to_memory()."
)


def _check_anndata(adata: object, name: str = "adata") -> None:
    if not isinstance(adata, AnnData):
        raise TypeError(f"{name} must be an AnnData, got {type(adata).__name__}.")


def check_in_memory(adata: AnnData) -> None:
    """Refuse anything but an in-memory AnnData.

    Parameters
    ----------
    adata
        The AnnData about to be read.

    Raises
    ------
    TypeError
        ``adata`` is not an AnnData.
    ValueError
        ``adata`` is backed on disk (``sc.read_h5ad(..., backed="r")``).
    """
    _check_anndata(adata)
    if adata.isbacked:
        raise ValueError(_BACKED_MESSAGE)


def check_writable(adata: AnnData, *, copy_option: bool = False) -> None:
    """Refuse to write results into a view (anndata would silently turn it into a copy).

    Every writer (``write_latent``, ``tl.*``) calls this before computing anything, so that
    nothing is written if it raises.

    Parameters
    ----------
    adata
        The AnnData about to be written into.
    copy_option
        The caller has a ``copy`` argument: the message also suggests ``copy=True``.

    Raises
    ------
    TypeError
        ``adata`` is not an AnnData.
    ValueError
        ``adata`` is a view.
    """
    _check_anndata(adata)
    if adata.is_view:
        raise ValueError(_VIEW_MESSAGE + (" Or pass copy=True." if copy_option else ""))


def _check_key(key_added: object, default: str) -> str:
    key = default if key_added is None else key_added
    if not isinstance(key, str) or not key:
        raise ValueError(f"key_added must be a non-empty string or None, got {key_added!r}.")
    return key


def latent_slots(key_added: str | None, default: str) -> tuple[str, str]:
    """The ``obsm`` and ``uns`` keys an embedding is written to, the way scanpy names them.

    ``key_added`` (or ``default`` when None) names the result; the embedding goes to
    ``obsm["X_<name>"]`` and the record to ``uns[<name>]``. A name that already starts with
    ``"X_"`` is taken as the ``obsm`` key itself: ``key_added="X_scvi"`` writes
    ``obsm["X_scvi"]`` and ``uns["scvi"]``, never ``obsm["X_X_scvi"]``.

    Parameters
    ----------
    key_added
        The user's ``key_added``, or None.
    default
        The model's default name (``"zinbvae"``, ``"ppca"``, ...).

    Returns
    -------
    obsm_key, uns_key

    Raises
    ------
    ValueError
        ``key_added`` is not a non-empty string (or ``"X_"`` alone).

    Examples
    --------
    >>> latent_slots(None, "ppca")
    ('X_ppca', 'ppca')
    >>> latent_slots("X_scvi", "zinbvae")
    ('X_scvi', 'scvi')
    """
    key = _check_key(key_added, default)
    name = key[2:] if key.startswith("X_") else key
    if not name:
        raise ValueError(f"key_added must name the result, got {key_added!r}.")
    return f"X_{name}", name


def cluster_slots(key_added: str | None, default: str = "gmm") -> tuple[str, str, str]:
    """The ``obs``, ``obsm`` and ``uns`` keys a clustering is written to.

    Labels go to ``obs[<key>]``, the membership probabilities to ``obsm[<key>_proba]`` and the
    record to ``uns[<key>]``, with ``<key>`` = ``key_added`` or ``default`` (as
    ``sc.tl.leiden``'s ``key_added``).

    Parameters
    ----------
    key_added
        The user's ``key_added``, or None.
    default
        The default name.

    Returns
    -------
    obs_key, obsm_proba_key, uns_key

    Raises
    ------
    ValueError
        ``key_added`` is not a non-empty string.

    Examples
    --------
    >>> cluster_slots("gmm")
    ('gmm', 'gmm_proba', 'gmm')
    """
    key = _check_key(key_added, default)
    return key, f"{key}_proba", key


def read_embedding(adata: AnnData, use_rep: str) -> np.ndarray:
    """``adata.obsm[use_rep]`` as a finite float64 ``(n_cells, n_dims)`` array, or raise.

    Parameters
    ----------
    adata
        AnnData holding the embedding.
    use_rep
        Key in ``adata.obsm``.

    Returns
    -------
    numpy.ndarray
        A float64 copy (dense, even for a sparse or DataFrame embedding).

    Raises
    ------
    KeyError
        ``use_rep`` is not in ``adata.obsm`` (the message lists the keys present).
    ValueError
        Not 2-D, not numeric, or NaN/inf values (the message names cells).
    """
    _check_anndata(adata)
    if not isinstance(use_rep, str) or use_rep not in adata.obsm:
        available = ", ".join(repr(k) for k in adata.obsm) or "none"
        raise KeyError(
            f"use_rep={use_rep!r} is not in adata.obsm (available keys: {available}). "
            "Write an embedding first, e.g. with a fitted model's "
            "model.write_latent(adata) (-> 'X_zinbvae') or sc.pp.pca(adata) (-> 'X_pca'), "
            "or pass use_rep=<one of the available keys>."
        )
    rep = adata.obsm[use_rep]
    if sp.issparse(rep):
        rep = rep.toarray()
    rep = np.asarray(rep)
    if rep.ndim != 2 or rep.shape[1] == 0:
        raise ValueError(
            f"adata.obsm[{use_rep!r}] must be a 2-D (n_cells, n_dims) array with n_dims >= 1, "
            f"got shape {rep.shape}."
        )
    if rep.dtype == np.bool_ or not (
        np.issubdtype(rep.dtype, np.floating) or np.issubdtype(rep.dtype, np.integer)
    ):
        raise ValueError(f"adata.obsm[{use_rep!r}] must be numeric, got dtype {rep.dtype}.")
    rep = rep.astype(np.float64)  # always a copy
    finite = np.isfinite(rep).all(axis=1)  # (n_cells,)
    if not finite.all():
        bad = adata.obs_names[~finite]
        raise ValueError(
            f"adata.obsm[{use_rep!r}] has NaN or infinite values in {bad.size} of "
            f"{rep.shape[0]} cells (e.g. {list(bad[:5])}). Recompute the embedding (a diverged "
            "model gives NaN latents) or subset the AnnData to the finite cells first."
        )
    return rep


def _label_strings(values: np.ndarray) -> np.ndarray:
    """The string form of labels, one for each value whatever its type.

    ``2``, ``np.int64(2)``, ``2.0`` and ``"2"`` all become ``"2"``, so that an integer, a float
    and a string column (or a categorical of any of them) of the same labels read the same.
    """
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        if isinstance(v, float | np.floating) and float(v).is_integer():
            v = int(v)
        out[i] = str(v)
    return out


def _label_string(value: object) -> str:
    return str(_label_strings(np.asarray([value], dtype=object))[0])


def _category_lookup(categories: Sequence[str]) -> dict[str, int]:
    """Code of each category name; a name saved as ``"2.0"`` by an older scvae (float batch
    columns were read as ``"2.0"``) also answers to ``"2"``, the name such labels read as now."""
    lookup = {c: i for i, c in enumerate(categories)}
    for i, c in enumerate(categories):
        if c.endswith(".0") and c[:-2].lstrip("-").isdigit():
            lookup.setdefault(c[:-2], i)
    return lookup


def _obs_labels(column: pd.Series) -> np.ndarray:
    """(N,) object array of the label strings of an ``obs`` column (no missing values)."""
    codes, uniques = pd.factorize(column, sort=False)  # works on categorical, numeric, str
    names = _label_strings(np.asarray(uniques, dtype=object))
    return names[codes]


def read_obs_column(adata: AnnData, key: str, *, what: str) -> np.ndarray:
    """``adata.obs[key]`` as an (N,) array of label strings, or a clear error.

    Labels of any type read the same: ``2``, ``2.0`` and ``"2"`` are all ``"2"``; unused
    categories of a categorical column play no part.

    Parameters
    ----------
    adata
        AnnData holding the column.
    key
        Column of ``adata.obs``.
    what
        The name of the argument that gave ``key`` (``"label_key"``), used in messages.

    Returns
    -------
    numpy.ndarray
        Object array of strings.

    Raises
    ------
    KeyError
        ``key`` is not a column (the message lists the columns present).
    ValueError
        The column has missing values.
    """
    _check_anndata(adata)
    if not isinstance(key, str) or key not in adata.obs:
        columns = ", ".join(repr(c) for c in adata.obs.columns) or "none"
        raise KeyError(
            f"{what}={key!r} is not a column of adata.obs (available columns: {columns}). "
            f"Pass {what}=<one of the available columns>."
        )
    column = adata.obs[key]
    missing = column.isna()
    if missing.any():
        raise ValueError(
            f"adata.obs[{key!r}] has {int(missing.sum())} missing values; every cell needs a "
            f"{what.removesuffix('_key')}. Subset to the labelled cells first, e.g. "
            f"adata[adata.obs[{key!r}].notna()].copy()."
        )
    return _obs_labels(column)


# ------------------------------------------------------------------------------ covariates
@dataclass(frozen=True)
class CovariateSetup:
    """The covariates beyond the batch that a model was trained with.

    Attributes
    ----------
    categorical_keys
        ``obs`` columns of the categorical covariates (donor, chemistry, ...).
    categories
        The labels of each categorical covariate in code order (sorted as strings, like the
        batch labels).
    continuous_keys
        ``obs`` columns of the continuous covariates (percent mitochondrial counts, ...).
    means, sds
        Training mean and standard deviation of each continuous covariate: the module reads
        ``(u - mean) / sd``.
    """

    categorical_keys: tuple[str, ...] = ()
    categories: tuple[tuple[str, ...], ...] = ()
    continuous_keys: tuple[str, ...] = ()
    means: tuple[float, ...] = ()
    sds: tuple[float, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        """Every covariate key, categorical first."""
        return self.categorical_keys + self.continuous_keys

    @property
    def n_categories(self) -> tuple[int, ...]:
        """Number of categories of each categorical covariate."""
        return tuple(len(c) for c in self.categories)

    @property
    def n_continuous(self) -> int:
        """Number of continuous covariates."""
        return len(self.continuous_keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def category_code(self, key: str, label: object) -> int:
        """The code of ``label`` (of any type, as :meth:`DataSetup.batch_code`) of ``key``.

        Raises
        ------
        ValueError
            A category unseen in training (the message lists the known ones).
        """
        categories = self.categories[self.categorical_keys.index(key)]
        code = _category_lookup(categories).get(_label_string(label))
        if code is None:
            raise ValueError(
                f"Unknown category {label!r} of the covariate {key!r}; the model knows the "
                f"categories of adata.obs[{key!r}] in training: {_listing(categories)}."
            )
        return code

    def standardize(self, key: str, value: np.ndarray | float) -> np.ndarray | float:
        """``(value - mean) / sd`` of the continuous covariate ``key``."""
        j = self.continuous_keys.index(key)
        return (value - self.means[j]) / self.sds[j]

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return {
            "categorical_keys": list(self.categorical_keys),
            "categories": [list(c) for c in self.categories],
            "continuous_keys": list(self.continuous_keys),
            "means": list(self.means),
            "sds": list(self.sds),
        }

    @classmethod
    def from_dict(cls, d: dict | None) -> CovariateSetup:
        """Inverse of :meth:`to_dict`; None (a model saved before covariates): none."""
        if not d:
            return cls()
        return cls(
            categorical_keys=tuple(d["categorical_keys"]),
            categories=tuple(tuple(c) for c in d["categories"]),
            continuous_keys=tuple(d["continuous_keys"]),
            means=tuple(float(m) for m in d["means"]),
            sds=tuple(float(v) for v in d["sds"]),
        )


def _covariate_keys(
    categorical_keys: Sequence[str] | str | None,
    continuous_keys: Sequence[str] | str | None,
    batch_key: str | None,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The keys as tuples of distinct strings, none of them the batch key, or raise."""
    resolved = []
    for what, keys in (
        ("categorical_covariate_keys", categorical_keys),
        ("continuous_covariate_keys", continuous_keys),
    ):
        keys = () if keys is None else (keys,) if isinstance(keys, str) else tuple(keys)
        bad = [k for k in keys if not isinstance(k, str) or not k]
        if bad:
            raise TypeError(f"{what} must be obs column names (strings), got {bad[0]!r}.")
        resolved.append(keys)
    every = resolved[0] + resolved[1]
    twice = sorted({k for k in every if every.count(k) > 1})
    if twice:
        raise ValueError(
            f"The covariate keys {_listing(twice)} are given more than once (across "
            "categorical_covariate_keys and continuous_covariate_keys); name each obs column "
            "once."
        )
    if batch_key is not None and batch_key in every:
        raise ValueError(
            f"{batch_key!r} is the batch_key and also a covariate key; the batch is already "
            "injected everywhere: remove it from the covariate keys."
        )
    return resolved[0], resolved[1]


def _covariate_column(adata: AnnData, key: str, what: str) -> pd.Series:
    """``adata.obs[key]`` without missing values, or a clear error."""
    if key not in adata.obs.columns:
        raise KeyError(
            f"{what}: {key!r} is not a column of adata.obs. Columns present: "
            f"{_listing(list(adata.obs.columns)) or 'none'}."
        )
    column = adata.obs[key]
    missing = column.isna()
    if missing.any():
        raise ValueError(
            f"adata.obs[{key!r}] ({what}) has missing values (NaN/None) in "
            f"{int(missing.sum())} of {len(column)} cells; every cell needs a value of each "
            f"covariate. Fill them (e.g. with an 'unknown' category, or the median for a "
            f"number) or subset to the cells that have one: adata[adata.obs[{key!r}].notna()]"
            ".copy()."
        )
    return column


def _categorical_covariate(
    adata: AnnData, key: str, categories: Sequence[str] | None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """(N,) int64 codes of a categorical covariate and its categories in code order.

    ``categories`` None (training): the labels present, sorted as strings; at least two.
    """
    labels = _obs_labels(_covariate_column(adata, key, "categorical_covariate_keys"))
    if categories is None:
        categories = tuple(sorted(set(labels)))
        if len(categories) < 2:
            raise ValueError(
                f"adata.obs[{key!r}] has one category ({_listing(categories)}) in every cell: "
                "a constant covariate carries no information. Remove it from "
                "categorical_covariate_keys."
            )
    lookup = _category_lookup(categories)
    unseen = sorted(set(labels) - lookup.keys())
    if unseen:
        raise ValueError(
            f"adata.obs[{key!r}] has categories unseen in training: {_listing(unseen)}. The "
            f"model knows {_listing(categories)}. Subset to known categories or train a model "
            "that includes them."
        )
    codes = np.fromiter((lookup[v] for v in labels), dtype=np.int64, count=len(labels))
    return codes, tuple(categories)


def _continuous_covariate(adata: AnnData, key: str) -> np.ndarray:
    """(N,) float64 values of a continuous covariate (finite numbers), or a clear error."""
    column = _covariate_column(adata, key, "continuous_covariate_keys")
    if not pd.api.types.is_numeric_dtype(column.dtype):
        raise ValueError(
            f"adata.obs[{key!r}] (continuous_covariate_keys) must be numeric, got dtype "
            f"{column.dtype}. Convert it (pd.to_numeric(adata.obs[{key!r}])), or pass it in "
            "categorical_covariate_keys if its values are labels."
        )
    values = column.to_numpy(dtype=np.float64)
    n_bad = int(np.count_nonzero(~np.isfinite(values)))
    if n_bad:
        raise ValueError(
            f"adata.obs[{key!r}] (continuous_covariate_keys) has infinite values in {n_bad} "
            f"of {len(values)} cells; give every cell a finite value."
        )
    return values


def _read_covariates(
    adata: AnnData, covariates: CovariateSetup
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(N, C) int64 codes and (N, D) float32 standardized values for a known setup."""
    categorical = None
    if covariates.categorical_keys:
        categorical = np.stack(
            [
                _categorical_covariate(adata, key, categories)[0]
                for key, categories in zip(
                    covariates.categorical_keys, covariates.categories, strict=True
                )
            ],
            axis=1,
        )  # (N, C)
    continuous = None
    if covariates.continuous_keys:
        continuous = np.stack(
            [
                covariates.standardize(key, _continuous_covariate(adata, key))
                for key in covariates.continuous_keys
            ],
            axis=1,
        ).astype(np.float32)  # (N, D)
    return categorical, continuous


def _training_covariates(
    adata: AnnData,
    categorical_keys: tuple[str, ...],
    continuous_keys: tuple[str, ...],
) -> CovariateSetup:
    """The covariate setup of training cells: categories, means and standard deviations."""
    categories = tuple(_categorical_covariate(adata, key, None)[1] for key in categorical_keys)
    means, sds = [], []
    for key in continuous_keys:
        values = _continuous_covariate(adata, key)
        mean, sd = float(values.mean()), float(values.std())
        if not sd > 1e-12 * max(1.0, abs(mean)):
            raise ValueError(
                f"adata.obs[{key!r}] is constant ({mean:g} in every cell): a constant "
                "covariate carries no information. Remove it from continuous_covariate_keys."
            )
        means.append(mean)
        sds.append(sd)
    return CovariateSetup(
        categorical_keys=categorical_keys,
        categories=categories,
        continuous_keys=continuous_keys,
        means=tuple(means),
        sds=tuple(sds),
    )


# --------------------------------------------------------------------------------- the counts
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
    covariates
        The covariates beyond the batch (none by default).
    """

    layer: str | None
    batch_key: str | None
    batch_categories: tuple[str, ...]
    var_names: tuple[str, ...] = field(repr=False)
    covariates: CovariateSetup = field(default_factory=CovariateSetup)

    @property
    def n_batch(self) -> int:
        """Number of batch categories (1 without a batch covariate)."""
        return len(self.batch_categories)

    @property
    def n_genes(self) -> int:
        """Number of genes."""
        return len(self.var_names)

    def batch_code(self, label: object) -> int:
        """The code of a batch label, given as in ``adata.obs[batch_key]``.

        Parameters
        ----------
        label
            A batch label of any type: ``2``, ``np.int64(2)``, ``2.0`` and ``"2"`` all name
            the batch ``"2"``.

        Returns
        -------
        int
            Its index in :attr:`batch_categories`.

        Raises
        ------
        ValueError
            An unknown batch (the message lists the known ones).
        """
        code = _category_lookup(self.batch_categories).get(_label_string(label))
        if code is None:
            known = _listing(self.batch_categories)
            where = f"adata.obs[{self.batch_key!r}]" if self.batch_key else "training"
            raise ValueError(
                f"Unknown batch {label!r}; the model knows the batches of {where}: {known}."
            )
        return code

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return {
            "layer": self.layer,
            "batch_key": self.batch_key,
            "batch_categories": list(self.batch_categories),
            "var_names": list(self.var_names),
            "covariates": self.covariates.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> DataSetup:
        """Inverse of :meth:`to_dict` (a dict saved before covariates: none)."""
        return cls(
            layer=d["layer"],
            batch_key=d["batch_key"],
            batch_categories=tuple(d["batch_categories"]),
            var_names=tuple(d["var_names"]),
            covariates=CovariateSetup.from_dict(d.get("covariates")),
        )


def _get_matrix(adata: AnnData, layer: str | None) -> sp.csr_matrix | np.ndarray:
    check_in_memory(adata)
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


#: Stored values that the checks and sums over a matrix's non-zeros handle at a time, so that
#: their temporaries take a constant amount of memory (16 MiB of float32), not one per entry.
_CHUNK = 1 << 22


def _chunks(values: np.ndarray, size: int | None = None) -> Iterator[np.ndarray]:
    """Consecutive views of ``values`` (1-D) of ``size`` elements (:data:`_CHUNK`) or fewer."""
    size = size or _CHUNK
    for start in range(0, values.size, size):
        yield values[start : start + size]


def _row_blocks(indptr: np.ndarray, size: int | None = None) -> Iterator[tuple[int, int]]:
    """``(lo, hi)`` row ranges of a CSR matrix holding about ``size`` (:data:`_CHUNK`) stored
    values each (a single longer row is a block of its own), covering every row in order."""
    size = size or _CHUNK
    n_rows = len(indptr) - 1
    lo = 0
    while lo < n_rows:
        hi = int(np.searchsorted(indptr, indptr[lo] + size, side="right")) - 1
        hi = min(max(hi, lo + 1), n_rows)
        yield lo, hi
        lo = hi


def _count_zeros(values: np.ndarray) -> int:
    """Stored zeros (``0`` and ``-0.0``) among ``values``, chunk by chunk."""
    return sum(int(np.count_nonzero(chunk == 0)) for chunk in _chunks(values))


def _shared_csr(X: sp.csr_matrix | sp.csr_array) -> sp.csr_matrix | None:
    """``X`` as a float32 CSR matrix sharing its arrays, or None where it needs a full copy.

    Shared when the structure is canonical (sorted indices, no duplicates, checked on
    ``X``'s own arrays whatever its flags say) and no stored value is zero once in float32.
    Values of another dtype become one float32 copy of ``data``; int64 indices become int32
    where they fit (as in the copy). Read-only arrays are copied (torch warns on sharing
    them). Nothing of ``X`` is written, not even its flags.
    """
    data, indices, indptr = X.data, X.indices, X.indptr
    nnz = int(indptr[-1]) if len(indptr) else 0
    if (
        data.ndim != 1
        or data.dtype.kind not in "iuf"
        or not data.dtype.isnative
        or not indices.dtype.isnative
        or not indptr.dtype.isnative
        or not (data.flags.writeable and indices.flags.writeable and indptr.flags.writeable)
        or len(data) != nnz
        or len(indices) != nnz
        or len(indptr) != X.shape[0] + 1
    ):
        return None
    structure = sp.csr_matrix((data, indices, indptr), shape=X.shape, copy=False)
    if not structure.has_canonical_format:  # one pass over the indices, no temporaries
        return None
    values = data if data.dtype == np.float32 else data.astype(np.float32)  # one copy at most
    if _count_zeros(values):
        return None
    if nnz < np.iinfo(np.int32).max and indices.dtype != np.int32:
        indices, indptr = indices.astype(np.int32), indptr.astype(np.int32)
    csr = sp.csr_matrix((values, indices, indptr), shape=X.shape, copy=False)
    csr.has_canonical_format = True
    return csr


def _to_csr(X) -> sp.csr_matrix:
    """The counts ``X`` as a canonical float32 CSR matrix, copied only where they are not one.

    Whatever the input's representation (dense, CSR, CSC, COO, sparse matrix or array, any
    numeric dtype, stored zeros, duplicate entries, unsorted or int64 indices), the same
    values give the same matrix: duplicates summed, explicit zeros dropped (they would be
    scored as observed non-zero counts), sorted int32 indices where they fit. Sparse input is
    never densified.

    A CSR matrix or array that is canonical already (sorted indices, no duplicates, no stored
    zeros) is not copied: the result shares its ``data`` when it is float32 (other value
    dtypes: one float32 copy of ``data`` alone) and its ``indices`` and ``indptr`` (int64
    ones: an int32 copy where they fit). The models only read these arrays and never write
    into them; like any reference, they should not be modified while a model uses them.
    Every other input becomes one canonical copy. ``X`` itself (its arrays and its flags) is
    never modified.
    """
    if sp.issparse(X) and X.format == "csr":
        shared = _shared_csr(X)
        if shared is not None:
            return shared
    if sp.issparse(X):
        csr = sp.csr_matrix(X, dtype=np.float32, copy=True)
    elif isinstance(X, np.ndarray):
        if X.dtype != np.bool_ and not np.issubdtype(X.dtype, np.number):
            raise TypeError(f"The count matrix must be numeric, got dtype {X.dtype}.")
        csr = sp.csr_matrix(np.asarray(X, dtype=np.float32))
    else:
        raise TypeError(
            f"Unsupported matrix type {type(X).__name__}; expected a numpy array or a scipy "
            "sparse matrix (dask and backed arrays: call .compute() / .to_memory() first)."
        )
    csr.sum_duplicates()  # also sorts the indices
    csr.eliminate_zeros()
    csr.sort_indices()
    if csr.nnz < np.iinfo(np.int32).max and csr.indices.dtype != np.int32:
        csr.indices = csr.indices.astype(np.int32)
        csr.indptr = csr.indptr.astype(np.int32)
    csr.has_canonical_format = True
    return csr


def _check_values(csr: sp.csr_matrix, *, where: str, counts: bool, nonnegative: bool) -> None:
    """Refuse NaN/inf, negative (``nonnegative``) and non-integer (``counts``) stored values.

    Chunk by chunk (:func:`_chunks`): the temporaries take constant memory, not one array per
    stored value.
    """
    values = csr.data
    n_bad = sum(int(np.count_nonzero(~np.isfinite(chunk))) for chunk in _chunks(values))
    if n_bad:
        raise ValueError(
            f"{where} contains {n_bad} NaN or infinite values. Remove or impute them before "
            "fitting (for example adata = adata[~np.isnan(...)] or recompute the counts)."
        )
    n_neg = sum(int(np.count_nonzero(chunk < 0)) for chunk in _chunks(values)) if nonnegative else 0
    if n_neg:
        minimum = min(chunk.min() for chunk in _chunks(values))
        raise ValueError(
            f"{where} contains {n_neg} negative values (minimum {minimum:g}). The models "
            "need non-negative raw counts: pass the raw UMI counts (e.g. layer='counts'), not "
            "scaled or centered data."
        )
    if counts:
        n_frac, example = 0, None
        for chunk in _chunks(values):
            fractional = chunk != np.round(chunk)  # (chunk,)
            n = int(np.count_nonzero(fractional))
            if n and example is None:
                example = chunk[fractional][0]
            n_frac += n
        if n_frac:
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
    """Batch codes of the cells and the categories in code order.

    Labels are read by :func:`read_obs_column` (``2``, ``2.0`` and ``"2"`` are one batch) and
    the training categories are the labels present, sorted as strings, whatever the column's
    dtype or category order: a string, numeric or categorical column of the same labels (with
    or without unused categories) gives the same codes.
    """
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
    labels = _obs_labels(column)
    if categories is None:
        categories = tuple(sorted(set(labels)))
    lookup = _category_lookup(categories)
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
    """Validated counts, batch codes and covariates, ready for the module.

    Attributes
    ----------
    X
        (N, G) canonical float32 CSR.
    batch_index
        (N,) int64 batch codes.
    library_size
        (N,) total counts (ones for data that are not counts).
    categorical_covariates
        (N, C) int64 codes of the categorical covariates, or None.
    continuous_covariates
        (N, D) float32 standardized continuous covariates, or None.
    """

    X: sp.csr_matrix
    batch_index: np.ndarray
    library_size: np.ndarray
    categorical_covariates: np.ndarray | None = None
    continuous_covariates: np.ndarray | None = None

    @cached_property
    def log_x_factorial(self) -> np.ndarray:
        """(N,) float32 ``sum_g lgamma(x_g + 1)`` of each cell: the data-only term of the count
        likelihoods, computed once and shared by every loader (no per-entry index array), in
        blocks of rows (:func:`_row_blocks`) so that no temporary has one value per entry."""
        X = self.X
        out = np.empty(X.shape[0], dtype=np.float32)  # (N,)
        for lo, hi in _row_blocks(X.indptr):
            start, stop = X.indptr[lo], X.indptr[hi]
            terms = gammaln(X.data[start:stop] + 1).astype(np.float32, copy=False)  # (nnz_b,)
            block = sp.csr_matrix(
                (terms, X.indices[start:stop], X.indptr[lo : hi + 1] - start),
                shape=(hi - lo, X.shape[1]),
            )
            out[lo:hi] = np.asarray(block.sum(axis=1), dtype=np.float32).ravel()
        return out


def _is_backed(adata: AnnData) -> bool:
    _check_anndata(adata)
    return adata.isbacked


def _backed_counts(
    adata: AnnData, layer: str | None, *, counts: bool, nonnegative: bool
) -> tuple[object, np.ndarray]:
    """The counts of a backed AnnData, validated on disk, and the library sizes."""
    from scvae.backed import read_backed_counts

    return read_backed_counts(adata, layer, counts=counts, nonnegative=nonnegative)


def _cell_data_class(X: object) -> type[CellData]:
    """:class:`CellData`, or :class:`scvae.backed.BackedCellData` for counts on disk."""
    from scvae.backed import BackedCellData, BackedCounts

    return BackedCellData if isinstance(X, BackedCounts) else CellData


def read_training_data(
    adata: AnnData,
    *,
    layer: str | None,
    batch_key: str | None,
    counts: bool = True,
    nonnegative: bool = True,
    categorical_covariate_keys: Sequence[str] | None = None,
    continuous_covariate_keys: Sequence[str] | None = None,
    backed: bool = False,
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
    categorical_covariate_keys
        ``obs`` columns of categorical covariates beyond the batch (each with at least two
        labels), or None.
    continuous_covariate_keys
        ``obs`` columns of numeric covariates (not constant), standardized by their training
        mean and standard deviation, or None.
    backed
        Accept an AnnData backed on disk (``read_h5ad(path, backed="r")``): its counts are
        validated block by block and stay in the file (:mod:`scvae.backed`); False refuses it.

    Returns
    -------
    DataSetup, CellData

    Raises
    ------
    KeyError
        Unknown layer, batch_key or covariate key (the message lists what exists).
    TypeError
        A covariate key that is not a string.
    ValueError
        Negative, NaN/inf or (for counts) non-integer values, empty cells, missing batch
        labels; a covariate key given twice or equal to ``batch_key``, a covariate with
        missing values, a constant covariate, a non-numeric continuous covariate.
    """
    categorical_keys, continuous_keys = _covariate_keys(
        categorical_covariate_keys, continuous_covariate_keys, batch_key
    )
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if backed and _is_backed(adata):
        csr, totals = _backed_counts(adata, layer, counts=counts, nonnegative=nonnegative)
    else:
        csr = _to_csr(_get_matrix(adata, layer))
        _check_values(csr, where=where, counts=counts, nonnegative=nonnegative or counts)
        totals = _check_cells(csr, where=where) if counts else np.ones(csr.shape[0])
    codes, categories = _batch_codes(adata, batch_key, None)
    covariates = _training_covariates(adata, categorical_keys, continuous_keys)
    categorical, continuous = _read_covariates(adata, covariates)
    setup = DataSetup(
        layer=layer,
        batch_key=batch_key,
        batch_categories=categories,
        var_names=tuple(str(v) for v in adata.var_names),
        covariates=covariates,
    )
    return setup, _cell_data_class(csr)(
        X=csr,
        batch_index=codes,
        library_size=totals,
        categorical_covariates=categorical,
        continuous_covariates=continuous,
    )


def read_query_data(
    adata: AnnData,
    setup: DataSetup,
    *,
    counts: bool = True,
    nonnegative: bool = True,
    align_genes: bool = False,
    backed: bool = False,
) -> CellData:
    """Validate new cells against what a model was trained on and read them.

    Parameters
    ----------
    adata
        The cells.
    setup
        What the model was trained on.
    counts, nonnegative
        As in :func:`read_training_data`.
    align_genes
        Align the genes to ``setup.var_names`` by name, as :func:`read_mapping_data` does
        (a mapped model reads its query this way); by default the genes must be those of
        training, in order.
    backed
        Accept an AnnData backed on disk, as in :func:`read_training_data` (not with
        ``align_genes``).

    Raises
    ------
    KeyError
        A covariate column of training is missing.
    ValueError
        Genes differ from training, unseen batch or covariate categories, or bad values
        (see :func:`read_training_data`).
    """
    if align_genes:
        check_in_memory(adata)
        csr, _ = _aligned_counts(adata, setup)
        where = "adata.X" if setup.layer is None else f"adata.layers[{setup.layer!r}]"
        where += " (its genes aligned to the model's)"
        return _query_cells(adata, setup, csr, where, counts=counts, nonnegative=nonnegative)
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
    if backed and _is_backed(adata):
        X, totals = _backed_counts(adata, setup.layer, counts=counts, nonnegative=nonnegative)
        return _query_cells(
            adata, setup, X, where, counts=counts, nonnegative=nonnegative, totals=totals
        )
    csr = _to_csr(_get_matrix(adata, setup.layer))
    return _query_cells(adata, setup, csr, where, counts=counts, nonnegative=nonnegative)


def _query_cells(
    adata: AnnData,
    setup: DataSetup,
    csr: sp.csr_matrix,
    where: str,
    *,
    counts: bool,
    nonnegative: bool,
    totals: np.ndarray | None = None,
) -> CellData:
    """The :class:`CellData` of query cells whose counts (in the model's genes) are ``csr``;
    ``totals`` given: the counts were validated already (backed on disk)."""
    if totals is None:
        _check_values(csr, where=where, counts=counts, nonnegative=nonnegative or counts)
        totals = _check_cells(csr, where=where) if counts else np.ones(csr.shape[0])
    if setup.batch_key is not None:
        codes, _ = _batch_codes(adata, setup.batch_key, setup.batch_categories)
    else:
        codes = np.zeros(adata.n_obs, dtype=np.int64)
    categorical, continuous = _read_covariates(adata, setup.covariates)
    return _cell_data_class(csr)(
        X=csr,
        batch_index=codes,
        library_size=totals,
        categorical_covariates=categorical,
        continuous_covariates=continuous,
    )


def log_normalize(data: CellData, *, target_sum: float = 1e4) -> CellData:
    """``log1p(x / total * target_sum)`` per cell, on the CSR non-zeros only (stays sparse).

    The same transform as ``sc.pp.normalize_total(target_sum=1e4)`` then ``sc.pp.log1p``.
    """
    if not sp.issparse(data.X):
        raise ValueError(
            "Log-normalizing (GaussianVAE, PPCA, factor analysis) is not supported for an "
            "AnnData backed on disk; load it into memory first with adata = adata.to_memory()."
        )
    X = data.X.copy()
    scale = np.repeat(target_sum / data.library_size, np.diff(X.indptr))  # (nnz,)
    X.data = np.log1p(X.data * scale).astype(np.float32)
    return dataclasses.replace(data, X=X)


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


# ------------------------------------------------------------------------ reference mapping
@dataclass(frozen=True)
class GeneOverlap:
    """How a query's genes align to the reference's.

    Attributes
    ----------
    n_reference
        Genes of the reference.
    n_present
        Reference genes present in the query (the rest are read as zero counts).
    n_extra
        Query genes the reference does not have (dropped).
    """

    n_reference: int
    n_present: int
    n_extra: int

    @property
    def fraction(self) -> float:
        """Fraction of the reference's genes present in the query."""
        return self.n_present / self.n_reference

    @property
    def n_missing(self) -> int:
        """Reference genes absent from the query (zero-filled)."""
        return self.n_reference - self.n_present


def _aligned_counts(adata: AnnData, setup: DataSetup) -> tuple[sp.csr_matrix, GeneOverlap]:
    """The query's counts in the reference's genes and order, as one canonical CSR.

    Genes are matched by name; reference genes missing from the query are columns without a
    stored value (zero counts), extra query genes are dropped. The CSR is built directly from
    the query's canonical CSR by renumbering its column indices: nothing is densified.

    Raises
    ------
    ValueError
        Duplicate gene names, no gene in common, or fewer than :data:`MIN_GENE_OVERLAP` of the
        reference's genes (a :class:`UserWarning` below :data:`WARN_GENE_OVERLAP`).
    """
    query = pd.Index([str(v) for v in adata.var_names])
    reference = pd.Index(setup.var_names)
    if query.has_duplicates:
        dup = query[query.duplicated()].unique()
        raise ValueError(
            f"adata has duplicate gene names ({_listing(list(dup))}); genes are aligned to the "
            "model's by name. Make them unique first: adata.var_names_make_unique()."
        )
    X = _get_matrix(adata, setup.layer)
    if tuple(query) == setup.var_names:  # the reference's genes in its order
        return _to_csr(X), GeneOverlap(len(reference), len(reference), 0)
    position = reference.get_indexer(query)  # (G_query,) column in the reference or -1
    n_present = int(np.count_nonzero(position >= 0))
    overlap = GeneOverlap(len(reference), n_present, len(query) - n_present)
    shown = (
        f"{n_present} of the model's {len(reference)} genes ({overlap.fraction:.0%}) are in "
        f"adata (which has {len(query)} genes)"
    )
    if n_present == 0:
        raise ValueError(
            f"adata has none of the model's {len(reference)} genes (e.g. "
            f"{_listing(list(reference[:3]))}; adata has {_listing(list(query[:3]))}). Use the "
            "same gene identifiers as the reference (symbols or Ensembl IDs: model.var_names)."
        )
    if overlap.fraction < MIN_GENE_OVERLAP:
        raise ValueError(
            f"Only {shown}; at least {MIN_GENE_OVERLAP:.0%} are needed "
            "(scvae.data.MIN_GENE_OVERLAP): the missing genes would be read as zero counts. "
            "Check that the gene identifiers match the reference's (model.var_names)."
        )
    if overlap.fraction < WARN_GENE_OVERLAP:
        warnings.warn(
            f"{shown}; the {overlap.n_missing} missing genes are read as zero counts, which "
            f"biases the mapping (below {WARN_GENE_OVERLAP:.0%}, scvae.data.WARN_GENE_OVERLAP).",
            UserWarning,
            stacklevel=4,
        )
    csr = _to_csr(X)  # (N, G_query) canonical
    column = position[csr.indices]  # (nnz,) reference column of each stored value, or -1
    kept = column >= 0
    kept_before = np.concatenate([[0], np.cumsum(kept)])  # (nnz + 1,)
    indptr = kept_before[csr.indptr]  # (N + 1,)
    index_dtype = np.int32 if len(reference) < np.iinfo(np.int32).max else np.int64
    aligned = sp.csr_matrix(
        (csr.data[kept], column[kept].astype(index_dtype), indptr.astype(csr.indptr.dtype)),
        shape=(csr.shape[0], len(reference)),
    )
    aligned.sort_indices()  # the renumbering does not keep the order within a row
    aligned.has_canonical_format = True
    return aligned, overlap


def _extended_codes(
    labels: np.ndarray, known: tuple[str, ...]
) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """Codes of ``labels`` over ``known`` followed by the new labels (sorted as strings)."""
    lookup = _category_lookup(known)
    new = tuple(sorted(set(labels) - lookup.keys()))
    categories = tuple(known) + new
    lookup = _category_lookup(categories)
    codes = np.fromiter((lookup[v] for v in labels), dtype=np.int64, count=len(labels))
    return codes, categories, new


def read_mapping_data(
    adata: AnnData,
    setup: DataSetup,
    *,
    counts: bool = True,
    nonnegative: bool = True,
) -> tuple[DataSetup, CellData, GeneOverlap, dict[str, tuple[str, ...]]]:
    """Read a query to map onto a reference model (scArches): align it, extend the setup.

    The genes are aligned to the reference's by name (:func:`_aligned_counts`: missing genes
    read as zeros, extra ones dropped, sparse throughout); batches and categories of the
    reference keep their codes and new ones are appended after them, sorted as strings.
    Continuous covariates are standardized with the reference's means and standard deviations.
    Columns the model does not read (labels, other ``obs``) need not exist. The AnnData is
    only read.

    Parameters
    ----------
    adata
        The query cells (in memory, not a view).
    setup
        The reference model's setup.
    counts, nonnegative
        As in :func:`read_training_data`.

    Returns
    -------
    setup
        The reference's setup with the new batch categories and covariate categories appended.
    data
        The query cells, coded in the extended setup.
    overlap
        How the genes aligned.
    new
        The new labels: ``{"batch": (...), <covariate key>: (...), ...}``.

    Raises
    ------
    TypeError
        ``adata`` is not an AnnData.
    KeyError
        The batch column or a covariate column of the reference is missing.
    ValueError
        A view or backed AnnData; genes (see :func:`_aligned_counts`); missing batch or
        covariate values; bad counts (see :func:`read_training_data`).
    """
    check_in_memory(adata)
    if adata.is_view:
        raise ValueError(
            "adata is a view; the mapped model keeps a reference to its query AnnData, so map "
            "a real object: adata = adata.copy()."
        )
    csr, overlap = _aligned_counts(adata, setup)
    where = "adata.X" if setup.layer is None else f"adata.layers[{setup.layer!r}]"
    if overlap.n_missing or overlap.n_extra:
        where += " (its genes aligned to the reference's)"
    _check_values(csr, where=where, counts=counts, nonnegative=nonnegative or counts)
    totals = _check_cells(csr, where=where) if counts else np.ones(csr.shape[0])
    new: dict[str, tuple[str, ...]] = {"batch": ()}
    codes = np.zeros(adata.n_obs, dtype=np.int64)
    batch_categories = setup.batch_categories
    if setup.batch_key is not None:
        labels = _batch_labels(adata, setup.batch_key)
        codes, batch_categories, new["batch"] = _extended_codes(labels, setup.batch_categories)
    covariates = setup.covariates
    categorical = None
    if covariates.categorical_keys:
        columns, categories = [], []
        for key, known in zip(covariates.categorical_keys, covariates.categories, strict=True):
            labels = _obs_labels(_covariate_column(adata, key, "categorical_covariate_keys"))
            key_codes, key_categories, new[key] = _extended_codes(labels, known)
            columns.append(key_codes)
            categories.append(key_categories)
        categorical = np.stack(columns, axis=1)  # (N, C)
        covariates = dataclasses.replace(covariates, categories=tuple(categories))
    continuous = _read_covariates(adata, dataclasses.replace(covariates, categorical_keys=()))[1]
    extended = dataclasses.replace(setup, batch_categories=batch_categories, covariates=covariates)
    data = CellData(
        X=csr,
        batch_index=codes,
        library_size=totals,
        categorical_covariates=categorical,
        continuous_covariates=continuous,
    )
    return extended, data, overlap, new


def _batch_labels(adata: AnnData, batch_key: str) -> np.ndarray:
    """The batch label strings of every cell (the column must exist and be complete)."""
    if batch_key not in adata.obs.columns:
        raise KeyError(
            f"The reference was trained with batch_key={batch_key!r}, which is not a column of "
            f"adata.obs (columns present: {_listing(list(adata.obs.columns)) or 'none'}). Give "
            f"the query's cells their batch: adata.obs[{batch_key!r}] = <sample label>."
        )
    column = adata.obs[batch_key]
    if column.isna().any():
        raise ValueError(
            f"adata.obs[{batch_key!r}] has {int(column.isna().sum())} missing values; give "
            "every cell a batch label."
        )
    return _obs_labels(column)
