"""The one exception type users see for bad input."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input: a malformed file, an impossible value, a missing artefact.

    The message is one line that names the file (or argument), the field and the fix.
    The CLI prints it and exits with status 2; the API raises it before writing anything.

    >>> raise ConfigError("head_size 64 does not divide hidden size 100; use a multiple of 64",
    ...                   source="space.yaml", field="blocks[0].hidden_sizes")  # doctest: +SKIP
    """

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        self.message, self.source, self.field = message, source, field
        prefix = ": ".join(p for p in (source, field) if p)
        super().__init__(f"{prefix}: {message}" if prefix else message)
