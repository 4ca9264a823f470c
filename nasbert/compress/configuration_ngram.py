"""The configuration of a sparse n-gram student (:mod:`nasbert.compress.ngram`): the size
of its n-gram table and MLP, and the text normalisation its tokenizer and the mining
share. A module of its own without modeling code, like the other configurations (it
registers with ``AutoConfig`` while transformers' auto modules may be half-imported,
:mod:`nasbert._register`)."""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig

# words: runs of letters, digits and apostrophes ("n't", "'s" as GLUE's tokenised text
# writes them), or one punctuation mark
TOKEN_PATTERN = r"[\w']+|[^\w\s]"


class NgramConfig(PreTrainedConfig):
    """A deep averaging network over word n-grams (Sparse Distillation, Ye et al. 2022):
    the mean of the text's n-gram embeddings (``vocab_size`` rows: ``[PAD]``, ``[UNK]``
    and the mined n-grams), then an MLP (``mlp_sizes``) to the task's outputs. ``pair``:
    the two sentences of a pair are averaged apart (``u``, ``v``) and the MLP reads
    ``[u, v, |u - v|, u * v]``."""

    model_type = "nasbert_ngram"

    vocab_size: int = 2
    hidden_size: int = 128  # the embedding width
    mlp_sizes: list | None = None  # hidden layers of the MLP (default [256])
    hidden_dropout_prob: float = 0.1
    initializer_range: float = 0.1
    max_n: int = 4  # n-grams of 1 to max_n words
    lowercase: bool = True
    token_pattern: str = TOKEN_PATTERN
    pair: bool = False
    sparse: bool = True  # sparse gradients for the table (an optimiser made for them)
    pad_token_id: int | None = 0
    task: str | None = None  # the task it was distilled for: an n-gram student is task-specific
    provenance: dict | None = None  # the run, teacher, distillation text, mining
    precision: str = "float32"  # for the deployment family; the table stays float32

    @property
    def hidden_layers(self) -> list[int]:
        return list(self.mlp_sizes) if self.mlp_sizes is not None else [256]

    @property
    def ids_per_token(self) -> int:
        """n-gram ids a text has per word, at most: latency is measured on ``seq`` words,
        that is ``seq * max_n`` ids (:func:`nasbert.latency.measure.measure`)."""
        return self.max_n


AutoConfig.register(NgramConfig.model_type, NgramConfig, exist_ok=True)
