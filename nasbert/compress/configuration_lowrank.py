"""The configuration of a BERT whose linear layers are factorised (offline compression by
autoencoder or truncated SVD, :mod:`nasbert.compress.lowrank`): a ``BertConfig`` plus the
rank of each factorised layer. Like :mod:`nasbert.configuration_nasbert`, a module of
its own without modeling code; it registers with ``AutoConfig`` when transformers' auto
modeling module is imported (:mod:`nasbert._register`: not with the configuration
module, while which ``BertConfig`` cannot be imported)."""

from __future__ import annotations

from transformers import AutoConfig, BertConfig


class LowRankBertConfig(BertConfig):
    """``low_rank`` maps a linear layer's name under the encoder model (e.g.
    ``encoder.layer.0.attention.self.query``) to its rank: the layer is two linear maps,
    ``down`` (no bias) to ``rank`` dimensions and ``up`` back, with the bias."""

    model_type = "nasbert_lowrank_bert"

    low_rank: dict | None = None
    provenance: dict | None = None  # what compressed it: method, ratio, source, data


AutoConfig.register(LowRankBertConfig.model_type, LowRankBertConfig, exist_ok=True)
