"""The tutorials: each notebook agrees with its jupytext source, is executed, and runs again.

The notebooks in ``tutorials/`` are built from their percent-format ``.py`` sources by
``python tutorials/build_notebooks.py``. Here every notebook is checked against its source
(same cells, every code cell executed, no errors stored) and executed again from scratch in a
fresh ``python3`` kernel (ipykernel), top to bottom.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"


def _tutorial_sources() -> list[Path]:
    spec = importlib.util.spec_from_file_location(
        "build_notebooks", TUTORIALS / "build_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tutorial_sources()


SOURCES = _tutorial_sources()
NAMES = [p.stem for p in SOURCES]


def _cells(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_every_tutorial_has_a_notebook() -> None:
    assert {"pbmc3k", "batch_integration", "model_comparison", "diagnostics"} <= set(NAMES)
    missing = [p.name for p in SOURCES if not p.with_suffix(".ipynb").is_file()]
    assert not missing, f"run `python tutorials/build_notebooks.py` to build {missing}"
    orphans = {p.stem for p in TUTORIALS.glob("*.ipynb")} - set(NAMES)
    assert not orphans, f"notebooks without a .py source: {sorted(orphans)}"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_matches_its_source_and_was_executed(name: str) -> None:
    source = jupytext.read(TUTORIALS / f"{name}.py")
    notebook = nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)
    assert _cells(notebook) == _cells(source), (
        f"tutorials/{name}.ipynb is out of date with {name}.py: rebuild it with "
        f"`python tutorials/build_notebooks.py {name}.py`"
    )
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    counts = [cell.get("execution_count") for cell in code]
    assert counts == list(range(1, len(code) + 1)), "not executed top to bottom in one run"
    errors = [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert not errors
    assert notebook.cells[0].source.startswith("# "), "the first cell is the title"
    images = [o for cell in code for o in cell.outputs if "image/png" in o.get("data", {})]
    assert images, "the figures are stored in the notebook"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name: str) -> None:
    notebook = nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=1200,  # per cell; generous for a busy machine
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    env = {**os.environ, "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    client.execute(env=env)  # raises CellExecutionError with the failing cell and traceback
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs)
