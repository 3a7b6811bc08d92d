"""The ``scvae`` command end to end, and its one-line errors."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
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


@pytest.fixture
def h5ad_with_covariates(tmp_path):
    path = tmp_path / "in.h5ad"
    adata = scvae.datasets.simulate(n_cells=80, n_genes=40, n_batches=2, seed=2)
    rng = np.random.default_rng(0)
    adata.obs["donor"] = rng.choice(["d1", "d2"], adata.n_obs)
    adata.obs["chemistry"] = rng.choice(["v2", "v3"], adata.n_obs)
    adata.obs["pct_mt"] = rng.normal(5.0, 2.0, adata.n_obs)
    adata.write_h5ad(path)
    return path


def test_fit_with_covariates_records_them(h5ad_with_covariates, tmp_path) -> None:
    out = tmp_path / "out.h5ad"
    argv = [
        "fit", str(h5ad_with_covariates), "-o", str(out), "--batch-key", "batch",
        "--categorical-covariate-keys", "donor,chemistry", "--continuous-covariate-keys",
        "pct_mt", "--encode-covariates", "--n-latent", "3", "--max-epochs", "2", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    params = ad.read_h5ad(out).uns["zinbvae"]["params"]
    assert list(params["categorical_covariate_keys"]) == ["donor", "chemistry"]
    assert list(params["continuous_covariate_keys"]) == ["pct_mt"]
    assert bool(params["encode_covariates"]) is True


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--continuous-covariate-keys", "donor"],
            "adata.obs['donor'] (continuous_covariate_keys)",
        ),
        (["--categorical-covariate-keys", "nope"], "'nope' is not a column of adata.obs"),
        (["--categorical-covariate-keys", "donor,"], "comma-separated obs column names"),
        (["--model", "ppca", "--categorical-covariate-keys", "donor"], "does not apply"),
    ],
)
def test_bad_covariates_one_line_error(h5ad_with_covariates, tmp_path, capsys, extra, message):
    out = tmp_path / "out.h5ad"
    argv = ["fit", str(h5ad_with_covariates), "-o", str(out), "--quiet", *extra]
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not out.exists()


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


def test_factor_analysis_via_cli(h5ad, tmp_path, capsys) -> None:
    out = tmp_path / "out.h5ad"
    assert main(["fit", str(h5ad), "-o", str(out), "--model", "fa", "--n-latent", "3"]) == 0
    result = ad.read_h5ad(out)
    assert result.obsm["X_fa"].shape == (80, 3) and result.varm["FA_loadings"].shape == (40, 3)
    assert "uns['fa']" in capsys.readouterr().out
    code = main(["fit", str(h5ad), "-o", str(out), "--model", "fa", "--max-epochs", "2"])
    assert code == 2 and "--max-epochs does not apply to --model fa" in capsys.readouterr().err


# ------------------------------------------------------------------ issue 11: the command line
def _one_line_error(capsys, code: int, *, status: int = 2) -> str:
    err = capsys.readouterr().err
    assert code == status, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def no_read(monkeypatch):
    """Fail the test if the command reads its input (so: before any training)."""

    def refuse(path):
        raise AssertionError(f"read {path} before checking the outputs")

    monkeypatch.setattr("scvae.cli._read", refuse)


@pytest.mark.parametrize(
    ("setup", "argv", "message"),
    [
        (lambda t: (t / "out").mkdir(), ["-o", "{t}/out"], "is a directory"),
        (lambda t: (t / "f").write_text("x"), ["-o", "{t}/f/out.h5ad"], "is a file, not a"),
        (lambda t: (t / "f").write_text("x"), ["-o", "{t}/f/a/b.h5ad"], "is a file, not a"),
        (
            lambda t: (t / "model").write_text("x"),
            ["-o", "{t}/o.h5ad", "--save-model", "{t}/model"],
            "is an existing file",
        ),
        (
            lambda t: (t / "model").mkdir() or (t / "model" / "x").write_text("x"),
            ["-o", "{t}/o.h5ad", "--save-model", "{t}/model"],
            "not empty",
        ),
        (
            lambda t: None,
            ["-o", "{t}/model/o.h5ad", "--save-model", "{t}/model"],
            "overlap",
        ),
        (lambda t: None, ["-o", "{t}/o.h5ad", "--model", "ppca", "--lr", "0.1"], "--lr does not"),
    ],
)
def test_fit_refuses_bad_outputs_before_reading(
    h5ad, tmp_path, capsys, no_read, setup, argv, message
) -> None:
    setup(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    code = main(["fit", str(h5ad), *[a.format(t=tmp_path) for a in argv]])
    err = _one_line_error(capsys, code)
    assert err.startswith("scvae: error:") and message in err
    assert sorted(tmp_path.rglob("*")) == before


def test_cluster_and_demo_refuse_a_directory_output(h5ad, tmp_path, capsys, no_read) -> None:
    (tmp_path / "out").mkdir()
    err = _one_line_error(capsys, main(["cluster", str(h5ad), "-o", str(tmp_path / "out")]))
    assert "is a directory" in err
    (tmp_path / "demo.png").mkdir()
    err = _one_line_error(capsys, main(["demo", "-o", str(tmp_path / "demo.h5ad")]))
    assert "demo.png is a directory" in err
    assert not (tmp_path / "demo.h5ad").exists()


def test_unwritable_output_directory(h5ad, tmp_path, capsys, no_read, monkeypatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    # root (CI) may write anywhere: the permission check itself is what is tested
    real_access = os.access
    monkeypatch.setattr(
        "scvae.cli.os.access",
        lambda path, mode: False if Path(path) == locked else real_access(path, mode),
    )
    err = _one_line_error(capsys, main(["fit", str(h5ad), "-o", str(locked / "o.h5ad")]))
    assert "not writable" in err
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_output_files_respect_the_umask(h5ad, tmp_path, umask, mode) -> None:
    old = os.umask(umask)
    try:
        out, saved, clustered = tmp_path / "o.h5ad", tmp_path / "model", tmp_path / "c.h5ad"
        argv = ["fit", str(h5ad), "-o", str(out), "--model", "ppca", "--n-latent", "3"]
        assert main([*argv, "--save-model", str(saved)]) == 0
        assert main(["cluster", str(out), "-o", str(clustered), "--use-rep", "X_ppca"]) == 0
    finally:
        os.umask(old)
    for path in (out, clustered, *saved.iterdir()):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    # an existing output keeps its own permissions
    os.chmod(clustered, 0o640)
    assert main(["cluster", str(out), "-o", str(clustered), "--use-rep", "X_ppca"]) == 0
    assert stat.S_IMODE(clustered.stat().st_mode) == 0o640


def test_fit_options_reach_the_model(h5ad, tmp_path, capsys) -> None:
    out, saved = tmp_path / "o.h5ad", tmp_path / "model"
    code = main(
        [
            "fit",
            str(h5ad),
            "-o",
            str(out),
            "--model",
            "nb",
            "--n-top-genes",
            "25",
            "--max-epochs",
            "3",
            "--batch-size",
            "32",
            "--lr",
            "0.005",
            "--train-size",
            "0.75",
            "--patience",
            "7",
            "--accelerator",
            "cpu",
            "--devices",
            "1",
            "--seed",
            "3",
            "--key-added",
            "X_scvi",
            "--save-model",
            str(saved),
            "--cluster",
            "2",
            "--quiet",
        ]
    )
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0
    result, original = ad.read_h5ad(out), ad.read_h5ad(h5ad)
    params = result.uns["scvi"]["params"]
    assert params["batch_size"] == 32 and params["lr"] == pytest.approx(0.005)
    assert params["train_size"] == pytest.approx(0.75) and params["patience"] == 7
    assert params["max_epochs"] == 3 and params["seed"] == 3
    # every gene stays in the output; the model saw the 25 highly variable ones
    assert result.n_vars == original.n_vars and result.var["highly_variable"].sum() == 25
    hvg = result[:, result.var["highly_variable"].to_numpy()].copy()
    loaded = scvae.NBVAE.load(saved)
    np.testing.assert_allclose(loaded.get_latent(hvg), result.obsm["X_scvi"], rtol=1e-5)
    assert result.obsm["X_scvi"].shape == (80, 10) and "X_X_scvi" not in result.obsm
    # the success line names every slot written, and nothing else is new
    new = {f"obsm['{k}']" for k in set(result.obsm) - set(original.obsm)}
    new |= {f"uns['{k}']" for k in set(result.uns) - set(original.uns)}
    new |= {f"obs['{k}']" for k in set(result.obs) - set(original.obs)}
    new |= {f"var['{k}']" for k in set(result.var) - set(original.var)}
    assert new == {
        "obsm['X_scvi']",
        "uns['scvi']",
        "var['highly_variable']",
        "obs['gmm']",
        "obsm['gmm_proba']",
        "uns['gmm']",
    }
    assert all(name in line for name in new), line
    assert str(saved) in line and "(2 clusters)" in line and "(25 genes)" in line


def test_n_top_genes_uses_the_counts_layer(tmp_path) -> None:
    adata = scvae.datasets.simulate(n_cells=60, n_genes=30, seed=1)
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X.log1p()
    path, out = tmp_path / "in.h5ad", tmp_path / "o.h5ad"
    adata.write_h5ad(path)
    argv = ["fit", str(path), "-o", str(out), "--model", "ppca", "--n-top-genes", "12"]
    assert main([*argv, "--layer", "counts", "--n-latent", "2"]) == 0
    result = ad.read_h5ad(out)
    assert result.var["highly_variable"].sum() == 12 and result.obsm["X_ppca"].shape == (60, 2)
    np.testing.assert_array_equal(
        result.layers["counts"].toarray(), adata.layers["counts"].toarray()
    )


@pytest.mark.parametrize("kind", ["int", "float", "categorical-int"])
def test_numeric_batch_column(tmp_path, kind) -> None:
    adata = scvae.datasets.simulate(n_cells=60, n_genes=30, n_batches=2, seed=4)
    codes = adata.obs["batch"].cat.codes.to_numpy()
    adata.obs["batch"] = {
        "int": codes + 1,
        "float": codes + 1.0,
        "categorical-int": pd.Categorical(codes + 1),
    }[kind]
    path, out, saved = tmp_path / "in.h5ad", tmp_path / "o.h5ad", tmp_path / "m"
    adata.write_h5ad(path)
    argv = ["fit", str(path), "-o", str(out), "--batch-key", "batch", "--max-epochs", "2"]
    assert main([*argv, "--quiet", "--save-model", str(saved), "--n-latent", "2"]) == 0
    result = ad.read_h5ad(out)
    loaded = scvae.ZINBVAE.load(saved)
    np.testing.assert_allclose(loaded.get_latent(result), result.obsm["X_zinbvae"], rtol=1e-5)


def test_cluster_defaults_to_the_zinbvae_embedding(tmp_path, capsys) -> None:
    adata = scvae.datasets.simulate(n_cells=60, n_genes=10, seed=0)
    adata.obsm["X_zinbvae"] = np.random.default_rng(0).normal(size=(60, 2))
    path, out = tmp_path / "in.h5ad", tmp_path / "o.h5ad"
    adata.write_h5ad(path)
    assert main(["cluster", str(path), "-o", str(out), "--n-components", "2"]) == 0
    line = capsys.readouterr().out
    assert ad.read_h5ad(out).uns["gmm"]["params"]["use_rep"] == "X_zinbvae"
    assert "obs['gmm'] (2 clusters), obsm['gmm_proba'], uns['gmm']" in line


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the message where no GPU is present"
)
def test_missing_gpu_is_one_line(h5ad, tmp_path, capsys) -> None:
    out = tmp_path / "o.h5ad"
    err = _one_line_error(capsys, main(["fit", str(h5ad), "-o", str(out), "--accelerator", "gpu"]))
    assert "no CUDA GPU" in err and not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required: COMMAND"),
        (["fitt"], "invalid choice: 'fitt'"),
        (["fit", "x.h5ad"], "required: -o/--output"),
        (["fit", "x", "-o", "y", "--n-latent", "0"], "--n-latent: must be an integer >= 1"),
        (["fit", "x", "-o", "y", "--n-latent", "2.5"], "--n-latent: expected an integer"),
        (["fit", "x", "-o", "y", "--max-epochs", "-3"], "--max-epochs: must be an integer >= 1"),
        (["fit", "x", "-o", "y", "--batch-size", "ten"], "--batch-size: expected an integer"),
        (["fit", "x", "-o", "y", "--lr", "nan"], "--lr: must be a positive number"),
        (["fit", "x", "-o", "y", "--train-size", "0"], "--train-size: must be in (0, 1]"),
        (["fit", "x", "-o", "y", "--train-size", "1.5"], "--train-size: must be in (0, 1]"),
        (["fit", "x", "-o", "y", "--devices", "0"], "--devices: expected 'auto'"),
        (["fit", "x", "-o", "y", "--accelerator", "tpu"], "--accelerator: invalid choice"),
        (["fit", "x", "-o", "y", "--n-top-genes", "-1"], "--n-top-genes: must be an integer"),
        (["fit", "x", "-o", "y", "--seed", "-1"], "--seed: must be an integer >= 0"),
        (["cluster", "x", "-o", "y", "--n-components", "0"], "--n-components: must be"),
        (["fit", "x", "-o", "y", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_argument_errors_are_one_line(capsys, argv, message) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and message in err and "error:" in err, err
    assert "usage:" not in err and "Traceback" not in err


def test_every_option_has_help() -> None:
    from scvae.cli import _parser

    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == {"fit", "cluster", "demo"}
    for name, sub in [("scvae", parser), *commands.choices.items()]:
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"scvae {scvae.__version__}"


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "demo.h5ad"
    argv = ["demo", "-o", str(out), "--max-epochs", "2", "--n-top-genes", "1000", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = ad.read_h5ad(out)
    assert result.n_vars == 1000 and {"X_zinbvae", "X_umap"} <= set(result.obsm)
    assert out.with_suffix(".png").stat().st_size > 0
    assert "trained 2 epochs" in printed
    for name in ("obsm['X_zinbvae']", "uns['zinbvae']", "obsm['X_umap']", "obsp['connectivities']"):
        assert name in printed
