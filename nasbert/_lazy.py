"""Lazy re-exports for packages: ``import nasbert.search`` stays cheap (``nasbert query``
answers in well under a second), and a name loads its module when first used."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def attach(package: str, exports: Mapping[str, str]) -> tuple[Callable, Callable, list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package``; ``exports`` maps a
    public name to the module that defines it."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__, sorted(exports)
