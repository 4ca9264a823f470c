"""Sentence embeddings of any encoder folder, pooled as the teacher pools them, and their
quality on sentence pairs with gold similarity (STS-style): the Spearman and Pearson
correlation of the embeddings' cosine with the gold score, x 100. No training on the
pairs: a zero-shot score of what an encoder's states already mean.

The pooling is the teacher's, read from its sentence-transformers folder
(``1_Pooling/config.json``: mean, CLS or max over tokens; a ``Normalize`` module in
``modules.json``); a plain transformers folder pools by the mean.

>>> pairs = read_pairs("../shared/data/glue/STS-B/train.tsv")               # doctest: +SKIP
>>> sts_score(run.subnet_dir("latency-8ms"), *pairs, pooling=Pooling.of(teacher))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from nasbert.errors import ConfigError

# STS-B's own columns; other files name theirs on the command line
COLUMNS = ("sentence1", "sentence2", "score")


@dataclasses.dataclass(frozen=True)
class Pooling:
    """How token states become one sentence vector."""

    mode: Literal["mean", "cls", "max"] = "mean"
    normalize: bool = False
    max_seq_length: int = 128

    @classmethod
    def of(cls, folder: str | Path) -> Pooling:
        """The pooling a sentence-transformers folder declares (its ``1_Pooling`` config
        and ``Normalize`` module); the mean, unnormalised, for a plain model folder."""
        folder = Path(folder)
        modules = folder / "modules.json"
        if not modules.is_file():
            return cls()
        listed = json.loads(modules.read_text())
        pooling = next((m for m in listed if m["type"].endswith(".Pooling")), None)
        mode = "mean"
        if pooling is not None:
            config = json.loads((folder / pooling["path"] / "config.json").read_text())
            modes = [m for m in ("mean", "cls", "max")
                     if config.get(f"pooling_mode_{m}_tokens" if m != "cls"
                                   else "pooling_mode_cls_token")]
            if len(modes) != 1:
                raise ConfigError(f"pools by {modes or 'none'}; nasbert reproduces exactly one "
                                  "of mean, CLS or max pooling", source=str(folder))
            mode = modes[0]
        length = 128
        bert = folder / "sentence_bert_config.json"
        if bert.is_file():
            length = int(json.loads(bert.read_text()).get("max_seq_length", length))
        return cls(mode, any(m["type"].endswith(".Normalize") for m in listed), length)


def read_pairs(path: str | Path, columns: Sequence[str] = COLUMNS
               ) -> tuple[list[tuple[str, str]], list[float]]:
    """Sentence pairs and their gold scores from a TSV whose header names ``columns``
    (first sentence, second sentence, score)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("is missing; give an STS-style TSV (a header naming "
                          f"{', '.join(columns)})", source=str(path))
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"has no column {missing[0]!r} (its header: "
                              f"{', '.join(reader.fieldnames or [])}); name the columns",
                              source=str(path))
        pairs, scores = [], []
        for row in reader:
            try:
                score = float(row[columns[2]])
            except (TypeError, ValueError):
                continue  # a row whose score is missing or torn: not a pair to score
            pairs.append((row[columns[0]], row[columns[1]]))
            scores.append(score)
    if not pairs:
        raise ConfigError("holds no scored pairs", source=str(path))
    return pairs, scores


def encode(model, tokenizer, texts: Sequence[str], pooling: Pooling, *,
           batch_size: int = 64):
    """The pooled embeddings of ``texts`` (a float32 tensor, one row each)."""
    import torch

    out = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True,
                              truncation=True, max_length=pooling.max_seq_length,
                              return_tensors="pt")
            states = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            if pooling.mode == "cls":
                vec = states[:, 0]
            elif pooling.mode == "max":
                vec = states.masked_fill(mask == 0, float("-inf")).max(dim=1).values
            else:
                vec = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if pooling.normalize:
                vec = torch.nn.functional.normalize(vec, dim=-1)
            out.append(vec.float())
    return torch.cat(out)


def sts_score(model_dir: str | Path, pairs: Sequence[tuple[str, str]], scores: Sequence[float],
              *, pooling: Pooling | None = None, tokenizer=None) -> dict[str, float]:
    """Spearman and Pearson (x 100) of the cosine between each pair's embeddings and the
    gold ``scores``, for the encoder in ``model_dir`` (any transformers folder; a NAS-BERT
    one once ``nasbert`` is imported, as here). ``tokenizer``: the folder's own by
    default."""
    import torch
    from scipy.stats import pearsonr, spearmanr
    from transformers import AutoModel, AutoTokenizer

    import nasbert  # noqa: F401 - registers the nasbert model type
    from nasbert.hf.quiet import quiet_transformers

    pooling = pooling or Pooling.of(model_dir)
    with quiet_transformers():
        model = AutoModel.from_pretrained(str(model_dir))
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(model_dir))
    first = encode(model, tokenizer, [a for a, _ in pairs], pooling)
    second = encode(model, tokenizer, [b for _, b in pairs], pooling)
    cosine = torch.nn.functional.cosine_similarity(first, second).numpy()
    return {"spearman": round(100 * float(spearmanr(cosine, scores).statistic), 3),
            "pearson": round(100 * float(pearsonr(cosine, scores).statistic), 3),
            "pairs": len(pairs)}
