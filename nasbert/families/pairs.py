"""Sentence-pair tasks as a bi-encoder: each sentence encoded and pooled alone, with the
teacher's pooling (:mod:`nasbert.pooling`), as sentence-transformers trains them.

- classification (MRPC, QQP, NLI): a linear head on ``[u, v, |u - v|, u * v]`` of the two
  sentence vectors (sentence-transformers' ``SoftmaxLoss``);
- regression (STS-B): the cosine of the two vectors, scaled to the labels' range, with
  the squared error on labels scaled to ``[0, 1]`` (its ``CosineSimilarityLoss``).

Beside the cross-encoder (the pair in one sequence), the formulation a compressed
student keeps best: no attention between the sentences to learn from a few thousand
pairs, and the sentence vectors a student is distilled to reproduce are the ones the
head reads. A fine-tuned bi-encoder's folder is a sentence-transformers folder (the
encoder, its tokenizer and pooling) with the pair head beside it (``pair_head.json``,
``pair_head.safetensors``): a regression one is used as it is, by ``SentenceTransformer``
and the cosine of its embeddings.

>>> model = BiEncoder.from_encoder(run.subnet_dir("4x"), num_labels=1, scale=5.0,
...                                pooling=Pooling.of(run.teacher_name()))   # doctest: +SKIP
>>> model(**batch).logits                                                   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from nasbert.errors import ConfigError
from nasbert.hf.quiet import quiet_transformers
from nasbert.io import atomic_write_text
from nasbert.pooling import Pooling, pool

HEAD_CONFIG, HEAD_WEIGHTS = "pair_head.json", "pair_head.safetensors"
SECOND = "_b"  # the second sentence's features: input_ids_b, attention_mask_b, ...
_FEATURES = ("input_ids", "attention_mask", "token_type_ids")


def is_bi_encoder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a fine-tuned bi-encoder (its pair head)."""
    return (Path(folder) / HEAD_CONFIG).is_file()


class BiEncoder(nn.Module):
    """An encoder, the teacher's pooling and a pair head; ``forward`` takes both
    sentences' features (the second's suffixed ``_b``) and returns a transformers
    ``SequenceClassifierOutput`` (loss with ``labels``, logits), as a sequence
    classifier does, so that the one fine-tuning loop trains it."""

    def __init__(self, encoder: nn.Module, pooling: Pooling, num_labels: int,
                 scale: float = 1.0):
        super().__init__()
        self.encoder, self.pooling, self.num_labels = encoder, pooling, num_labels
        self.scale = float(scale)  # regression: the labels' range, cosine 1 -> scale
        width = encoder.config.hidden_size
        self.head = nn.Linear(4 * width, num_labels) if num_labels > 1 else None

    @property
    def config(self):
        return self.encoder.config

    @property
    def base_model(self) -> nn.Module:
        return self.encoder

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    def embed(self, input_ids: Tensor, attention_mask: Tensor,
              token_type_ids: Tensor | None = None) -> Tensor:
        """The pooled sentence vectors of one side's features."""
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              **extra).last_hidden_state
        return pool(states, attention_mask, self.pooling)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, input_ids_b: Tensor,
                attention_mask_b: Tensor, token_type_ids: Tensor | None = None,
                token_type_ids_b: Tensor | None = None, labels: Tensor | None = None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        u = self.embed(input_ids, attention_mask, token_type_ids)
        v = self.embed(input_ids_b, attention_mask_b, token_type_ids_b)
        if self.regression:
            cosine = nn.functional.cosine_similarity(u, v, dim=-1)
            logits = (cosine * self.scale).unsqueeze(-1)
        else:
            logits = self.head(torch.cat([u, v, (u - v).abs(), u * v], dim=-1))
        loss = None
        if labels is not None:
            loss = (self.regression_loss(logits, labels) if self.regression
                    else nn.functional.cross_entropy(logits, labels))
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def regression_loss(self, predicted: Tensor, target: Tensor) -> Tensor:
        """The squared error on the labels' scale brought to ``[0, 1]``: the cosine
        objective, and the distillation one against the teacher's scaled cosine."""
        return nn.functional.mse_loss(predicted.view(-1) / self.scale,
                                      target.view(-1).to(predicted.dtype) / self.scale)

    # -- folders ----------------------------------------------------------------------

    @classmethod
    def from_encoder(cls, path: str | Path, *, num_labels: int, pooling: Pooling,
                     scale: float = 1.0) -> BiEncoder:
        """An encoder folder (a subnet, a stage-one model, the teacher) with a fresh
        pair head (seed torch first for a reproducible one)."""
        return cls(_load_encoder(path), pooling, num_labels, scale)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> BiEncoder:
        """A folder :meth:`save_pretrained` wrote."""
        from safetensors.torch import load_file

        path = Path(path)
        try:
            head = json.loads((path / HEAD_CONFIG).read_text())
            model = cls(_load_encoder(path), Pooling(**head["pooling"]), int(head["num_labels"]),
                        float(head["scale"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"is not a whole bi-encoder ({type(e).__name__}: {e}); fine-tune "
                              "it again", source=str(path)) from None
        if model.head is not None:
            model.head.load_state_dict(load_file(path / HEAD_WEIGHTS))
        return model

    def save_pretrained(self, folder: str | Path) -> None:
        """The encoder (transformers), its pooling as sentence-transformers declares it
        and the pair head."""
        from safetensors.torch import save_file

        folder = Path(folder)
        with quiet_transformers():
            self.encoder.save_pretrained(folder)
        self.pooling.write(folder, self.config.hidden_size)
        if self.head is not None:
            save_file({k: v.contiguous() for k, v in self.head.state_dict().items()},
                      str(folder / HEAD_WEIGHTS))
        atomic_write_text(folder / HEAD_CONFIG, json.dumps({
            "formulation": "bi", "num_labels": self.num_labels, "scale": self.scale,
            "pooling": dataclasses.asdict(self.pooling),
            "head": "cosine" if self.regression else "[u, v, |u - v|, u * v] -> linear"},
            indent=1))


def _load_encoder(path: str | Path) -> nn.Module:
    from transformers import AutoModel

    import nasbert  # noqa: F401 - registers the nasbert model type

    try:
        with quiet_transformers():  # a classifier's head left behind is what we want
            return AutoModel.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"could not be loaded ({str(e).splitlines()[0][:160]}); give a model "
                          "folder (config.json + weights)", source=str(path)) from None


def encode_apart(tokenizer, texts: list[tuple[str, ...]], max_seq_len: int) -> dict[str, list]:
    """Each sentence of each pair tokenised alone: the first's features as they are,
    the second's suffixed ``_b``."""
    if not texts or len(texts[0]) != 2:
        raise ValueError("the bi-encoder reads sentence pairs")
    out = {}
    for side, column in (("", 0), (SECOND, 1)):
        enc = tokenizer([t[column] for t in texts], truncation=True, max_length=max_seq_len)
        out.update({k + side: v for k, v in enc.items() if k in _FEATURES})
    return out


def sides(batch: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """A bi-encoder batch's features, one dict per sentence, unsuffixed."""
    return [{k: batch[k + side] for k in _FEATURES if k + side in batch} for side in ("", SECOND)]
