"""Typed configuration: YAML parsed once, at the edge, into frozen dataclasses.

The one schema reader of the package (recipes, search spaces, fine-tuning settings):
:func:`parse` fills a dataclass (nested ones too) from a mapping and checks every
field's type, naming the file and the field on error; a dataclass checks its values in
``__post_init__`` with :func:`check`, and the error names the file and field too.
:func:`apply_overrides` applies ``section.key=value`` overrides from the command line;
:func:`to_dict` gives the resolved form back (what ``run.yaml`` stores).
"""

# Hand-written, not a validation library: measured 2026-12-07 (this 2-core machine,
# medians of 9 fresh processes; pydantic 2.14.4, dacite 1.9.2) against Recipe.
# - pydantic (installed in the venv): `import nasbert.schema` 85 ms, with
#   `from pydantic import TypeAdapter` 155 ms, and TypeAdapter(Recipe) takes 25-29 ms to
#   build, on the path of `nasbert query` (218 ms today, which must stay well under
#   1.5 s). Its error has the field path, but lax mode accepts `use_gpu: "yes"` as True
#   and `max_steps: 1.0` as 1, strict mode refuses a dict for a dataclass at all, a
#   __post_init__ check comes back at its section ("train", not "train.max_steps"), and
#   refusing unknown keys takes a __pydantic_config__ on every config dataclass.
# - dacite (not installed; 15-17 ms to import): type errors name the path
#   ("train.lr"), but an unknown key and a __post_init__ check do not; it refuses
#   "5e-4" as a float (PyYAML reads 5e-4 as a string: `--set train.lr=5e-4`) and keeps
#   `lr: 1` an int.
# Either way its errors must be translated into ConfigError (file and field) and its
# coercions patched with hooks about as long as _coerce below, which is the whole of
# what a library would replace.

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from nasbert.errors import ConfigError

T = TypeVar("T")


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("no such file; check the path", source=str(path))
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"malformed YAML{where}: {getattr(e, 'problem', e)}; fix the syntax",
                          source=str(path)) from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, source: str, field: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, source, field)
            except ConfigError as e:
                errors.append(e)
        raise errors[-1]
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{value!r} is not one of {list(typing.get_args(tp))}",
                              source=source, field=field)
        return value
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{value!r} is not a mapping", source=source, field=field)
        return {_coerce(k, key_type, source, f"{field}[{k!r}]"):
                _coerce(v, value_type, source, f"{field}[{k!r}]") for k, v in value.items()}
    if origin in (tuple, list):
        item = typing.get_args(tp)[0]
        if isinstance(value, str) and item in (str, Path):
            value = [value]  # a single path or name where a list is expected
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{value!r} is not a list", source=source, field=field)
        return tuple(_coerce(v, item, source, f"{field}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, source=source, prefix=field)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 5e-4 as a string
        except ValueError:
            pass
    if tp is Path and isinstance(value, str | Path):
        return Path(value)
    if tp is int and isinstance(value, str) and value.isdigit():
        return int(value)  # a mapping's keys (YAML reads {384: 12} as ints, JSON as strings)
    if tp in (int, str, bool) and isinstance(value, tp):
        if not (tp is int and isinstance(value, bool)):
            return value
    raise ConfigError(f"{value!r} is not a {_type_name(tp)}", source=source, field=field)


def parse(cls: type[T], data: Any, *, source: str, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are errors."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping, got {type(data).__name__}", source=source,
                          field=prefix or None)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}; known keys: {', '.join(fields)}",
                          source=source, field=prefix or None)
    kwargs = {}
    for name, f in fields.items():
        field = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], source, field)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError("is missing; add it", source=source, field=field)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if e.source is not None:
            raise
        # a check() in __post_init__: name the file, and the field under this prefix
        field = ".".join(p for p in (prefix, e.field) if p) or None
        raise ConfigError(e.message, source=source, field=field) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e), source=source, field=prefix or None) from None


def to_dict(obj: Any) -> Any:
    """The plain (YAML-ready) form of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def apply_overrides(data: dict, overrides: Sequence[str], *, source: str = "--set") -> dict:
    """Apply ``a.b=value`` strings (values read as YAML) to a nested mapping, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{item!r} is not KEY=VALUE (e.g. train.lr=1e-4)", source=source)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{p!r} is not a section", source=source, field=key)
        node[leaf] = value
    return data


def check(condition: bool, message: str, *, field: str) -> None:
    """Raise a :class:`ConfigError` about ``field`` unless ``condition`` holds (in a
    dataclass's ``__post_init__``: :func:`parse` adds the file and the field's prefix)."""
    if not condition:
        raise ConfigError(message, field=field)
