"""The one saved-model format (scvae.models._io): atomic saves, JSON-safe options, clear errors
for damaged directories, class dispatch, and directories written by older versions."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from anndata import AnnData

import scvae
from scvae.models import _io
from scvae.models._io import SavedModel, json_safe, read_directory, save_directory


@pytest.fixture(scope="module")
def small() -> AnnData:
    return scvae.datasets.simulate(n_cells=80, n_genes=20, n_batches=1, seed=3)


@pytest.fixture(scope="module")
def ppca(small: AnnData) -> scvae.PPCA:
    return scvae.PPCA(small, n_latent=np.int64(3)).fit(seed=np.int64(1))


@pytest.fixture(scope="module")
def gmm(small: AnnData) -> scvae.GMM:
    embedded = small.copy()
    embedded.obsm["X_e"] = np.random.default_rng(0).normal(size=(small.n_obs, 2))
    return scvae.GMM(embedded, use_rep="X_e", n_components=np.int64(2), n_init=np.int64(2)).fit()


def _entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _tree(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


# ---------------------------------------------------------------------------- round trips
def test_numpy_typed_options_save_and_load(ppca: scvae.PPCA, gmm: scvae.GMM, small, tmp_path):
    ppca.save(tmp_path / "p")
    gmm.save(tmp_path / "g")
    assert _entries(tmp_path) == ["g", "p"]  # no staging directory left beside
    assert _entries(tmp_path / "p") == ["model.json", "model.pt"]
    meta = json.loads((tmp_path / "p" / "model.json").read_text())
    assert meta["class"] == "PPCA" and meta["format_version"] == 1
    assert meta["config"] == {"n_latent": 3, "log_normalize": True, "ddof": 0}
    loaded = scvae.PPCA.load(tmp_path / "p", adata=small)
    assert loaded.config == ppca.config and loaded.seed == 1
    np.testing.assert_allclose(loaded.get_latent(), ppca.get_latent(), rtol=1e-6)
    back = scvae.GMM.load(tmp_path / "g")
    assert back.config == gmm.config and back.config.n_init == 2
    torch.testing.assert_close(back.estimate.means, gmm.estimate.means)


def test_one_load_path_dispatches_on_the_saved_class(ppca: scvae.PPCA, tmp_path) -> None:
    ppca.save(tmp_path / "p")
    assert isinstance(SavedModel.load(tmp_path / "p"), scvae.PPCA)
    with pytest.raises(ValueError, match=r"holds a PPCA, not a GMM.*scvae\.PPCA\.load"):
        scvae.GMM.load(tmp_path / "p")


def test_json_safe_converts_numpy_tuples_paths_and_names_the_bad_key() -> None:
    value = {"a": np.int64(2), "b": (1, np.float32(0.5)), "c": Path("/x"), "d": np.arange(3)}
    assert json_safe(value) == {"a": 2, "b": [1, 0.5], "c": "/x", "d": [0, 1, 2]}
    assert type(json_safe(np.bool_(True))) is bool
    with pytest.raises(TypeError, match=r"'config\.f'.*object"):
        json_safe({"config": {"f": object()}}, "meta")
    with pytest.raises(TypeError, match="JSON keys must be strings"):
        json_safe({1: 2})


def test_a_value_that_is_not_json_safe_writes_nothing(tmp_path) -> None:
    with pytest.raises(TypeError, match="'option'"):
        save_directory(
            tmp_path / "m", overwrite=False, meta={"class": "X", "option": {1, 2}}, tensors={}
        )
    with pytest.raises(TypeError, match="tensor 'w'"):
        save_directory(tmp_path / "m", overwrite=False, meta={"class": "X"}, tensors={"w": 1})
    assert _entries(tmp_path) == []


# ------------------------------------------------------------------------------ atomicity
def _fail_on_second_fsync(monkeypatch) -> None:
    calls = []
    real = os.fsync

    def failing(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # model.pt flushed, model.json about to be
            raise OSError(28, "No space left on device")
        real(fd)

    monkeypatch.setattr(_io.os, "fsync", failing)


def test_a_failure_mid_save_leaves_nothing(ppca: scvae.PPCA, tmp_path, monkeypatch) -> None:
    _fail_on_second_fsync(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        ppca.save(tmp_path / "p")
    assert _entries(tmp_path) == []


def test_a_failed_overwrite_keeps_the_old_model(ppca, gmm, tmp_path, monkeypatch) -> None:
    gmm.save(tmp_path / "m")
    before = _tree(tmp_path / "m")
    _fail_on_second_fsync(monkeypatch)
    with pytest.raises(OSError):
        ppca.save(tmp_path / "m", overwrite=True)
    assert _entries(tmp_path) == ["m"] and _tree(tmp_path / "m") == before
    monkeypatch.undo()
    ppca.save(tmp_path / "m", overwrite=True)
    assert _entries(tmp_path) == ["m"]
    assert isinstance(SavedModel.load(tmp_path / "m"), scvae.PPCA)


def test_existing_targets_are_refused_unless_overwrite(ppca: scvae.PPCA, tmp_path) -> None:
    ppca.save(tmp_path / "p")
    before = _tree(tmp_path / "p")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ppca.save(tmp_path / "p")
    assert _tree(tmp_path / "p") == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        ppca.save(tmp_path / "file", overwrite=True)
    with pytest.raises(NotADirectoryError, match="is a file"):
        ppca.save(tmp_path / "file" / "p")
    (tmp_path / "empty").mkdir()
    ppca.save(tmp_path / "empty")  # an empty directory is fine, as before
    assert _entries(tmp_path / "empty") == ["model.json", "model.pt"]


def test_saved_files_follow_the_umask(ppca: scvae.PPCA, tmp_path) -> None:
    old = os.umask(0o022)
    try:
        ppca.save(tmp_path / "p")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "p").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "p" / "model.pt").stat().st_mode) == 0o644


# ------------------------------------------------------------------------- damaged input
@pytest.fixture()
def saved(ppca: scvae.PPCA, tmp_path) -> Path:
    ppca.save(tmp_path / "p")
    return tmp_path / "p"


def test_truncated_weights_name_the_file(saved: Path) -> None:
    weights = saved / "model.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"model\.pt is damaged or truncated.*Save the model"):
        scvae.PPCA.load(saved)


def test_missing_weights_name_the_file(saved: Path) -> None:
    (saved / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.pt is missing"):
        scvae.PPCA.load(saved)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"class": "PPCA", "config"', r"model\.json is damaged: it is not valid JSON"),
        ('{"config": {}}', r"model\.json is damaged or not an scvae model file.*'class'"),
        ("[1, 2]", r"model\.json is damaged or not an scvae model file"),
        (b"\xff\xfe\x00", r"model\.json is damaged: it is not valid JSON"),
        ('{"class": "PPCA", "format_version": 99}', "upgrade scvae"),
    ],
    ids=["truncated", "no-class", "not-a-dict", "binary", "newer"],
)
def test_corrupt_model_json_names_the_file(saved: Path, content, message) -> None:
    meta = saved / "model.json"
    meta.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message):
        scvae.PPCA.load(saved)


def test_missing_model_json_or_directory(saved: Path, tmp_path) -> None:
    (saved / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.json is missing"):
        scvae.PPCA.load(saved)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_directory(tmp_path / "nowhere")
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        read_directory(tmp_path / "f")


def test_unknown_class_is_refused(saved: Path) -> None:
    meta = json.loads((saved / "model.json").read_text())
    (saved / "model.json").write_text(json.dumps({**meta, "class": "FancyVAE"}))
    with pytest.raises(ValueError, match="'FancyVAE'"):
        SavedModel.load(saved)


# -------------------------------------------------------------------- older directories
def test_directories_of_the_previous_format_still_load(ppca, gmm, small, tmp_path) -> None:
    """PPCA and GMM used to write ``ppca.npz``/``gmm.npz`` and no format_version."""
    fitted = ppca.estimate
    old = tmp_path / "old_ppca"
    old.mkdir()
    np.savez(
        old / "ppca.npz",
        **{k: getattr(fitted, k).numpy() for k in _ppca_tensors()},
    )
    (old / "model.json").write_text(
        json.dumps(
            {
                "class": "PPCA",
                "config": {"n_latent": 3, "log_normalize": True, "ddof": 0},
                "setup": ppca.setup.to_dict(),
                "n_samples": fitted.n_samples,
            }
        )
    )
    loaded = scvae.PPCA.load(old, adata=small)
    assert loaded.seed is None
    np.testing.assert_allclose(loaded.get_latent(), ppca.get_latent(), rtol=1e-6)

    params = gmm.estimate
    old = tmp_path / "old_gmm"
    old.mkdir()
    names = ("weights", "means", "covariances", "precisions_cholesky")
    np.savez(old / "gmm.npz", **{k: getattr(params, k).numpy() for k in names})
    config = {**gmm.config.to_dict()}
    (old / "model.json").write_text(
        json.dumps(
            {
                "class": "GMM",
                "config": config,
                "seed": 0,
                "covariance_type": params.covariance_type,
                "log_likelihood_history": params.log_likelihood_history,
                "converged": params.converged,
                "n_iter": params.n_iter,
                "lower_bound": params.lower_bound,
                "model_selection": params.model_selection,
            }
        )
    )
    back = scvae.GMM.load(old)
    torch.testing.assert_close(back.estimate.covariances, params.covariances)


def _ppca_tensors() -> tuple[str, ...]:
    return ("mean", "W", "sigma2", "eigenvalues", "total_variance")
