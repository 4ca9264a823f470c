"""Task families: what differs between kinds of downstream task (reading the data,
features, post-processing, the metric), one module per family. Sentence-level
classification and regression live in :mod:`nasbert.data.tasks` and
:mod:`nasbert.finetune`; :mod:`nasbert.families.qa` is extractive question answering
(SQuAD v1.1)."""

from __future__ import annotations

from collections.abc import Callable, Iterator


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


def predict_rows(model, features: dict[str, list], collate: Callable, logits: Callable, *,
                 batch_size: int = 64, progress: str | None = None) -> list:
    """``model``'s output for each row of ``features`` (tokenised columns), in order,
    computed in batches of similar lengths: ``logits(output)`` gives a batch's tensor,
    tokens on its last axis but one, and each row is cut to its own length."""
    import torch
    from tqdm.auto import tqdm

    model.eval()
    device = next(model.parameters()).device
    lengths = [len(ids) for ids in features["input_ids"]]
    out: list = [None] * len(lengths)
    batches = list(by_length(lengths, batch_size))
    with torch.inference_mode():
        for idx in tqdm(batches, desc=progress, unit="batch", disable=not progress,
                        dynamic_ncols=True):
            batch = collate([{k: features[k][i] for k in features} for i in idx])
            result = logits(model(**{k: v.to(device) for k, v in batch.items()}))
            for row, i in enumerate(idx):
                out[i] = result[row].narrow(-2, 0, lengths[i]).clone()
    return out
