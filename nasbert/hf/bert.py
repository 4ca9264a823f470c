"""BERT-family weights under the names of nasbert's operations (:mod:`nasbert.ops`):
what initialises a supernet from a teacher and what the inference benchmark loads
into an extracted model."""

from __future__ import annotations

import torch
from torch import Tensor

from nasbert.space import IDENTITY, Arch

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


def bert_stack_state(state: dict[str, Tensor], arch: Arch) -> dict[str, Tensor]:
    """A BERT-family encoder's first layers under the names of a
    :class:`~nasbert.model.NasBertModel` of ``arch``, an architecture at the teacher's
    width whose blocks hold only whole layers (``M, F`` pairs, then identities): the
    teacher's layers fill its blocks in order (ELECTRA's embedding projection becomes the
    first block's)."""
    out = {f"embeddings.{k}": v for k, v in bert_embeddings(state).items()}
    if "embeddings_project.weight" in state:  # ELECTRA's: into the first block's width
        out.update({f"blocks.0.proj.{p}": state[f"embeddings_project.{p}"]
                    for p in ("weight", "bias")})
    layer = 0
    for i, block in enumerate(arch.blocks):
        ops = [op for op in block.ops if op != IDENTITY]
        if ops != ["M", "F"] * (len(ops) // 2):
            raise ValueError(f"block {i} of {arch} is not whole teacher layers")
        for j in range(0, len(ops), 2):
            attention, ffn = bert_layer(state, layer)
            out.update({f"blocks.{i}.layers.{j}.{k}": v for k, v in attention.items()})
            out.update({f"blocks.{i}.layers.{j + 1}.{k}": v for k, v in ffn.items()})
            layer += 1
    return out


def bert_classifier_state(state: dict[str, Tensor], arch: Arch) -> dict[str, Tensor]:
    """A ``BertForSequenceClassification``'s weights under the names of a
    :class:`~nasbert.model.NasBertForSequenceClassification` of ``arch``: the encoder as
    :func:`bert_stack_state`, BERT's pooler as the head's dense layer (both: dense, tanh
    on the first token, then the classifier)."""
    encoder = {k.removeprefix("bert."): v for k, v in state.items() if k.startswith("bert.")}
    out = {f"nasbert.{k}": v for k, v in bert_stack_state(encoder, arch).items()}
    out.update({"dense.weight": state["bert.pooler.dense.weight"],
                "dense.bias": state["bert.pooler.dense.bias"],
                "classifier.weight": state["classifier.weight"],
                "classifier.bias": state["classifier.bias"]})
    return out
