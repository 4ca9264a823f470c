"""How a sentence-transformers model turns token states into one sentence vector, read
from its folder (``1_Pooling/config.json``: mean, CLS or max over tokens; a ``Normalize``
module in ``modules.json``; ``sentence_bert_config.json``'s maximum length), and
:func:`pool`, the one implementation of it that evaluation, embedding distillation and
export share. A plain transformers folder pools by the mean, unnormalised.

>>> pooling = Pooling.of(teacher_folder)                            # doctest: +SKIP
>>> states = model(**batch).last_hidden_state                        # doctest: +SKIP
>>> vectors = pool(states, batch["attention_mask"], pooling)         # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from nasbert.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["Pooling", "pool"]


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

    def write(self, folder: str | Path, width: int) -> None:
        """Declare this pooling in ``folder`` as sentence-transformers reads it, beside a
        transformers model whose states are ``width`` wide: ``modules.json``,
        ``1_Pooling/config.json``, ``2_Normalize/`` when it normalises and
        ``sentence_bert_config.json``; :meth:`of` reads back what it writes."""
        from nasbert.io import atomic_write_text

        folder = Path(folder)
        modules = [{"idx": 0, "name": "0", "path": "",
                    "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling"}]
        if self.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
            (folder / "2_Normalize").mkdir(exist_ok=True)
        (folder / "1_Pooling").mkdir(exist_ok=True)
        atomic_write_text(folder / "1_Pooling" / "config.json", json.dumps({
            "word_embedding_dimension": width,
            "pooling_mode_cls_token": self.mode == "cls",
            "pooling_mode_mean_tokens": self.mode == "mean",
            "pooling_mode_max_tokens": self.mode == "max",
            "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
        atomic_write_text(folder / "sentence_bert_config.json", json.dumps(
            {"max_seq_length": self.max_seq_length, "do_lower_case": False}, indent=2))
        atomic_write_text(folder / "modules.json", json.dumps(modules, indent=2))


def pool(states: Tensor, mask: Tensor, pooling: Pooling, *, normalize: bool | None = None
         ) -> Tensor:
    """Sentence vectors ``(batch, width)`` of token ``states`` ``(batch, seq, width)``
    over the real tokens of ``mask`` ``(batch, seq)``, as ``pooling`` says (normalised
    when it normalises, unless ``normalize`` says otherwise)."""
    import torch

    m = mask.unsqueeze(-1).to(states.dtype)
    if pooling.mode == "cls":
        vec = states[:, 0]
    elif pooling.mode == "max":
        vec = states.masked_fill(m == 0, float("-inf")).max(dim=1).values
    else:
        vec = (states * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if pooling.normalize if normalize is None else normalize:
        vec = torch.nn.functional.normalize(vec, dim=-1)
    return vec
