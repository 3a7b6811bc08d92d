"""The scanpy-style one-liners (``scvae.tl.zinbvae`` and friends) and the scanpy step after."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

import scvae
from scvae.models._vae import VAEModel

FIT_OPTIONS = (
    "max_epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "train_size",
    "early_stopping",
    "patience",
    "n_steps_kl_warmup",
    "seed",
    "accelerator",
    "devices",
    "progress_bar",
)
TOOLS = {
    "zinbvae": scvae.ZINBVAE,
    "nbvae": scvae.NBVAE,
    "poissonvae": scvae.PoissonVAE,
    "gaussianvae": scvae.GaussianVAE,
}


@pytest.fixture
def adata():
    return scvae.datasets.simulate(n_cells=60, n_genes=20, n_batches=2, seed=0)


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_every_option_is_exposed_with_the_models_default(name) -> None:
    tool, model_class = getattr(scvae.tl, name), TOOLS[name]
    params = inspect.signature(tool).parameters
    fit = inspect.signature(VAEModel.fit).parameters
    init = inspect.signature(model_class.__init__).parameters
    for option in FIT_OPTIONS:
        assert params[option].default == fit[option].default, option
        assert option in tool.__doc__, option
    for option, param in init.items():
        if option not in ("self", "adata"):
            assert params[option].default == param.default, option
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(params.values())[1:])


def test_fit_options_reach_fit(adata) -> None:
    scvae.tl.nbvae(
        adata,
        batch_key="batch",
        n_latent=3,
        max_epochs=3,
        batch_size=16,
        lr=2e-3,
        weight_decay=0.0,
        train_size=0.8,
        patience=4,
        n_steps_kl_warmup=5,
        seed=7,
        accelerator="cpu",
        devices=1,
        progress_bar=False,
        key_added="X_scvi",
    )
    assert adata.obsm["X_scvi"].shape == (60, 3) and "X_X_scvi" not in adata.obsm
    params = adata.uns["scvi"]["params"]
    assert params["batch_size"] == 16 and params["lr"] == pytest.approx(2e-3)
    assert params["weight_decay"] == 0.0 and params["train_size"] == pytest.approx(0.8)
    assert params["patience"] == 4 and params["n_steps_kl_warmup"] == 5
    assert params["seed"] == 7 and params["max_epochs"] == 3


def test_view_and_bad_key_fail_before_training(adata, monkeypatch) -> None:
    def no_fit(self, **kwargs):
        raise AssertionError("trained before checking the arguments")

    monkeypatch.setattr(VAEModel, "fit", no_fit)
    before = (set(adata.obsm), set(adata.uns))
    view = adata[:30]
    with pytest.raises(ValueError, match="copy=True"):
        scvae.tl.zinbvae(view)
    with pytest.raises(ValueError, match="key_added"):
        scvae.tl.zinbvae(adata, key_added="")
    assert (set(adata.obsm), set(adata.uns)) == before


def test_copy_of_a_view_returns_model(adata) -> None:
    view = adata[:40]
    result, model = scvae.tl.poissonvae(
        view, max_epochs=2, progress_bar=False, copy=True, return_model=True
    )
    assert result.obsm["X_poissonvae"].shape == (40, 10) and isinstance(model, scvae.PoissonVAE)
    assert "X_poissonvae" not in adata.obsm


def test_leiden_on_an_embedding_after_install() -> None:
    """``sc.tl.leiden(adata)`` after ``sc.pp.neighbors`` needs leidenalg: a dependency."""
    sc = pytest.importorskip("scanpy")
    rng = np.random.default_rng(0)
    adata = scvae.datasets.simulate(n_cells=60, n_genes=10, seed=0)
    centers = np.repeat(np.array([[0.0, 0.0], [8.0, 8.0]]), 30, axis=0)
    adata.obsm["X_zinbvae"] = centers + rng.normal(size=(60, 2))
    sc.pp.neighbors(adata, use_rep="X_zinbvae", n_neighbors=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scanpy: the default will be igraph
        sc.tl.leiden(adata)  # as every scanpy tutorial: the default flavor, leidenalg
    assert adata.obs["leiden"].nunique() >= 2
