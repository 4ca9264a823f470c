"""Standalone models: what extraction produces and users deploy.

Ordinary transformers models (their :class:`NasBertConfig` holds the architecture string
and the dimensions the space fixed), registered with the Auto classes, so that after
``import nasbert`` a saved subnet loads with ``AutoModel.from_pretrained(dir)``,
``AutoModelForSequenceClassification``, ``AutoModelForQuestionAnswering`` or
``AutoModelForTokenClassification``. Nothing of the supernet is
left in them: plain layers of fixed sizes.

>>> model = supernet.extract("E128|H256:M,F,S5,F|H192:S3,M,F,I")  # doctest: +SKIP
>>> model.save_pretrained("out/")                                # doctest: +SKIP
>>> AutoModel.from_pretrained("out/")                           # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn
from transformers import (
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import (
    BaseModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from nasbert.configuration_nasbert import NasBertConfig
from nasbert.errors import ConfigError
from nasbert.ops import (
    Attention,
    Embeddings,
    check_length_config,
    kept_index,
    make_masks,
    make_op,
    project,
)
from nasbert.space import IDENTITY, Arch, transition_exists

__all__ = ["NasBertConfig", "NasBertForQuestionAnswering", "NasBertForSequenceClassification",
           "NasBertForTokenClassification", "NasBertModel", "load_model"]




class NasBertPreTrainedModel(PreTrainedModel):
    config_class = NasBertConfig
    config: NasBertConfig
    base_model_prefix = "nasbert"
    _supports_sdpa = True

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any):
        """transformers' loading, then int8 quantisation when the config says
        ``"precision": "int8"`` (the folder keeps float32 weights: dynamic quantisation is
        a function of them, :mod:`nasbert.quantize`)."""
        model = super().from_pretrained(*args, **kwargs)
        if getattr(model.config, "precision", "float32") == "int8":
            from nasbert.quantize import quantize

            model = quantize(model, inplace=True)
        return model


class Block(nn.Module):
    """A block of the extracted model: an optional projection in, then its layers."""

    def __init__(self, proj: nn.Linear | None, layers: list[nn.Module]):
        super().__init__()
        self.proj = proj
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, masks) -> Tensor:
        if self.proj is not None:
            x = project(self.proj, x)
        for layer in self.layers:
            x = layer(x, masks)
        return x


class NasBertModel(NasBertPreTrainedModel):
    """The encoder: embeddings, blocks of fixed layers, output at the teacher's width."""

    def __init__(self, config: NasBertConfig):
        super().__init__(config)
        arch, dims = config.architecture, config.dims
        drop, eps = config.hidden_dropout_prob, config.layer_norm_eps
        self.embeddings = Embeddings(dims.vocab_size, dims.max_position_embeddings,
                                     dims.type_vocab_size, arch.embed, dropout=drop, eps=eps)
        blocks, width, d = [], arch.embed, dims.hidden_size
        for block in arch.blocks:
            h = block.hidden
            if any(op[0] == "M" for op in block.ops) and h % dims.num_heads(h):
                raise ConfigError(f"{dims.num_heads(h)} heads do not divide hidden size {h}; "
                                  "fix head_size or heads", source="config", field="arch")
            proj = nn.Linear(width, h) if transition_exists(width, h, d) else None
            layers = [make_op(op, h, dims, dropout=drop,
                              attention_dropout=config.attention_probs_dropout_prob, eps=eps)
                      for op in block.ops if op != IDENTITY]
            blocks.append(Block(proj, layers))
            width = h
        self.blocks = nn.ModuleList(blocks)
        self.proj_out = nn.Linear(width, d) if width != d else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, output_hidden_states: bool = False,
                return_dict: bool | None = None, length_config: Any = None,
                restore: bool = False, **kwargs: Any) -> BaseModelOutput:
        """``length_config``: one token retention per block (default: the config's); a
        block with retention ``r < 1`` passes on ``ceil(r * n)`` of its ``n`` tokens, those
        that received the most attention in the last attention layer at or before it
        ([CLS] always), so the output is shorter than the input. ``restore``: the
        Length-Adaptive Transformer's drop-and-restore, for heads that read every token
        (spans, token labels): each dropped token's state where it was dropped comes back
        in its place at the output (carried through the later blocks' width changes), so
        the output is as long as the input."""
        x = self.embeddings(input_ids, token_type_ids)
        ratios = self.config.length_config if length_config is None else length_config
        if ratios is not None:
            ratios = check_length_config(ratios, len(self.blocks))
            if all(r == 1 for r in ratios):
                ratios = None
        if ratios is not None:
            return self._adaptive(x, attention_mask, ratios, output_hidden_states, restore)
        masks = make_masks(attention_mask, x.dtype)
        states = [x]
        for block in self.blocks:
            x = block(x, masks)
            states.append(x)
        return self._output(x, states if output_hidden_states else None)

    def _output(self, x: Tensor, states: list[Tensor] | None) -> BaseModelOutput:
        if self.proj_out is not None:
            x = project(self.proj_out, x)
        return BaseModelOutput(last_hidden_state=x,
                               hidden_states=tuple(states) if states is not None else None)

    def scorers(self, ratios: tuple[float, ...]) -> set[tuple[int, int]]:
        """The attention layers (block, layer) whose significance a dropping block uses:
        the last attention at or before it. A block that drops with none before it is a
        :class:`ConfigError`."""
        found, last = set(), None
        for i, block in enumerate(self.blocks):
            for j, layer in enumerate(block.layers):
                if isinstance(layer, Attention):
                    last = (i, j)
            if ratios[i] < 1:
                if last is None:
                    raise ConfigError(f"block {i} drops tokens before any attention layer "
                                      "(tokens are kept by the attention they receive); set "
                                      "its retention to 1", source="length configuration")
                found.add(last)
        return found

    def _adaptive(self, x: Tensor, attention_mask: Tensor | None,
                  ratios: tuple[float, ...], output_hidden_states: bool,
                  restore: bool = False) -> BaseModelOutput:
        keep = (attention_mask if attention_mask is not None
                else torch.ones(x.shape[:2], dtype=torch.long, device=x.device))
        masks = make_masks(keep, x.dtype)
        scorers = self.scorers(ratios)
        significance = torch.zeros(x.shape[:2], device=x.device)
        states = [x]
        # restore: every token's latest state, and where each current token came from
        full = x
        where = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        for i, block in enumerate(self.blocks):
            if block.proj is not None:
                x = block.proj(x)
                full = block.proj(full) if restore else full
            for j, layer in enumerate(block.layers):
                if (i, j) in scorers:
                    x, significance = layer.scored(x, masks)
                else:
                    x = layer(x, masks)
            if restore:  # the real tokens' new states in their places (padding slots
                # write back what is there: they point at tokens dropped before)
                at = where[:, :, None].expand(-1, -1, x.shape[2])
                real = keep.bool()[:, :, None]
                full = full.scatter(1, at, torch.where(real, x, full.gather(1, at)))
            if ratios[i] < 1:
                index, real = kept_index(keep, significance, ratios[i])
                x = x.gather(1, index[:, :, None].expand(-1, -1, x.shape[2]))
                keep, significance = real.to(keep.dtype), significance.gather(1, index)
                where = where.gather(1, index)
                masks = make_masks(keep, x.dtype)
            states.append(x)
        return self._output(full if restore else x, states if output_hidden_states else None)


class NasBertForSequenceClassification(NasBertPreTrainedModel):
    """Encoder plus a classification (``num_labels > 1``) or regression (``num_labels == 1``)
    head on the first token: dense, tanh, dropout, linear (as RoBERTa's head)."""

    def __init__(self, config: NasBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.nasbert = NasBertModel(config)
        d = config.hidden_size
        drop = (config.classifier_dropout if config.classifier_dropout is not None
                else config.hidden_dropout_prob)
        self.dense = nn.Linear(d, d)
        self.dropout = nn.Dropout(drop)
        self.classifier = nn.Linear(d, config.num_labels)
        self.post_init()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None,
                output_hidden_states: bool = False, return_dict: bool | None = None,
                length_config: Any = None, **kwargs: Any) -> SequenceClassifierOutput:
        out = self.nasbert(input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids,
                           output_hidden_states=output_hidden_states,
                           length_config=length_config)
        pooled = torch.tanh(self.dense(self.dropout(out.last_hidden_state[:, 0])))
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = classification_loss(logits, labels, self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


class NasBertForQuestionAnswering(NasBertPreTrainedModel):
    """Encoder plus a start/end head on every token (a linear layer to two logits, as
    BERT's); length-adaptive with drop-and-restore, so that every context token can
    still be an answer."""

    def __init__(self, config: NasBertConfig):
        super().__init__(config)
        self.nasbert = NasBertModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, start_positions: Tensor | None = None,
                end_positions: Tensor | None = None, output_hidden_states: bool = False,
                return_dict: bool | None = None, length_config: Any = None,
                **kwargs: Any) -> QuestionAnsweringModelOutput:
        out = self.nasbert(input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids,
                           output_hidden_states=output_hidden_states,
                           length_config=length_config, restore=True)
        start, end = self.qa_outputs(out.last_hidden_state).unbind(-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            n = start.shape[1]  # positions past the sequence are ignored, as BERT's head does
            loss = (nn.functional.cross_entropy(start, start_positions.clamp(0, n), ignore_index=n)
                    + nn.functional.cross_entropy(end, end_positions.clamp(0, n),
                                                  ignore_index=n)) / 2
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start, end_logits=end,
                                            hidden_states=out.hidden_states)


class NasBertForTokenClassification(NasBertPreTrainedModel):
    """Encoder plus a label per token (dropout, linear, as BERT's); length-adaptive with
    drop-and-restore, so that every token gets a label."""

    def __init__(self, config: NasBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.nasbert = NasBertModel(config)
        drop = (config.classifier_dropout if config.classifier_dropout is not None
                else config.hidden_dropout_prob)
        self.dropout = nn.Dropout(drop)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None,
                output_hidden_states: bool = False, return_dict: bool | None = None,
                length_config: Any = None, **kwargs: Any) -> TokenClassifierOutput:
        out = self.nasbert(input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids,
                           output_hidden_states=output_hidden_states,
                           length_config=length_config, restore=True)
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:  # -100: sub-tokens after a word's first, special tokens
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


def classification_loss(logits: Tensor, labels: Tensor, config: PreTrainedConfig) -> Tensor:
    """The loss transformers uses for its ``problem_type`` conventions."""
    n = config.num_labels
    if config.problem_type is None:
        if n == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return nn.functional.mse_loss(logits.squeeze(-1), labels.float().view(-1))
    if config.problem_type == "single_label_classification":
        return nn.functional.cross_entropy(logits.view(-1, n), labels.view(-1))
    return nn.functional.binary_cross_entropy_with_logits(logits, labels.float())


AutoModel.register(NasBertConfig, NasBertModel, exist_ok=True)
AutoModelForSequenceClassification.register(NasBertConfig, NasBertForSequenceClassification,
                                            exist_ok=True)
AutoModelForQuestionAnswering.register(NasBertConfig, NasBertForQuestionAnswering, exist_ok=True)
AutoModelForTokenClassification.register(NasBertConfig, NasBertForTokenClassification,
                                         exist_ok=True)


# ----------------------------------------------------------------------------- loading

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def check_model_dir(path: str | Path, *, any_type: bool = False) -> Path:
    """Check that ``path`` holds a readable NAS-BERT model (with ``any_type``, any model
    transformers saved: a baseline's BERT too), or raise :class:`ConfigError` naming the
    file at fault and the fix."""
    path = Path(path)
    fix = "; re-export it (Supernet.extract(...).save_pretrained(dir))"
    if not path.is_dir():
        raise ConfigError("is not a directory; give a model directory (config.json + "
                          "model.safetensors)", source=str(path))
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ConfigError("is missing" + fix, source=str(cfg))
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"is not valid JSON ({e})" + fix, source=str(cfg)) from None
    got = data.get("model_type") if isinstance(data, dict) else None
    if any_type and not isinstance(got, str):
        raise ConfigError("names no model_type" + fix, source=str(cfg), field="model_type")
    if not any_type and got != NasBertConfig.model_type:
        raise ConfigError(f"model_type is {got!r}, not 'nasbert'; give a directory written by "
                          "nasbert", source=str(cfg), field="model_type")
    if got == NasBertConfig.model_type:
        Arch.parse(data.get("arch", ""))
    weights = next((path / f for f in _WEIGHT_FILES if (path / f).is_file()), None)
    if weights is None:
        raise ConfigError("is missing" + fix, source=str(path / _WEIGHT_FILES[0]))
    if weights.suffix == ".safetensors":
        try:
            with safe_open(str(weights), framework="pt") as f:
                for key in f.keys():
                    f.get_slice(key)
        except (SafetensorError, OSError, ValueError) as e:
            raise ConfigError(f"is corrupt or truncated ({e})" + fix, source=str(weights)) from None
    return path


def load_model(path: str | Path, *, task: str | None = None,
               precision: str | None = None) -> PreTrainedModel:
    """Load a saved NAS-BERT model (``task='classification'`` for the head), with one
    clear error for a missing or corrupt file; ``precision`` overrides the folder's
    (``"float32"`` loads an int8 folder unquantised)."""
    path = check_model_dir(path)
    cls = NasBertForSequenceClassification if task == "classification" else NasBertModel
    extra = {"precision": precision} if precision else {}
    try:
        return cls.from_pretrained(str(path), **extra)
    except (OSError, ValueError, RuntimeError) as e:
        raise ConfigError(f"could not be loaded ({str(e).splitlines()[0]}); re-export it",
                          source=str(path)) from None
