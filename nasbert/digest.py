"""Short, stable digests of what a cached artefact depends on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def digest(obj: object) -> str:
    """A short, stable digest of a JSON-able record (what a cached artefact depends on)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """A short digest of a file's bytes: the same data wherever it lies, and a changed
    file even where its size is not."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
