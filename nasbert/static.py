"""Static embedding students: one vector per token of the teacher's vocabulary, and a
text's embedding the (pooled) mean of its tokens' vectors. No attention, no layers:
a table lookup, far below any transformer's latency, for budgets no transformer meets.

:func:`static_from_teacher` makes the table as Model2Vec does: each token's row is the
teacher's sentence embedding of that token alone (``[CLS] token [SEP]``, pooled as the
teacher pools); ``[CLS]``, ``[SEP]`` and padding start at zero. Embedding distillation
(:mod:`nasbert.train.embedding`) then trains the table on the teacher's embeddings of
unlabelled text. :class:`StaticModel` is a ``PreTrainedModel`` that ``AutoModel`` loads
after ``import nasbert``, so a static student is scored, timed and exported for
sentence-transformers as any other model folder is.

>>> student = static_from_teacher(teacher.model, tokenizer, pooling)   # doctest: +SKIP
>>> student.save_pretrained("runs/qs/embed/static/init")              # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from nasbert.configuration_static import StaticConfig
from nasbert.pooling import Pooling, pool

__all__ = ["StaticConfig", "StaticModel", "static_from_teacher"]


class StaticModel(PreTrainedModel):
    """Token ids -> each token's row of the table (``last_hidden_state``)."""

    config_class = StaticConfig
    config: StaticConfig
    base_model_prefix = "static"

    def __init__(self, config: StaticConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, output_hidden_states: bool = False,
                return_dict: bool = True, **_) -> BaseModelOutput:
        states = self.embeddings(input_ids)
        return BaseModelOutput(last_hidden_state=states,
                               hidden_states=(states,) if output_hidden_states else None)


AutoModel.register(StaticConfig, StaticModel, exist_ok=True)


@torch.no_grad()
def static_from_teacher(teacher: nn.Module, tokenizer, pooling: Pooling, *,
                        batch_size: int = 512, provenance: dict | None = None) -> StaticModel:
    """A static student whose every token's row is ``teacher``'s pooled embedding of the
    token alone (``[CLS] token [SEP]``; unnormalised), the special tokens' rows zero."""
    vocab = int(teacher.config.vocab_size)
    special = set(tokenizer.all_special_ids)
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None \
        else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None \
        else tokenizer.eos_token_id
    width = int(teacher.config.hidden_size)
    table = torch.zeros(vocab, width)
    teacher.eval()
    tokens = [i for i in range(vocab) if i not in special]
    for start in range(0, len(tokens), batch_size):
        ids = torch.tensor(tokens[start:start + batch_size])
        batch = torch.stack([torch.full_like(ids, first), ids, torch.full_like(ids, last)], 1)
        mask = torch.ones_like(batch)
        states = teacher(input_ids=batch.to(teacher.device),
                         attention_mask=mask.to(teacher.device)).last_hidden_state
        table[ids] = pool(states, mask.to(states.device), pooling, normalize=False).float().cpu()
    model = StaticModel(StaticConfig(vocab_size=vocab, hidden_size=width,
                                     pad_token_id=tokenizer.pad_token_id,
                                     provenance=provenance))
    model.embeddings.weight.copy_(table)
    return model
