"""Transfer data for task distillation: the task's own examples, perturbed, and
in-domain text, labelled by the fine-tuned teacher.

A student shallower than the teacher learns little of a small task from its few
thousand labelled examples; TinyBERT (Jiao et al., 2020) distils on about 20x as many
augmented examples, Sparse Distillation (Ye et al., 2022) on unlabelled in-domain text,
both labelled by the teacher. Here each augmented example is made from a training
example by, in order:

* **pair recombination** (two-sentence tasks, probability ``recombine``): its second
  sentence is replaced by the second sentence of another training example (mostly
  non-paraphrases for MRPC: the teacher's soft label says how much);
* **word replacement**: each word, with probability ``replace``, becomes a word drawn
  from the unlabelled corpus (by frequency: in-domain words in in-domain proportions)
  or, one time in four, from the teacher's vocabulary (whole words, uniformly);
* **span deletion** (probability ``delete``): one span of 1 to 3 words is removed.

``corpus_sentences`` adds sentences of the run's unlabelled corpus as they are
(single-sentence tasks; pairs of consecutive sentences for pair tasks). Every text is
deterministic in the seed; the teacher's logits on them are computed once and cached
beside its own (:func:`teacher_labelled`), like its logits on the training set.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from collections.abc import Sequence

from nasbert.data.tasks import Examples
from nasbert.families import IGNORE  # the label of an augmented example: no task loss

_WORD = re.compile(r"^[a-z]+$")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """How many transfer examples, and how they are made."""

    per_example: int = 0  # augmented examples per training example (TinyBERT: about 20)
    corpus_sentences: int = 0  # unlabelled corpus sentences (or pairs) added
    replace: float = 0.3
    delete: float = 0.3
    recombine: float = 0.25
    seed: int = 0

    @property
    def enabled(self) -> bool:
        return self.per_example > 0 or self.corpus_sentences > 0


class WordPool:
    """Replacement words: the corpus's by frequency, and the vocabulary's whole words."""

    def __init__(self, corpus_words: Sequence[str], vocabulary: Sequence[str]):
        counts = Counter(w for w in corpus_words if _WORD.match(w.lower()))
        self.words, self.weights = list(counts), list(counts.values())
        self.vocabulary = sorted(w for w in vocabulary if _WORD.match(w) and len(w) > 1)
        if not self.words and not self.vocabulary:
            raise ValueError("no replacement words: the corpus and the vocabulary are empty")

    def draw(self, rng: random.Random) -> str:
        if self.words and (not self.vocabulary or rng.random() >= 0.25):
            return rng.choices(self.words, self.weights)[0]
        return rng.choice(self.vocabulary)


def perturb(text: str, pool: WordPool, config: AugmentConfig, rng: random.Random) -> str:
    """Word replacement, then span deletion, of one sentence."""
    words = text.split()
    words = [pool.draw(rng) if rng.random() < config.replace else w for w in words]
    if len(words) > 3 and rng.random() < config.delete:
        n = rng.randint(1, 3)
        start = rng.randrange(0, len(words) - n + 1)
        words = words[:start] + words[start + n:]
    return " ".join(words)


def augment(train: Examples, pool: WordPool, config: AugmentConfig,
            corpus_text: Sequence[str] = ()) -> Examples:
    """The transfer examples for ``train`` (labels :data:`IGNORE`: the teacher labels
    them), deterministic in ``config.seed``."""
    rng = random.Random(config.seed)
    pairs = len(train.texts[0]) == 2 if len(train) else False
    texts: list[tuple[str, ...]] = []
    for _ in range(config.per_example):
        for example in train.texts:
            parts = list(example)
            if pairs and rng.random() < config.recombine:
                parts[1] = train.texts[rng.randrange(len(train))][1]
            texts.append(tuple(perturb(t, pool, config, rng) for t in parts))
    sentences = [s for s in corpus_text if len(s.split()) >= 3]
    if config.corpus_sentences and sentences:
        for _ in range(config.corpus_sentences):
            i = rng.randrange(len(sentences) - (1 if pairs else 0))
            texts.append((sentences[i], sentences[i + 1]) if pairs else (sentences[i],))
    return Examples(texts, [IGNORE] * len(texts))


def corpus_sentences(run, limit: int = 20_000) -> list[str]:
    """Sentences of the run's unlabelled corpus (its training sequences decoded), in
    order: the in-domain text and the replacement words' source."""
    tokenizer = run.tokenizer()
    ids = run.corpus().train
    out: list[str] = []
    for row in ids[: max(1, limit // 2)]:
        text = tokenizer.decode(row.tolist(), skip_special_tokens=True)
        pieces = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
        out += pieces[1:-1]  # the first and last are cut mid-sentence by the packing
        if len(out) >= limit:
            break
    return out[:limit]
