"""The configuration of extracted models, in a module of its own (transformers' naming:
``configuration_<model>.py``). It must not import modeling code: the Auto registration
(:mod:`nasbert._register`) imports it while transformers' ``modeling_auto`` may still be
half-imported (measured: a merged module fails ``from transformers import AutoModel``
in a fresh process). Import it from :mod:`nasbert.model`, which re-exports it."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PreTrainedConfig

from nasbert.space import Arch, Dims


class NasBertConfig(PreTrainedConfig):
    """Configuration of an extracted NAS-BERT model: its architecture string and the
    dimensions the search space fixed. ``hidden_size`` is the teacher's width, the
    width of the model's output."""

    model_type = "nasbert"

    arch: str = "E384|H384:M,F"
    vocab_size: int = 30522
    hidden_size: int = 384
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    head_size: int = 64
    heads: dict | None = None  # {"<hidden>": heads} overrides of hidden // head_size
    ffn_ratio: int = 4
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    provenance: dict | None = None  # what produced the weights (space, supernet, run, ...)
    # deployment: "int8" quantises the linear layers on load (nasbert.quantize);
    # length_config, one token retention in (0, 1] per block, drops tokens after each
    # block (nasbert.compress.length); None keeps every token
    precision: str = "float32"
    length_config: list | None = None

    @classmethod
    def from_dims(cls, dims: Dims, arch: Arch, **kwargs: Any) -> NasBertConfig:
        return cls(arch=str(arch), vocab_size=dims.vocab_size, hidden_size=dims.hidden_size,
                   max_position_embeddings=dims.max_position_embeddings,
                   type_vocab_size=dims.type_vocab_size, head_size=dims.head_size,
                   heads={str(h): n for h, n in dims.heads}, ffn_ratio=dims.ffn_ratio, **kwargs)

    @property
    def dims(self) -> Dims:
        heads = tuple(sorted((int(h), int(n)) for h, n in (self.heads or {}).items()))
        return Dims(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                    max_position_embeddings=self.max_position_embeddings,
                    type_vocab_size=self.type_vocab_size, head_size=self.head_size,
                    heads=heads, ffn_ratio=self.ffn_ratio)

    @property
    def architecture(self) -> Arch:
        return Arch.parse(self.arch)


AutoConfig.register(NasBertConfig.model_type, NasBertConfig, exist_ok=True)
