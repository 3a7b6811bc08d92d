"""Imports are lazy: ``import scvae`` and the ``scvae`` command start without the heavy stack."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import scvae

HEAVY = ("torch", "lightning", "scanpy", "matplotlib", "sklearn")


def _modules_after(code: str) -> dict[str, bool]:
    """Which of HEAVY a fresh interpreter has imported after running ``code``."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_scvae_is_light() -> None:
    loaded = _modules_after("import scvae, scvae.tl, scvae.pl\nscvae.__version__")
    assert not loaded["lightning"] and not loaded["scanpy"] and not loaded["matplotlib"], loaded


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--version"], ["fit", "--help"], ["fit", "in.h5ad", "-o", "o", "--lr", "-1"]],
)
def test_cli_help_and_argument_errors_do_not_import_torch(argv) -> None:
    code = (
        "import contextlib, io\nfrom scvae.cli import main\nsink = io.StringIO()\n"
        "with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):\n"
        "    try:\n"
        f"        main({argv!r})\n"
        "    except SystemExit:\n"
        "        pass"
    )
    loaded = _modules_after(code)
    assert not any(loaded.values()), loaded


def test_lazy_attributes_resolve() -> None:
    from scvae.models import ZINBVAE
    from scvae.tl._vae import zinbvae

    assert scvae.ZINBVAE is ZINBVAE and scvae.tl.zinbvae is zinbvae
    for name in scvae.__all__:
        assert getattr(scvae, name) is not None, name
    for name in scvae.tl.__all__:
        assert callable(getattr(scvae.tl, name)), name
    assert callable(scvae.pl.history) and callable(scvae.metrics.ilisi)
    assert callable(scvae.datasets.simulate) and isinstance(scvae.__version__, str)
    assert set(scvae.__all__) <= set(dir(scvae)) and set(scvae.tl.__all__) <= set(dir(scvae.tl))
    namespace: dict = {}
    exec("from scvae import *", namespace)
    assert namespace["ZINBVAE"] is ZINBVAE and namespace["tl"] is scvae.tl
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        scvae.nope  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        scvae.tl.nope  # noqa: B018
