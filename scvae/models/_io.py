"""The saved-model directory shared by every model: ``model.json`` plus ``model.pt``.

One save path and one load path for every model class:

* :func:`save_directory` writes ``model.json`` (options, data setup, history: plain JSON) and
  ``model.pt`` (tensors) atomically: into a temporary directory beside the target, flushed to
  disk, then renamed into place. On any failure nothing is left half-written and an existing
  target is untouched.
* :func:`read_directory` reads them back, with an error naming the damaged or missing file
  and what to do.
* :class:`SavedModel` gives a model class ``save`` and ``load`` on top of them; a subclass
  implements ``_save_meta``, ``_save_tensors`` and ``_restore``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

__all__ = [
    "FORMAT_VERSION",
    "META_FILE",
    "WEIGHTS_FILE",
    "SavedModel",
    "json_safe",
    "read_directory",
    "save_directory",
]

META_FILE = "model.json"
WEIGHTS_FILE = "model.pt"
#: version of the directory layout written by :func:`save_directory` (absent before: 1 too)
FORMAT_VERSION = 1

_SAVE_AGAIN = "Save the model again from the fitted model, or restore the directory from a backup."

M = TypeVar("M", bound="SavedModel")


# ------------------------------------------------------------------------------------ JSON
def json_safe(value: Any, key: str = "value") -> Any:
    """``value`` as plain JSON types: NumPy scalars and arrays, tuples and paths converted.

    Parameters
    ----------
    value
        None, bool, int, float, str, :class:`pathlib.Path`, NumPy scalars and arrays, and
        lists, tuples and str-keyed dicts of these.
    key
        Where ``value`` sits (``"config.n_latent"``), used in messages.

    Returns
    -------
    The same content made of None, bool, int, float, str, list and dict only.

    Raises
    ------
    TypeError
        Anything else (the message names the key and the type).
    """
    if value is None or isinstance(value, bool | str):
        return str(value) if isinstance(value, str) else value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufU":
            raise TypeError(
                f"Cannot save {key!r}: a NumPy array of dtype {value.dtype} is not JSON-safe."
            )
        return json_safe(value.tolist(), key)
    if isinstance(value, list | tuple):
        return [json_safe(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(
                    f"Cannot save {key!r}: its key {k!r} is a {type(k).__name__}; JSON keys "
                    "must be strings."
                )
            out[str(k)] = json_safe(v, f"{key}.{k}" if key != "meta" else k)
        return out
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise TypeError(
        f"Cannot save {key!r}: {shown} ({type(value).__name__}) is not JSON-safe; options must "
        "be None, bool, int, float, str, paths, NumPy scalars/arrays or lists/dicts of them."
    )


# ------------------------------------------------------------------------------------ saving
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sibling(path: Path, tag: str) -> Path:
    """A fresh hidden directory name beside ``path``, created with the umask's permissions."""
    while True:
        candidate = path.parent / f".{path.name}.{tag}-{secrets.token_hex(4)}"
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise FileExistsError(
                f"{path} exists and is not a directory; a model is saved as a directory. "
                "Choose another path."
            )
        if not overwrite and any(path.iterdir()):
            raise FileExistsError(
                f"{path} exists and is not empty; pass overwrite=True to replace it, or "
                "choose another path."
            )
    elif path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(f"Cannot save to {path}: {path.parent} is a file.")


def save_directory(
    path: str | Path,
    *,
    overwrite: bool,
    meta: dict[str, Any],
    tensors: Mapping[str, torch.Tensor],
) -> Path:
    """Write a saved-model directory atomically.

    ``model.json`` gets ``meta`` (made JSON-safe by :func:`json_safe`, with
    ``"format_version"`` added) and ``model.pt`` the tensors (moved to the CPU). Both are
    written into a temporary directory beside ``path``, flushed to disk and renamed into
    place, so that an interrupted or failed save leaves nothing behind and an existing
    directory is replaced only once the new one is complete.

    Parameters
    ----------
    path
        The directory to create (its parents are created as needed).
    overwrite
        Replace an existing non-empty directory. An empty one is always replaced.
    meta
        Everything but the tensors; must hold ``"class"``, the model class's name.
    tensors
        Named tensors (a module's ``state_dict()``, fitted parameters).

    Returns
    -------
    pathlib.Path
        The directory written.

    Raises
    ------
    FileExistsError
        ``path`` is a non-empty directory and ``overwrite`` is False, or a file.
    TypeError
        A value of ``meta`` is not JSON-safe or a value of ``tensors`` is not a tensor (the
        message names the key); nothing is written.
    """
    path = Path(path)
    if not isinstance(meta.get("class"), str):
        raise ValueError("meta must hold the model class's name under 'class'.")
    text = json.dumps(json_safe({**meta, "format_version": FORMAT_VERSION}, "meta"))
    state = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"Cannot save tensor {name!r}: expected a torch.Tensor, got "
                f"{type(tensor).__name__}."
            )
        state[name] = tensor.detach().cpu().contiguous()
    _check_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(path, "saving")
    try:
        with open(staging / WEIGHTS_FILE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        with open(staging / META_FILE, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _fsync(staging)
        _check_target(path, overwrite)  # again: something may have appeared meanwhile
        if path.exists():
            old = _sibling(path, "replaced")
            old.rmdir()
            os.rename(path, old)
            try:
                os.rename(staging, path)
            except BaseException:
                os.rename(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, path)
        _fsync(path.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


# ----------------------------------------------------------------------------------- loading
def _read_meta_file(path: Path) -> dict[str, Any]:
    file = path / META_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"No saved scvae model in {path}: {META_FILE} is missing. Pass the directory "
            "written by model.save(path); if only model.json was lost, the model cannot be "
            "recovered: " + _SAVE_AGAIN
        )
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file} is damaged: it is not valid JSON ({err}). {_SAVE_AGAIN}") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("class"), str):
        raise ValueError(
            f"{file} is damaged or not an scvae model file: it names no model 'class'. "
            + _SAVE_AGAIN
        )
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{file} has format_version {version!r}, newer than this scvae reads "
            f"({FORMAT_VERSION}); upgrade scvae to load it."
        )
    return meta


def _read_tensors(path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    file = path / WEIGHTS_FILE
    legacy = path / f"{meta['class'].lower()}.npz"  # PPCA and GMM before format_version 1
    if not file.is_file() and legacy.is_file():
        file = legacy
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} is missing: {path} holds the model's options but not its parameters "
            f"(an interrupted save, or a copy that left {WEIGHTS_FILE} out). {_SAVE_AGAIN}"
        )
    try:
        if file.suffix == ".npz":
            with np.load(file) as arrays:
                state = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch/zip/pickle raise many kinds for a damaged file
        raise ValueError(
            f"{file} is damaged or truncated and cannot be read ({type(err).__name__}: "
            f"{str(err)[:200]}). {_SAVE_AGAIN}"
        ) from err
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{file} is damaged: it does not hold named tensors. {_SAVE_AGAIN}")
    return dict(state)


def read_directory(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a directory written by :func:`save_directory` (or an older scvae).

    Parameters
    ----------
    path
        The saved-model directory.

    Returns
    -------
    meta, tensors
        The content of ``model.json`` and the tensors of ``model.pt`` (on the CPU).

    Raises
    ------
    FileNotFoundError
        The directory, ``model.json`` or ``model.pt`` is missing (the message names it).
    NotADirectoryError
        ``path`` is a file.
    ValueError
        ``model.json`` or ``model.pt`` is damaged: invalid JSON, no ``"class"``, a truncated
        or unreadable weights file (the message names the file and what to do).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No saved scvae model at {path}: the directory does not exist.")
    if not path.is_dir():
        raise NotADirectoryError(
            f"{path} is a file; a saved scvae model is a directory (with {META_FILE} and "
            f"{WEIGHTS_FILE}) written by model.save(path)."
        )
    meta = _read_meta_file(path)
    return meta, _read_tensors(path, meta)


# ---------------------------------------------------------------------------------- the mixin
class SavedModel:
    """``save`` and ``load`` for a model class, through one directory format.

    Every subclass is registered by its class name, so that ``Base.load(path)`` returns an
    instance of the subclass that was saved (``VAEModel.load`` gives a ``ZINBVAE``) and
    ``Sub.load`` refuses a directory holding another model. A subclass implements:

    * ``_save_meta() -> dict``: its JSON-safe state (options, setup, history);
    * ``_save_tensors() -> dict[str, Tensor]``: its parameters;
    * classmethod ``_restore(meta, tensors, adata)``: the model rebuilt from both.
    """

    _registry: ClassVar[dict[str, type[SavedModel]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        SavedModel._registry[cls.__name__] = cls

    def _save_meta(self) -> dict[str, Any]:
        raise NotImplementedError

    def _save_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def _restore(
        cls: type[M], meta: dict[str, Any], tensors: dict[str, torch.Tensor], adata: Any
    ) -> M:
        raise NotImplementedError

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Save the model into a directory (``model.json`` and ``model.pt``), atomically.

        Parameters
        ----------
        path
            Directory to create.
        overwrite
            Replace an existing non-empty directory.

        Raises
        ------
        FileExistsError
            ``path`` exists (and ``overwrite`` is False).
        """
        meta = {"class": type(self).__name__, **self._save_meta()}
        save_directory(path, overwrite=overwrite, meta=meta, tensors=self._save_tensors())

    @classmethod
    def load(cls: type[M], path: str | Path, adata: Any = None) -> M:
        """Load a model written by :meth:`save`.

        Parameters
        ----------
        path
            Directory written by :meth:`save`.
        adata
            Optional AnnData that becomes the default for the getters (validated against
            what the model was trained on).

        Raises
        ------
        FileNotFoundError, ValueError
            A missing or damaged directory (see :func:`read_directory`), or one holding
            another kind of model.
        """
        meta, tensors = read_directory(path)
        name = meta["class"]
        target = SavedModel._registry.get(name)
        if target is None:
            raise ValueError(f"{path} holds a {name!r}, a model this version of scvae lacks.")
        if not issubclass(target, cls):
            raise ValueError(
                f"{path} holds a {name}, not a {cls.__name__}; load it with "
                f"scvae.{name}.load(path)."
            )
        return target._restore(meta, tensors, adata)


# ------------------------------------------------------------------ before the one load path
def prepare_directory(path: str | Path, *, overwrite: bool) -> Path:
    """Create ``path`` for a save; refuse a non-empty one unless ``overwrite``.

    Not atomic: use :func:`save_directory` (kept until every model is ported).
    """
    path = Path(path)
    if path.exists() and not overwrite and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True.")
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_meta(path: str | Path) -> tuple[Path, dict]:
    """The directory and its ``model.json`` (use :func:`read_directory`; kept until ported)."""
    path = Path(path)
    return path, _read_meta_file(path)
