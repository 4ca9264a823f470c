"""The configuration of a static embedding student (:mod:`nasbert.static`), in a module
of its own without modeling code, like the other configurations (it registers with
``AutoConfig`` while transformers' auto modules may be half-imported,
:mod:`nasbert._register`)."""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig


class StaticConfig(PreTrainedConfig):
    """A table of one vector per token of the teacher's vocabulary: a text's states are
    its tokens' rows, and its sentence embedding their pooled mean (Model2Vec's and
    sentence-transformers' static embeddings, on the teacher's tokenizer)."""

    model_type = "nasbert_static"

    vocab_size: int = 30522
    hidden_size: int = 384  # the teacher's width: the sentence embedding's
    pad_token_id: int | None = 0
    provenance: dict | None = None  # the teacher and how the table was made
    precision: str = "float32"  # for the deployment family; a lookup has nothing to quantise


AutoConfig.register(StaticConfig.model_type, StaticConfig, exist_ok=True)
