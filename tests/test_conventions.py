"""One convention across the public API, checked on the signatures (as scanpy checks its own)."""

from __future__ import annotations

import inspect
import typing

import pytest

import scvae

WRITERS = [
    "zinbvae",
    "nbvae",
    "poissonvae",
    "gaussianvae",
    "ppca",
    "factor_analysis",
    "gmm",
    "gmvae",
    "ssvae",
]
VAE_TOOLS = {
    "zinbvae": scvae.ZINBVAE,
    "nbvae": scvae.NBVAE,
    "poissonvae": scvae.PoissonVAE,
    "gaussianvae": scvae.GaussianVAE,
    "gmvae": scvae.GMVAE,
    "ssvae": scvae.SSVAE,
}
MODELS = [
    scvae.ZINBVAE,
    scvae.NBVAE,
    scvae.PoissonVAE,
    scvae.GaussianVAE,
    scvae.PPCA,
    scvae.FactorAnalysis,
    scvae.GMM,
    scvae.GMVAE,
    scvae.SSVAE,
]
#: options with a fixed set of values: annotated with Literal wherever they appear
CHOICES = {"dispersion", "library", "covariance_type", "backend", "ddof", "label_prior"}


def _params(func) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(func).parameters)


def _annotation(func, name: str):
    return typing.get_type_hints(func, globalns=vars(inspect.getmodule(func))).get(name)


@pytest.mark.parametrize("name", WRITERS)
def test_tl_writers_take_adata_then_keyword_options_key_added_copy(name: str) -> None:
    params = _params(getattr(scvae.tl, name))
    first, *rest = params.values()
    assert first.name == "adata" and first.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest)
    for option in ("key_added", "copy", "return_model"):
        assert option in params, f"tl.{name} lacks {option}"
    assert params["copy"].default is False


@pytest.mark.parametrize(("name", "cls"), VAE_TOOLS.items())
def test_vae_one_liners_expose_the_model_and_every_fit_option(name: str, cls) -> None:
    tool = _params(getattr(scvae.tl, name))
    model_options = set(_params(cls.__init__)) - {"self", "adata"}
    fit_options = set(_params(cls.fit)) - {"self", "callbacks"}
    missing = (model_options | fit_options) - set(tool)
    assert not missing, f"tl.{name} hides {sorted(missing)}"
    for option in model_options:  # the same defaults as the class
        assert tool[option].default == _params(cls.__init__)[option].default, option
    for option in fit_options:
        assert tool[option].default == _params(cls.fit)[option].default, option


@pytest.mark.parametrize("cls", MODELS)
def test_models_share_one_api(cls) -> None:
    for method in ("fit", "get_latent", "write_latent", "marginal_log_likelihood", "uns_params"):
        assert callable(getattr(cls, method, None)), f"{cls.__name__} lacks {method}"
    init = list(_params(cls.__init__).values())[1:]
    assert init[0].name == "adata"
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in init[1:])
    for getter in ("get_latent", "marginal_log_likelihood"):
        adata = _params(getattr(cls, getter))["adata"]
        assert adata.default is None, f"{cls.__name__}.{getter}(adata=None) uses the training data"
    assert "key_added" in _params(cls.write_latent)
    assert list(_params(cls.save)) == ["self", "path", "overwrite"]
    assert list(_params(cls.load))[:2] == ["path", "adata"]
    assert all(
        p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(_params(cls.fit).values())[1:]
    )


def _public_callables():
    for name in scvae.tl.__all__:
        yield f"tl.{name}", getattr(scvae.tl, name)
    for cls in MODELS:
        yield cls.__name__, cls
        for attr, member in inspect.getmembers(cls, callable):
            if not attr.startswith("_") and getattr(member, "__module__", "").startswith("scvae"):
                yield f"{cls.__name__}.{attr}", member


@pytest.mark.parametrize(("name", "func"), list(_public_callables()))
def test_every_public_callable_has_a_numpydoc_docstring(name: str, func) -> None:
    doc = inspect.getdoc(func)
    assert doc, f"{name} has no docstring"
    target = func.__init__ if inspect.isclass(func) else func
    named = [p for p in _params(target) if p not in ("self", "cls")]
    if inspect.isclass(func):
        doc = inspect.getdoc(func)  # the class docstring documents the constructor
    if len(named) > 1:
        assert (
            "Parameters\n----------" in doc or "See :class:" in doc or "Same parameters" in doc
        ), f"{name} documents no parameters"


def test_fixed_choices_are_literal_everywhere() -> None:
    offenders = []
    for name, func in _public_callables():
        target = func.__init__ if inspect.isclass(func) else func
        for option in set(_params(target)) & CHOICES:
            annotation = _annotation(target, option)
            if typing.get_origin(annotation) is not typing.Literal:
                offenders.append(f"{name}({option}: {annotation})")
    assert offenders == []


def test_the_model_classes_import_no_lightning() -> None:
    """Only scvae.train builds a Trainer: models, getters and writers work without Lightning."""
    import json
    import subprocess
    import sys

    probe = (
        "import sys, json\nimport scvae.models, scvae.data, scvae.minibatch, scvae.module.vae\n"
        "print(json.dumps('lightning' in sys.modules or 'lightning.pytorch' in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) is False
