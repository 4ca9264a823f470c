"""The header every results table carries: what made it (command, date, machine,
versions, git commit) and how it was measured, so that a figure can be reproduced.

>>> print(header("Inference speed", "python scripts/bench_inference.py", batch="1 and 32"))
... # doctest: +SKIP
# Inference speed
<BLANKLINE>
- command: `python scripts/bench_inference.py`
- date: 2026-11-22T10:00:00
- machine: AMD EPYC 7B13, 2 threads, no GPU
- versions: nasbert 0.1.0, torch 2.13.0+cpu, transformers 5.23.0, Python 3.11.7
- commit: 2889855
- batch: 1 and 32
"""

from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parent


def git_commit() -> str:
    """The short commit of the source tree nasbert runs from, marked when its code (the
    package, the scripts, the install) has uncommitted changes; results written by an
    earlier benchmark do not count. ``unknown`` outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=SOURCE.parent, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "nasbert",
                    "scripts", "setup.cfg", "pyproject.toml")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{commit} (with uncommitted changes)" if dirty else commit


def machine() -> str:
    import torch

    from nasbert.latency.measure import cpu_name

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu_name()}, {torch.get_num_threads()} threads, {gpu}"


def versions() -> str:
    import torch
    import transformers

    import nasbert

    return (f"nasbert {nasbert.__version__}, torch {torch.__version__}, transformers "
            f"{transformers.__version__}, Python {platform.python_version()}")


def provenance(command: str, **fields: str) -> list[str]:
    """The lines saying what made a table: command, date, machine, versions, commit;
    ``fields`` add lines (an underscore in a name reads as a space)."""
    lines = [f"- command: `{command}`",
             f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
             f"- machine: {machine()}", f"- versions: {versions()}",
             f"- commit: {git_commit()}"]
    return lines + [f"- {name.replace('_', ' ')}: {value}" for name, value in fields.items()]


def header(title: str, command: str, **fields: str) -> str:
    """A results file's title and its provenance lines."""
    return "\n".join([f"# {title}", "", *provenance(command, **fields)]) + "\n"


def per_machine(path: str | Path, preamble: str, section: str) -> str:
    """A results file that keeps one section per CPU: ``preamble`` (the title and what
    every section shares), then ``section`` (the lines measured here, headed by nothing)
    under a heading naming this machine's CPU, in place of that CPU's earlier section;
    the sections measured on other CPUs are kept as they are. Speed is a property of the
    machine, so a benchmark run on another one adds to the page instead of overwriting
    it. Returns the new text (the caller writes it)."""
    from nasbert.latency.measure import cpu_name

    here = f"## CPU: {cpu_name()}"
    kept: list[str] = []
    path = Path(path)
    if path.is_file():
        chunks = path.read_text().split("\n## CPU: ")[1:]
        kept = ["## CPU: " + c.rstrip() + "\n" for c in chunks
                if not ("## CPU: " + c).startswith(here + "\n")]
    return "\n".join([preamble.rstrip() + "\n", f"{here}\n\n{section.rstrip()}\n", *kept])


def md_cell(text: str) -> str:
    """Text inside a Markdown table cell (an architecture string's bars escaped)."""
    return text.replace("|", "\\|")
