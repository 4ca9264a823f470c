"""Registering the ``nasbert`` model type with transformers' Auto classes, lazily.

``import nasbert`` must be cheap (the CLI answers queries from JSON in well under a
second, and torch alone takes longer to import) yet make ``AutoConfig`` /
``AutoModel`` / ``AutoModelForSequenceClassification`` know our model type. So the
registration runs when transformers' auto modules are imported, by whoever imports
them first, or at once if they already are.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

# transformers' auto module -> ours that registers with it when imported
_HOOKS = {"transformers.models.auto.configuration_auto": "nasbert.configuration_nasbert",
          "transformers.models.auto.modeling_auto": "nasbert.model"}


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of transformers' auto modules so that our
    registering module is imported right after one of them has been executed."""

    def find_spec(self, name, path=None, target=None):
        if name not in _HOOKS:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            importlib.import_module(_HOOKS[name])

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    for auto, ours in _HOOKS.items():
        if auto in sys.modules:
            importlib.import_module(ours)
    if not all(m in sys.modules for m in _HOOKS) and not any(
            isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
