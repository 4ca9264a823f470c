"""Token classification (named entities, CoNLL-2003): reading the data, aligning word
labels with sub-tokens (the first sub-token of a word carries its label, the others and
the special tokens are ignored), mapping sub-token predictions back to words, and
entity-level F1 (``seqeval``, conlleval's counting).

>>> data = load_conll("../shared/data/conll2003")                    # doctest: +SKIP
>>> features = NERFeatures(tokenizer, data.split("train"), data.labels)  # doctest: +SKIP
>>> entity_scores(word_predictions(features, logits, data.labels), gold)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nasbert.digest import digest, file_digest
from nasbert.errors import ConfigError
from nasbert.families.base import (
    IGNORE,
    SPECS,
    Family,
    load_head,
    pad,
    predict_rows,
    refuse_fold,
    refuse_pairs,
    subset,
)
from nasbert.losses import token_kl

if TYPE_CHECKING:
    from torch import Tensor

HUB_CONLL = "eriktks/conll2003"
MAX_SEQ_LEN = 256  # every CoNLL-2003 valid sentence fits (128 cuts 19 words)
SPLITS = (("train", "train.txt", "train"), ("dev", "valid.txt", "validation"))


@dataclasses.dataclass(frozen=True)
class Sentence:
    words: tuple[str, ...]
    tags: tuple[str, ...]  # one IOB2 tag per word


@dataclasses.dataclass
class NERData:
    splits: dict[str, list[Sentence]]
    labels: tuple[str, ...]  # "O", then B- and I- of each entity type, sorted
    source: dict
    spec = SPECS["conll2003"]
    name = "conll2003"  # the folder its models lie in (finetune/conll2003/)

    def split(self, name: str) -> list[Sentence]:
        if name not in self.splits:
            raise ConfigError(f"has no split {name!r} (has {', '.join(self.splits)})",
                              source="task conll2003")
        return self.splits[name]


def read_conll(path: str | Path) -> list[Sentence]:
    """Sentences of a CoNLL file: a word and its tag a line (the tag last, so the
    four-column original reads too), a blank line between sentences, ``-DOCSTART-``
    lines between documents. Tags must be IOB2 (``O``, ``B-X``, ``I-X``)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except OSError:
        raise ConfigError("is missing; give a CoNLL-2003 folder (train.txt, valid.txt) or "
                          "leave --data-dir out to use the hub", source=str(path)) from None
    sentences, words, tags = [], [], []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                sentences.append(Sentence(tuple(words), tuple(tags)))
                words, tags = [], []
            continue
        tag = fields[-1]
        if len(fields) < 2 or not (tag == "O" or tag[:2] in ("B-", "I-") and len(tag) > 2):
            raise ConfigError(f"{line.strip()[:60]!r} is not a word and an IOB2 tag (O, B-X, "
                              "I-X); give CoNLL-2003 text", source=f"{path}:{number}")
        words.append(fields[0])
        tags.append(tag)
    if words:
        sentences.append(Sentence(tuple(words), tuple(tags)))
    if not sentences:
        raise ConfigError("holds no sentences", source=str(path))
    return sentences


def label_list(sentences: Sequence[Sentence]) -> tuple[str, ...]:
    """``O`` first, then ``B-`` and ``I-`` of every entity type the sentences name."""
    types = sorted({t[2:] for s in sentences for t in s.tags if t != "O"})
    return ("O", *(f"{p}-{t}" for t in types for p in ("B", "I")))


def load_conll(data_dir: str | Path | None = None) -> NERData:
    """CoNLL-2003's train and valid (``dev``) splits, from a folder holding
    ``train.txt`` and ``valid.txt``, or from the hub without one. The label set is the
    training split's; a dev tag outside it is bad input."""
    if data_dir is None:
        return _load_hub()
    folder = Path(data_dir)
    if (folder / "conll2003").is_dir():
        folder = folder / "conll2003"
    splits, files = {}, []
    for split, filename, _ in SPLITS:
        path = folder / filename
        splits[split] = read_conll(path)
        files.append((filename, path.stat().st_size, file_digest(path)))
    labels = label_list(splits["train"])
    unknown = sorted({t for s in splits["dev"] for t in s.tags} - set(labels))
    if unknown:
        raise ConfigError(f"tags {', '.join(unknown)} that the training split never uses",
                          source=str(folder / "valid.txt"))
    return NERData(splits, labels, {"path": str(folder), "files": files,
                                    "digest": digest(files)})


def _load_hub() -> NERData:
    import datasets

    try:
        dd = datasets.load_dataset(HUB_CONLL)
    except Exception as e:  # noqa: BLE001 - datasets raises many types for "not reachable"
        raise ConfigError(f"could not be loaded from the hub ({str(e).splitlines()[0][:120]}); "
                          "give a local CoNLL-2003 folder with --data-dir",
                          source=HUB_CONLL) from None
    names = dd["train"].features["ner_tags"].feature.names
    splits = {split: [Sentence(tuple(r["tokens"]), tuple(names[t] for t in r["ner_tags"]))
                      for r in dd[hub_split] if r["tokens"]]
              for split, _, hub_split in SPLITS}
    return NERData(splits, label_list(splits["train"]),
                   {"hub": HUB_CONLL, "fingerprint": dd["train"]._fingerprint})


def for_words(tokenizer):
    """The tokenizer for text already split into words. A byte-level BPE (RoBERTa's)
    marks a word that follows a space with its own tokens (``Ġword``), and words given
    one by one are read as if nothing preceded them (``word`` -> ``w``, ``ord``): a copy
    that prefixes each word with the space it had in running text, as the family's own
    token-classification scripts load it (``add_prefix_space=True``)."""
    import copy

    from tokenizers import pre_tokenizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    if not isinstance(pre, pre_tokenizers.ByteLevel) or pre.add_prefix_space:
        return tokenizer
    out = copy.deepcopy(tokenizer)
    out.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True,
                                                                   use_regex=pre.use_regex)
    return out


class NERFeatures:
    """Sentences tokenised word by word (truncated to ``max_seq_len``): per sentence
    ``input_ids``, ``attention_mask`` (and ``token_type_ids``), ``labels`` (the label
    index on each word's first sub-token, :data:`IGNORE` elsewhere) and the word each
    sub-token belongs to (:attr:`word_ids`). :attr:`truncated` counts the words cut
    off, which are predicted ``O``. ``teacher``: each sentence's ``(tokens, labels)``
    logits of the teacher, for distillation."""

    def __init__(self, tokenizer, sentences: Sequence[Sentence], labels: Sequence[str], *,
                 max_seq_len: int = MAX_SEQ_LEN, teacher: Sequence[Tensor] | None = None):
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError("is not a fast tokenizer; token classification needs word "
                              "ids", source=type(tokenizer).__name__)
        self.sentences = list(sentences)
        index = {label: i for i, label in enumerate(labels)}
        enc = for_words(tokenizer)([list(s.words) for s in self.sentences],
                                   is_split_into_words=True, truncation=True,
                                   max_length=max_seq_len)
        self.word_ids: list[list[int | None]] = [enc.word_ids(i)
                                                 for i in range(len(enc["input_ids"]))]
        self.labels: list[list[int]] = []
        self.truncated = 0
        for sentence, ids in zip(self.sentences, self.word_ids):
            row, seen = [], set()
            for w in ids:
                first = w is not None and w not in seen
                row.append(index[sentence.tags[w]] if first else IGNORE)
                if w is not None:
                    seen.add(w)
            self.labels.append(row)
            self.truncated += len(sentence.words) - len(seen)
        self.features = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")
                         if k in enc}
        self.teacher = teacher
        if teacher is not None and len(teacher) != len(self.sentences):
            raise ValueError(f"{len(teacher)} teacher outputs for {len(self)} sentences")

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, i: int) -> dict:
        item = {**{k: v[i] for k, v in self.features.items()}, "labels": self.labels[i]}
        if self.teacher is not None:
            item["teacher_logits"] = self.teacher[i]
        return item


def collate(items: list[dict], pad_id: int = 0) -> dict[str, Tensor]:
    """A batch of sentences padded to the longest (labels with :data:`IGNORE`)."""
    import torch

    batch = {key: torch.tensor(pad([it[key] for it in items], fill))
             for key, fill in (("input_ids", pad_id), ("attention_mask", 0),
                               ("token_type_ids", 0), ("labels", IGNORE)) if key in items[0]}
    if "teacher_logits" in items[0]:
        n = batch["input_ids"].shape[1]
        batch["teacher_logits"] = torch.stack([torch.nn.functional.pad(
            it["teacher_logits"], (0, 0, 0, n - it["teacher_logits"].shape[0]))
            for it in items])
    return batch


def distillation_loss(out, batch: Mapping[str, Tensor], temperature: float,
                      model=None) -> Tensor:
    """Each real token's label distribution's KL to the teacher's (every sub-token,
    not only the labelled first ones: the teacher has something to say about all)."""
    return token_kl(out.logits, batch["teacher_logits"], batch["attention_mask"], temperature)


def predict(model, features: NERFeatures, *, batch_size: int = 64,
            progress: str | None = None) -> list[Tensor]:
    """Each sentence's ``(tokens, labels)`` logits, in order."""
    return predict_rows(model, features.features, collate, lambda r: r.logits.float().cpu(),
                        batch_size=batch_size, progress=progress)


def evaluate(model, tokenizer, sentences: Sequence[Sentence], labels: Sequence[str], *,
             max_seq_len: int = MAX_SEQ_LEN) -> tuple[dict[str, float], list[list[str]]]:
    """Entity precision, recall and F1 of ``model`` on ``sentences``, and its tags."""
    features = NERFeatures(tokenizer, sentences, labels, max_seq_len=max_seq_len)
    tags = word_predictions(features, [x.tolist() for x in predict(model, features)], labels)
    return entity_scores(tags, [s.tags for s in sentences]), tags


def word_predictions(features: NERFeatures, logits: Sequence, labels: Sequence[str]
                     ) -> list[list[str]]:
    """Each sentence's predicted tag per word: the argmax at the word's first
    sub-token; ``O`` for the words truncation cut off. ``logits``: per sentence, a
    ``(tokens, labels)`` array (padding beyond the sentence's tokens is ignored)."""
    out = []
    for sentence, ids, row in zip(features.sentences, features.word_ids, logits):
        tags = ["O"] * len(sentence.words)
        seen = set()
        for k, w in enumerate(ids):
            if w is None or w in seen:
                continue
            seen.add(w)
            scores = list(row[k])
            tags[w] = labels[max(range(len(scores)), key=scores.__getitem__)]
        out.append(tags)
    return out


def entity_scores(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]
                  ) -> dict[str, float]:
    """Entity-level precision, recall and F1 (x 100) as conlleval counts them
    (``seqeval``): an entity is right only when its type and both its ends are."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    pred, true = [list(p) for p in predicted], [list(g) for g in gold]
    if [len(p) for p in pred] != [len(g) for g in true]:
        raise ValueError("a prediction per word of every sentence is needed")
    # an untrained model may predict no entity at all: precision 0 then, not a warning
    return {"f1": 100 * f1_score(true, pred, zero_division=0),
            "precision": 100 * precision_score(true, pred, zero_division=0),
            "recall": 100 * recall_score(true, pred, zero_division=0)}


# ------------------------------------------------------------------- the family


class NERFamily(Family):
    """Named entities through the fine-tuning stage: a label per token (on each word's
    first sub-token), distillation on the teacher's per-token distributions, entity F1,
    precision and recall (in [0, 1]) on CoNLL-2003's valid split."""

    name = "ner"

    def load(self, task, data_dir=None, *, seed=0, fold=None, folds=5) -> NERData:
        refuse_fold(task, fold)
        return load_conll(data_dir)

    def check(self, data, config) -> None:
        refuse_pairs(data.name, config, "labels the words of one sentence")

    def model(self, path, data, config, seed, *, pooling=None, examples=None):
        return load_head("AutoModelForTokenClassification", path, seed,
                         num_labels=len(data.labels), id2label=dict(enumerate(data.labels)),
                         label2id={label: i for i, label in enumerate(data.labels)})

    def dataset(self, tokenizer, data, config, examples, *, train=True, teacher=None):
        return NERFeatures(tokenizer, examples, data.labels, max_seq_len=config.max_seq_len,
                           teacher=teacher)

    collate = staticmethod(collate)
    predict = staticmethod(predict)
    distillation_loss = staticmethod(distillation_loss)

    def targets(self, out):
        return out.logits.detach()

    def score(self, model, tokenizer, data, config, examples):
        scores, _ = evaluate(model, tokenizer, examples, data.labels,
                             max_seq_len=config.max_seq_len)
        return {k: v / 100 for k, v in scores.items()}

    def evaluate(self, model, tokenizer, data, config, *, splits=None):
        metrics, preds = {}, {}
        for split in splits or data.spec.dev_splits:
            sentences = subset(data.split(split), config.max_dev_examples, config.seed)
            scores, tags = evaluate(model, tokenizer, sentences, data.labels,
                                    max_seq_len=config.max_seq_len)
            metrics[split] = {k: v / 100 for k, v in scores.items()}
            preds[split] = [" ".join(t) for t in tags]
        return metrics, preds


FAMILY = NERFamily()
