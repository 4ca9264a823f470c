"""Atomic writes: a reader sees the old artefact or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(path: str | Path, obj: object) -> Path:
    """``torch.save`` through a temporary file: a reader never sees half a checkpoint."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path``
    (an existing one is swapped out, then removed); on failure it is removed and
    ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        os.replace(path, old / "x")
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_record(path: str | Path) -> dict | None:
    """The JSON object at ``path``, or None when the file is missing or torn (records are
    written whole, by a rename, so a torn one is from before and is made again)."""
    import json

    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def cached_record(path: str | Path, key: str) -> dict | None:
    """The JSON record at ``path`` when it exists, parses and was made with ``key`` (what
    a cached artefact depends on), else None: a missing, torn or stale record is redone."""
    record = read_record(path)
    return record if record is not None and record.get("key") == key else None


def writable_output(path: str | Path, *, inputs: tuple[str | Path, ...] = (),
                    flag: str = "--out", folder: bool = True) -> Path:
    """``path``, a model folder (or with ``folder=False`` a file) a user asked a command
    to write, once it is clear that writing it destroys nothing but an earlier output of
    the same kind: refused (:class:`~nasbert.errors.ConfigError`) when it is one of
    ``inputs`` or holds one, is a file where a folder is written or the reverse, or, for
    a folder, is the current folder, lies inside a run directory (whose stages own their
    folders) or holds other content than a model (no ``config.json``). Checked at the
    edge, before any work."""
    from nasbert.errors import ConfigError

    path = Path(path)
    where = f"{flag} {path}"
    resolved = path.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if resolved == source or resolved in source.parents:
            raise ConfigError(f"would overwrite the input {given}; write to another path",
                              source=where)
    if folder and (resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents):
        raise ConfigError("is the current folder or holds it; name a new folder", source=where)
    for parent in (resolved, *resolved.parents) if folder else ():
        if (parent / "run.yaml").is_file():
            raise ConfigError(f"lies inside the run directory {parent}, whose stages own "
                              "their folders; write outside it", source=where)
    if not path.exists():
        return path
    if folder and not path.is_dir():
        raise ConfigError("is a file; name a folder to write the model to", source=where)
    if not folder and path.is_dir():
        raise ConfigError("is a folder; name the file to write", source=where)
    if folder and any(path.iterdir()) and not (path / "config.json").is_file():
        raise ConfigError("exists and is not a model folder (no config.json); name a new "
                          "folder, or empty this one first", source=where)
    return path
