"""Turn the tutorial sources (jupytext percent ``.py``) into executed notebooks (``.ipynb``).

Usage, from anywhere::

    python tutorials/build_notebooks.py               # every tutorial
    python tutorials/build_notebooks.py pbmc3k.py     # some of them

Each ``NAME.py`` is read with jupytext, executed top to bottom in a fresh ``python3`` kernel
(ipykernel) with the tutorials folder as working directory, and written to ``NAME.ipynb``
with its outputs and figures. Edit the ``.py`` files, never the notebooks. The test
``tests/test_tutorials.py`` checks that both agree and that every notebook runs.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: files in this folder that are not tutorials
NOT_TUTORIALS = {Path(__file__).name}


def tutorial_sources() -> list[Path]:
    """The tutorial sources: every ``*.py`` in this folder except this script."""
    return sorted(p for p in HERE.glob("*.py") if p.name not in NOT_TUTORIALS)


def execute(notebook, *, cwd: Path = HERE, timeout: int = 1200):
    """Execute ``notebook`` (an nbformat NotebookNode) in place in a fresh python3 kernel."""
    from nbclient import NotebookClient

    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=timeout,
        resources={"metadata": {"path": str(cwd)}},
    )
    # figures inline in the notebook, whatever MPLBACKEND the caller has (CI sets Agg)
    env = {**os.environ, "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    client.execute(env=env)
    return notebook


def build(source: Path) -> float:
    """Execute one source and write its notebook next to it; return the seconds it took."""
    import jupytext
    import nbformat

    notebook = jupytext.read(source)
    start = time.perf_counter()
    execute(notebook, cwd=source.parent)
    seconds = time.perf_counter() - start
    notebook.metadata.pop("widgets", None)
    nbformat.write(notebook, source.with_suffix(".ipynb"))
    return seconds


def main(argv: list[str]) -> int:
    """Build the tutorials named in ``argv`` (all when empty)."""
    sources = [HERE / name for name in argv] if argv else tutorial_sources()
    for source in sources:
        seconds = build(source)
        print(f"{source.with_suffix('.ipynb').name}: executed in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
