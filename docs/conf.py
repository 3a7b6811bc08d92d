"""Sphinx configuration of the scvae documentation (MyST Markdown + myst-nb notebooks).

Build from the repository root (warnings are errors, as in CI)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The tutorial notebooks live in ``tutorials/`` at the repository root. At the start of every
build they are copied into ``docs/tutorials/`` (git-ignored) and rendered with the outputs
stored in them: nothing is executed here (a separate test executes the notebooks). No network
is used at build time (no intersphinx).
"""

from __future__ import annotations

import re
import shutil
import sys
from datetime import date
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # import scvae from the source tree when it is not installed

import sphinx.ext.autosummary  # noqa: E402

import scvae  # noqa: E402

# -- project -----------------------------------------------------------------------------------
project = "scvae"
author = "scvae maintainers"
copyright = f"{date.today().year}, {author}"
release = scvae.__version__
version = ".".join(release.split(".")[:2])

# -- extensions --------------------------------------------------------------------------------
extensions = [
    "myst_nb",  # MyST Markdown pages and .ipynb notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # numpydoc-style docstrings
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

# -- MyST and myst-nb --------------------------------------------------------------------------
myst_enable_extensions = [
    "amsmath",  # \begin{align} ... \end{align} blocks
    "dollarmath",  # $inline$ and $$display$$ math
    "colon_fence",
    "deflist",
]
myst_heading_anchors = 3
nb_execution_mode = "off"  # render the outputs stored in the notebooks; never execute here
nb_merge_streams = True  # one block per cell for consecutive stdout/stderr chunks
# Library warnings on stderr (tqdm, scanpy) carry paths of the machine that ran the notebook and
# say nothing to a reader; the notebooks themselves keep them.
nb_output_stderr = "remove"

# -- autodoc / autosummary / napoleon ----------------------------------------------------------
autosummary_generate = True
# Regenerate the API stubs on every build, so that a renamed or removed object leaves no stale
# page behind (a stale page would fail the build as "not included in any toctree").
shutil.rmtree(DOCS / "generated", ignore_errors=True)
autosummary_imported_members = False


def _first_sentence(doc: list[str], settings) -> str:
    """autosummary's one-line summary, without cutting a ``literal`` at a period inside it.

    Sphinx's ``extract_summary`` ends the first sentence at the first ". ", even inside inline
    code (``q(. | x)``, ``2 .. K``), which leaves an unterminated literal in the summary table
    and fails the build with "Inline literal start-string without end-string". When that
    happens, cut at the first ". " outside double backquotes instead.
    """
    summary = _extract_summary(doc, settings)
    if summary.count("``") % 2 == 0:
        return summary
    stanza = []
    for line in doc:
        if not line.strip():
            if stanza:
                break
            continue
        stanza.append(line.strip())
    text = " ".join(stanza)
    for match in re.finditer(r"\.(\s|$)", text):
        if text[: match.start()].count("``") % 2 == 0:
            return text[: match.start() + 1]
    return text


_extract_summary = sphinx.ext.autosummary.extract_summary
sphinx.ext.autosummary.extract_summary = _first_sentence
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autoclass_content = "class"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
add_module_names = False

# No network at build time: no intersphinx. References to outside objects (torch, AnnData,
# numpy) stay plain text; nitpicky mode stays off so they do not warn.
nitpicky = False

# -- HTML --------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = f"scvae {release}"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
html_show_sourcelink = False
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True

# -- tutorials: copy tutorials/*.ipynb into docs/tutorials/ ------------------------------------
TUTORIALS_SRC = ROOT / "tutorials"
TUTORIALS_DST = DOCS / "tutorials"
#: Reading order in the tutorials toctree; notebooks not listed here follow alphabetically.
TUTORIAL_ORDER = [
    "pbmc3k",
    "batch_integration",
    "label_transfer",
    "model_comparison",
    "diagnostics",
]
TOCTREE_MARKER = "<!-- tutorials: generated toctree entries -->"


def _sync_tutorials() -> list[str]:
    """Copy the notebooks (only when changed), drop stale copies; return names in order."""
    TUTORIALS_DST.mkdir(exist_ok=True)
    sources = {p.stem: p for p in sorted(TUTORIALS_SRC.glob("*.ipynb"))}
    for stale in TUTORIALS_DST.glob("*.ipynb"):
        if stale.stem not in sources:
            stale.unlink()
    for src in sources.values():
        dst = TUTORIALS_DST / src.name
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            shutil.copyfile(src, dst)
    ordered = [n for n in TUTORIAL_ORDER if n in sources]
    return ordered + [n for n in sources if n not in ordered]


TUTORIALS = _sync_tutorials()


def _tutorial_toctree(app, docname: str, source: list[str]) -> None:
    """Fill the marker in ``tutorials.md`` with the notebooks found in ``tutorials/``."""
    if docname == "tutorials" and TOCTREE_MARKER in source[0]:
        entries = "\n".join(f"tutorials/{name}" for name in TUTORIALS)
        source[0] = source[0].replace(TOCTREE_MARKER, entries)


def _reread_tutorials_page(app, env, added, changed, removed) -> list[str]:
    """Re-read ``tutorials.md`` on every build: the set of notebooks may have changed."""
    return ["tutorials"]


def setup(app) -> None:
    app.connect("source-read", _tutorial_toctree)
    app.connect("env-get-outdated", _reread_tutorials_page)
