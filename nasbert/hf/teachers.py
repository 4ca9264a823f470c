"""Teacher families: each supported encoder family read in BERT's layout.

The rest of nasbert (importance scoring, the supernet's initialisation, the
teacher-first-k baselines, the block states block-wise distillation learns) reads one
layout, BERT's: ``embeddings.{word,position,token_type}_embeddings``,
``embeddings.LayerNorm``, ``encoder.layer.<i>`` with post-LayerNorm attention and
feed-forward sublayers. A teacher of another family is converted into that layout once,
when it is loaded (:func:`canonical`), and the conversion is checked to compute the same
hidden states as the teacher (to 1e-5) before anything uses it:

- BERT (``bert``): read as it is.
- RoBERTa (``roberta``) and XLM-R (``xlm-roberta``): positions are numbered from
  ``padding_idx + 1``, so the position table is shifted to make row 0 the first
  token's; one token type; their LayerNorm epsilon.
- ELECTRA (``electra``): with an embedding size other than the hidden size it keeps its
  own model (BERT's layout plus the embedding projection, which the supernet's
  embedding projection takes).
- DistilBERT (``distilbert``): other weight names (``q_lin`` ... ``sa_layer_norm``,
  ``ffn.lin1``), no token types (a zero table).

Everything else (DeBERTa's relative attention, ALBERT's shared layers, MPNet's relative
position bias, decoder-only models, an activation other than GELU) is refused when the
teacher's config is read, before any work, naming the supported families. The teacher's
tokenizer (WordPiece, byte-level BPE, SentencePiece) is always its own: every stage
loads it with ``AutoTokenizer`` from the teacher.

Position shifting is exact for what nasbert feeds a teacher: sequences padded on the
right (RoBERTa numbers a padded sequence's real tokens the same way whatever follows
them; the padded positions' states differ and are masked everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nasbert.errors import ConfigError


@dataclass(frozen=True)
class TeacherFamily:
    name: str
    model_types: tuple[str, ...]


FAMILIES = (TeacherFamily("BERT", ("bert",)), TeacherFamily("RoBERTa", ("roberta",)),
            TeacherFamily("XLM-R", ("xlm-roberta",)), TeacherFamily("ELECTRA", ("electra",)),
            TeacherFamily("DistilBERT", ("distilbert",)))
_BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}
SUPPORTED = ", ".join(f.name for f in FAMILIES)

# why a known family is not one nasbert can read (the message names it)
_WHY_NOT = {
    "deberta": "relative (disentangled) attention", "deberta-v2": "relative (disentangled) "
    "attention", "albert": "layers shared across depth", "mpnet": "relative position bias",
    "funnel": "pooling between layers", "longformer": "sliding-window attention",
    "bigbird": "sparse attention", "t5": "an encoder-decoder", "gpt2": "a decoder-only model",
    "llama": "a decoder-only model", "qwen2": "a decoder-only model",
}


def family_of(config, *, source: str = "teacher") -> TeacherFamily:
    """The family of a teacher's config, or one clear error naming the supported ones."""
    kind = getattr(config, "model_type", None)
    family = _BY_TYPE.get(kind)
    if family is None or getattr(config, "is_decoder", False):
        why = _WHY_NOT.get(kind, "a decoder" if getattr(config, "is_decoder", False)
                           else "a family without a mapping onto BERT's layout")
        raise ConfigError(f"is a {kind!r} model ({why}); nasbert compresses encoders of the "
                          f"families {SUPPORTED}: give a teacher of one of them",
                          source=source)
    act = config.activation if kind == "distilbert" else config.hidden_act
    if act != "gelu":
        raise ConfigError(f"uses the activation {act!r}; nasbert's layers compute GELU, as "
                          "BERT's: give a teacher with hidden_act 'gelu'", source=source)
    return family


def converted_from(config) -> TeacherFamily:
    """The family a teacher was read from, given its config in BERT's layout."""
    return _BY_TYPE[getattr(config, "teacher_model_type", config.model_type)]


def position_offset(config) -> int:
    """The first real token's row of the teacher's position table (RoBERTa numbers
    positions from ``padding_idx + 1``)."""
    return config.pad_token_id + 1 if config.model_type in ("roberta", "xlm-roberta") else 0


def keeps_own_model(config) -> bool:
    """ELECTRA with an embedding projection: already BERT's layout plus that projection."""
    return config.model_type == "electra" and config.embedding_size != config.hidden_size


def embedding_size(config) -> int:
    """The teacher's embedding width (ELECTRA's may be narrower than its hidden size)."""
    return getattr(config, "embedding_size", None) or config.hidden_size


def canonical_config(config):
    """The config of the teacher's model in BERT's layout (the config itself for BERT
    and for ELECTRA with an embedding projection)."""
    from transformers import BertConfig

    family_of(config)
    if config.model_type == "bert" or keeps_own_model(config):
        return config
    if config.model_type == "distilbert":
        fields = dict(intermediate_size=config.hidden_dim, hidden_act=config.activation,
                      hidden_dropout_prob=config.dropout,
                      attention_probs_dropout_prob=config.attention_dropout,
                      layer_norm_eps=1e-12, type_vocab_size=1)  # DistilBERT's, fixed
    else:
        fields = dict(intermediate_size=config.intermediate_size, hidden_act=config.hidden_act,
                      hidden_dropout_prob=config.hidden_dropout_prob,
                      attention_probs_dropout_prob=config.attention_probs_dropout_prob,
                      layer_norm_eps=config.layer_norm_eps,
                      type_vocab_size=max(1, config.type_vocab_size))
    out = BertConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                     num_hidden_layers=config.num_hidden_layers,
                     num_attention_heads=config.num_attention_heads,
                     max_position_embeddings=config.max_position_embeddings
                     - position_offset(config),
                     initializer_range=config.initializer_range,
                     pad_token_id=config.pad_token_id, **fields)
    out.teacher_model_type = config.model_type  # what it was converted from
    return out


def _bert_state(state: dict[str, Tensor], config) -> dict[str, Tensor]:
    """A teacher's encoder weights under ``BertModel`` names (no pooler)."""
    if config.model_type != "distilbert":
        out = {k: v for k, v in state.items() if not k.startswith("pooler.")}
        offset = position_offset(config)
        key = "embeddings.position_embeddings.weight"
        out[key] = out[key][offset:]
        return out
    out = {f"embeddings.{n}": state[f"embeddings.{n}"]
           for n in ("word_embeddings.weight", "position_embeddings.weight",
                     "LayerNorm.weight", "LayerNorm.bias")}
    word = out["embeddings.word_embeddings.weight"]
    out["embeddings.token_type_embeddings.weight"] = word.new_zeros(1, word.shape[1])
    names = {"attention.q_lin": "attention.self.query", "attention.k_lin": "attention.self.key",
             "attention.v_lin": "attention.self.value",
             "attention.out_lin": "attention.output.dense",
             "sa_layer_norm": "attention.output.LayerNorm", "ffn.lin1": "intermediate.dense",
             "ffn.lin2": "output.dense", "output_layer_norm": "output.LayerNorm"}
    for i in range(config.num_hidden_layers):
        for theirs, ours in names.items():
            for p in ("weight", "bias"):
                out[f"encoder.layer.{i}.{ours}.{p}"] = state[f"transformer.layer.{i}.{theirs}.{p}"]
    return out


def check_batch(config, *, rows: int = 2, length: int = 12, seed: int = 0
                ) -> tuple[Tensor, Tensor]:
    """Token ids (never the padding id, which RoBERTa's positions skip) and a mask whose
    second row is padded on the right."""
    g = torch.Generator().manual_seed(seed)
    length = min(length, config.max_position_embeddings - position_offset(config))
    ids = torch.randint(0, config.vocab_size, (rows, length), generator=g)
    pad = config.pad_token_id
    if pad is not None:
        ids[ids == pad] = (pad + 1) % config.vocab_size
    mask = torch.ones_like(ids)
    mask[1:, length // 2:] = 0
    return ids, mask


@torch.no_grad()
def max_difference(a: nn.Module, b: nn.Module, ids: Tensor, mask: Tensor) -> float:
    """The largest difference between two encoders' hidden states (every layer) at the
    real tokens, both in eval mode."""
    modes = a.training, b.training
    a.eval(), b.eval()
    device = next(a.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    sa = a(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    sb = b(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    a.train(modes[0]), b.train(modes[1])
    real = mask.bool()
    return max(float((x[real].float() - y[real].float()).abs().max()) for x, y in zip(sa, sb))


def canonical(model: nn.Module, *, source: str = "teacher", atol: float = 1e-5) -> nn.Module:
    """``model`` (an encoder of a supported family) in BERT's layout, checked to compute
    the same hidden states to ``atol``; BERT itself, and ELECTRA with an embedding
    projection, come back as they are."""
    from transformers import BertModel

    config = model.config
    family_of(config, source=source)
    if config.model_type == "bert" or keeps_own_model(config):
        return model
    target_config = canonical_config(config)
    target_config._attn_implementation = config._attn_implementation
    param = next(model.parameters())
    target = BertModel(target_config, add_pooling_layer=False).to(param.device, param.dtype)
    target.load_state_dict(_bert_state(model.state_dict(), config), strict=True)
    target.train(model.training)
    diff = max_difference(model, target, *check_batch(config))
    tolerance = atol if param.dtype == torch.float32 else 1e-2
    if diff > tolerance:
        raise AssertionError(f"{source}: the {config.model_type} teacher in BERT's layout "
                             f"differs from it by {diff:.2e}")
    return target


def load_encoder(path: str, *, source: str = "teacher", **kwargs) -> nn.Module:
    """A teacher's encoder from a folder or a hub id, in BERT's layout (:func:`canonical`)."""
    from transformers import AutoModel

    from nasbert.hf.quiet import quiet_transformers

    with quiet_transformers():  # e.g. a pooler the checkpoint lacks: never used here
        model = AutoModel.from_pretrained(path, **kwargs)
    return canonical(model, source=source)
