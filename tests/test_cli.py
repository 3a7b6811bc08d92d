"""The ``scvae`` command end to end, and its one-line errors."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

import scvae
from scvae.cli import main


@pytest.fixture
def h5ad(tmp_path):
    path = tmp_path / "in.h5ad"
    scvae.datasets.simulate(n_cells=80, n_genes=40, n_batches=2, seed=2).write_h5ad(path)
    return path


def test_fit_writes_embedding_and_model(h5ad, tmp_path, capsys) -> None:
    out, saved = tmp_path / "out.h5ad", tmp_path / "model"
    code = main(
        [
            "fit",
            str(h5ad),
            "-o",
            str(out),
            "--model",
            "nb",
            "--batch-key",
            "batch",
            "--n-latent",
            "3",
            "--max-epochs",
            "2",
            "--seed",
            "1",
            "--save-model",
            str(saved),
            "--quiet",
        ]
    )
    assert code == 0
    result = ad.read_h5ad(out)
    assert result.obsm["X_nbvae"].shape == (80, 3)
    assert result.uns["nbvae"]["params"]["batch_key"] == "batch"
    loaded = scvae.NBVAE.load(saved)
    np.testing.assert_allclose(loaded.get_latent(result), result.obsm["X_nbvae"], rtol=1e-6)
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-key", "nope"], "batch_key='nope' is not a column"),
        (["--layer", "raw"], "layer='raw' is not in adata.layers"),
    ],
)
def test_bad_input_one_line_error_no_output(h5ad, tmp_path, capsys, extra, message) -> None:
    out = tmp_path / "out.h5ad"
    code = main(["fit", str(h5ad), "-o", str(out), "--max-epochs", "1", "--quiet", *extra])
    err = capsys.readouterr().err
    assert code != 0
    assert message in err and err.startswith("scvae: error:") and err.count("\n") == 1
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [h5ad]


def test_missing_file_via_entry_point(tmp_path) -> None:
    out = tmp_path / "out.h5ad"
    proc = subprocess.run(
        [sys.executable, "-m", "scvae.cli", "fit", str(tmp_path / "none.h5ad"), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_non_integer_counts_suggest_layer(tmp_path) -> None:
    adata = scvae.datasets.simulate(n_cells=40, n_genes=20, seed=0)
    adata.X = adata.X.log1p()
    path, out = tmp_path / "log.h5ad", tmp_path / "out.h5ad"
    adata.write_h5ad(path)
    proc = subprocess.run(
        [sys.executable, "-m", "scvae.cli", "fit", str(path), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "layer='counts'" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_fit_with_cluster_then_cluster_command(h5ad, tmp_path) -> None:
    out = tmp_path / "out.h5ad"
    assert (
        main(
            [
                "fit",
                str(h5ad),
                "-o",
                str(out),
                "--model",
                "ppca",
                "--n-latent",
                "4",
                "--cluster",
                "3",
            ]
        )
        == 0
    )
    result = ad.read_h5ad(out)
    assert result.obsm["X_ppca"].shape == (80, 4)
    assert list(result.obs["gmm"].cat.categories) == ["0", "1", "2"]
    assert result.obsm["gmm_proba"].shape == (80, 3)
    again = tmp_path / "again.h5ad"
    assert (
        main(
            [
                "cluster",
                str(out),
                "-o",
                str(again),
                "--use-rep",
                "X_ppca",
                "--n-components",
                "2",
                "--key-added",
                "k2",
            ]
        )
        == 0
    )
    second = ad.read_h5ad(again)
    assert second.obsm["k2_proba"].shape == (80, 2) and "gmm" in second.obs


def test_cluster_unknown_rep_is_one_line(h5ad, tmp_path, capsys) -> None:
    out = tmp_path / "out.h5ad"
    assert main(["cluster", str(h5ad), "-o", str(out), "--use-rep", "X_nope"]) == 2
    err = capsys.readouterr().err
    assert "use_rep='X_nope' is not in adata.obsm" in err and err.count("\n") == 1
    assert not out.exists()


def test_gaussian_model_via_cli(h5ad, tmp_path) -> None:
    out = tmp_path / "out.h5ad"
    code = main(
        [
            "fit",
            str(h5ad),
            "-o",
            str(out),
            "--model",
            "gaussian",
            "--max-epochs",
            "2",
            "--quiet",
            "--batch-key",
            "batch",
        ]
    )
    assert code == 0 and ad.read_h5ad(out).obsm["X_gaussianvae"].shape == (80, 10)
