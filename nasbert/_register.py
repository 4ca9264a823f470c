"""Registering nasbert's model types with transformers' Auto classes, lazily.

``import nasbert`` must be cheap (the CLI answers queries from JSON in well under a
second, and torch alone takes longer to import) yet make ``AutoConfig`` /
``AutoModel`` / ``AutoModelForSequenceClassification`` know our model types (``nasbert``,
the low-rank BERT of :mod:`nasbert.compress.lowrank`, the n-gram student of
:mod:`nasbert.compress.ngram` and the static embedding student of
:mod:`nasbert.static`). So the registration runs when transformers' auto modules are
imported, by whoever imports them first, or at once if they already are.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

# transformers' auto module -> ours that register with it when it has been executed
_HOOKS = {"transformers.models.auto.configuration_auto": ("nasbert.configuration_nasbert",
                                                          "nasbert.compress.configuration_ngram",
                                                          "nasbert.configuration_static"),
          "transformers.models.auto.modeling_auto": ("nasbert.model", "nasbert.compress.lowrank",
                                                     "nasbert.compress.ngram", "nasbert.static")}
# ours -> transformers modules it imports that may be mid-import when its hook fires
# (``BertConfig`` and ``BertModel`` import the auto modeling module from decorators,
# before they exist): ours then waits for them to finish
_WAIT = {"nasbert.compress.lowrank": ("transformers.models.bert.configuration_bert",
                                      "transformers.models.bert.modeling_bert")}
_pending: dict[str, list[str]] = {}
_executed: set[str] = set()  # executed, though importlib may still flag them initialising


def _initialising(name: str) -> bool:
    spec = getattr(sys.modules.get(name), "__spec__", None)
    return bool(getattr(spec, "_initializing", False)) and name not in _executed


def _register(ours: str) -> None:
    busy = [m for m in _WAIT.get(ours, ()) if _initialising(m)]
    if busy:
        _pending.setdefault(busy[0], []).append(ours)
    else:
        importlib.import_module(ours)


def _after(name: str) -> None:
    """Import what waited for the transformers module ``name``, now executed."""
    _executed.add(name)
    for ours in (*_HOOKS.get(name, ()), *_pending.pop(name, ())):
        _register(ours)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the transformers modules named above so
    that ours are imported right after one of them has been executed."""

    def find_spec(self, name, path=None, target=None):
        if name not in _HOOKS and not any(name in w for w in _WAIT.values()):
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
            _after(name)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    for auto, ours in _HOOKS.items():
        if auto in sys.modules:
            for module in ours:
                _register(module)
    if not all(m in sys.modules for m in _HOOKS) and not any(
            isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
