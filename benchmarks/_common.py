"""Shared helpers of the benchmark scripts: docs sections, machine description, peak memory."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def markers(tool: str) -> tuple[str, str]:
    """The HTML comments that delimit the generated block of ``tool`` (a script name)."""
    return f"<!-- {tool}: begin generated -->", f"<!-- {tool}: end generated -->"


def write_section(generated: str, *, tool: str, heading: str, path: Path = DOCS) -> None:
    """Put ``generated`` between the markers of ``tool``, creating what is missing.

    The rest of the file, including hand-written text of the section outside the markers, is
    kept. A missing section is appended under ``heading``.

    Parameters
    ----------
    generated
        Markdown to place between the markers.
    tool
        Name of the benchmark script, e.g. ``"speed.py"``.
    heading
        The section's markdown heading line, e.g. ``"## Speed"``.
    path
        The markdown file (``docs/benchmarks.md``).
    """
    begin, end = markers(tool)
    block = f"{begin}\n\n{generated}\n\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    elif heading in text:
        head, rest = text.split(heading, 1)
        text = f"{head}{heading}\n\n{block}\n{rest}"
    else:
        text = f"{text.rstrip()}\n\n{heading}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def peak_rss_gb() -> float:
    """Peak resident memory of this process since it started its program, in GiB.

    ``VmHWM`` of ``/proc/self/status``: unlike ``getrusage``'s ``ru_maxrss``, which Linux keeps
    across ``execve`` (so a worker would report its parent's peak), it belongs to the address
    space of the running program. Falls back to ``ru_maxrss`` where /proc is missing.
    """
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB -> GiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
