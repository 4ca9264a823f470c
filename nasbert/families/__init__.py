"""Task families: what differs between kinds of downstream task (reading the data,
features, post-processing, the metric), one module per family. Sentence-level
classification and regression live in :mod:`nasbert.data.tasks` and
:mod:`nasbert.finetune`; :mod:`nasbert.families.qa` is extractive question answering
(SQuAD v1.1)."""

from __future__ import annotations

from collections.abc import Iterator


def by_length(lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Indices in batches of similar lengths (the shortest first), so that padding to
    each batch's longest pads little when predicting."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def pad(rows: list[list[int]], fill: int) -> list[list[int]]:
    """Rows padded with ``fill`` to the longest."""
    n = max(len(r) for r in rows)
    return [list(r) + [fill] * (n - len(r)) for r in rows]
