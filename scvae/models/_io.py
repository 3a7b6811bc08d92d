"""The saved-model directory shared by every model: ``model.json`` plus a parameter file."""

from __future__ import annotations

import json
from pathlib import Path

META_FILE = "model.json"


def prepare_directory(path: str | Path, *, overwrite: bool) -> Path:
    """Create ``path`` for a save; refuse a non-empty one unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True.")
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_meta(path: str | Path) -> tuple[Path, dict]:
    """The directory and its ``model.json``; a clear error when it holds no saved model."""
    path = Path(path)
    if not (path / META_FILE).exists():
        raise FileNotFoundError(f"No saved scvae model in {path} (missing {META_FILE}).")
    return path, json.loads((path / META_FILE).read_text())
