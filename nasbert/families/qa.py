"""Extractive question answering (SQuAD v1.1): reading the data, question/context
features with a document stride and character offsets, the n-best post-processing of
start and end logits into answer texts, and the official v1.1 metric.

The field's defaults: sequences of 384 tokens, a stride of 128 (the overlap between the
windows a long context is cut into), the 20 best starts and ends, answers of at most 30
tokens.

>>> data = load_squad("../shared/data/squad")                        # doctest: +SKIP
>>> features = QAFeatures(tokenizer, data.split("train"), train=True)  # doctest: +SKIP
>>> answers = postprocess(features, start_logits, end_logits)        # doctest: +SKIP
>>> squad_scores(answers, data.split("dev"))                         # doctest: +SKIP
{'exact_match': ..., 'f1': ...}
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nasbert.digest import digest, file_digest
from nasbert.errors import ConfigError
from nasbert.families.base import (
    SPECS,
    Family,
    load_head,
    pad,
    predict_rows,
    refuse_fold,
    refuse_pairs,
    subset,
)
from nasbert.losses import position_kl

if TYPE_CHECKING:
    from torch import Tensor

HUB_SQUAD = "rajpurkar/squad"
MAX_SEQ_LEN, STRIDE, N_BEST, MAX_ANSWER_TOKENS = 384, 128, 20, 30
SPLITS = (("train", "train.json", "train"), ("dev", "dev.json", "validation"))


@dataclasses.dataclass(frozen=True)
class QAExample:
    """One question on one context; ``answers``: every reference, ``(text, start)`` with
    ``start`` the character where the text begins in the context."""

    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]


@dataclasses.dataclass
class QAData:
    splits: dict[str, list[QAExample]]
    source: dict  # where it was read from, with a digest of the files
    skipped: dict[str, list[str]]  # split -> one line per question left out, and why
    spec = SPECS["squad"]
    name = "squad"  # the folder its models lie in (finetune/squad/)

    def split(self, name: str) -> list[QAExample]:
        if name not in self.splits:
            raise ConfigError(f"has no split {name!r} (has {', '.join(self.splits)})",
                              source="task squad")
        return self.splits[name]


def _checked(examples: list[QAExample], where: str, skipped: list[str]) -> list[QAExample]:
    """The examples whose first answer lies where it says (what training learns from);
    each other one is left out with a line in ``skipped``. None left is bad input."""
    kept = []
    for ex in examples:
        if not ex.answers:
            skipped.append(f"question {ex.id}: no answer")
            continue
        text, start = ex.answers[0]
        if ex.context[start:start + len(text)] != text:
            skipped.append(f"question {ex.id}: its answer {text[:40]!r} is not at character "
                           f"{start} of its context")
            continue
        kept.append(ex)
    if not kept:
        raise ConfigError(f"holds no question whose answer is found at its answer_start "
                          f"({len(skipped)} checked); give SQuAD v1.1 JSON", source=where)
    return kept


def read_squad(path: str | Path) -> list[QAExample]:
    """Every question of a SQuAD v1.1 JSON file, as it is (see :func:`load_squad`)."""
    path = Path(path)
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))["data"]
        return [QAExample(qa["id"], qa["question"], p["context"],
                          tuple((a["text"], int(a["answer_start"])) for a in qa["answers"]))
                for article in articles for p in article["paragraphs"] for qa in p["qas"]]
    except OSError:
        raise ConfigError("is missing; give a SQuAD v1.1 folder (train.json, dev.json) or "
                          "leave --data-dir out to use the hub", source=str(path)) from None
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"is not SQuAD v1.1 JSON ({type(e).__name__}: {e}); give "
                          "{'data': [{'paragraphs': [{'context', 'qas': [...]}]}]}",
                          source=str(path)) from None


def load_squad(data_dir: str | Path | None = None) -> QAData:
    """SQuAD's train and dev splits: from a folder holding ``train.json`` and
    ``dev.json`` (v1.1's format), or from the hub without one. Training questions whose
    first answer is not at its ``answer_start`` are left out and listed in
    :attr:`QAData.skipped`; dev questions are scored against every reference text."""
    if data_dir is None:
        return _load_hub()
    folder = Path(data_dir)
    if (folder / "squad").is_dir():
        folder = folder / "squad"
    splits, skipped, files = {}, {}, []
    for split, filename, _ in SPLITS:
        path = folder / filename
        examples = read_squad(path)
        skipped[split] = []
        splits[split] = (_checked(examples, str(path), skipped[split]) if split == "train"
                         else examples)
        files.append((filename, path.stat().st_size, file_digest(path)))
    return QAData(splits, {"path": str(folder), "files": files, "digest": digest(files)},
                  skipped)


def _load_hub() -> QAData:
    import datasets

    try:
        dd = datasets.load_dataset(HUB_SQUAD)
    except Exception as e:  # noqa: BLE001 - datasets raises many types for "not reachable"
        raise ConfigError(f"could not be loaded from the hub ({str(e).splitlines()[0][:120]}); "
                          "give a local SQuAD folder with --data-dir", source=HUB_SQUAD) from None
    splits, skipped = {}, {}
    for split, _, hub_split in SPLITS:
        ds = dd[hub_split]
        examples = [QAExample(r["id"], r["question"], r["context"],
                              tuple(zip(r["answers"]["text"], r["answers"]["answer_start"])))
                    for r in ds]
        skipped[split] = []
        splits[split] = (_checked(examples, f"{HUB_SQUAD}:{hub_split}", skipped[split])
                         if split == "train" else examples)
    return QAData(splits, {"hub": HUB_SQUAD, "fingerprint": dd["train"]._fingerprint}, skipped)


class QAFeatures:
    """Question/context features: each context cut into windows of ``max_seq_len``
    tokens that overlap by ``stride``, the question before each. Per window:
    ``input_ids``, ``attention_mask`` (and ``token_type_ids``), the example it comes
    from, the character span of each context token in that example's context (None for
    the question and special tokens) and, with ``train``, ``start_positions`` and
    ``end_positions`` of the first answer (0, the first token, where the window does
    not hold the whole answer). ``teacher``: each window's ``(2, tokens)`` start and end
    logits of the teacher, for distillation."""

    def __init__(self, tokenizer, examples: Sequence[QAExample], *, train: bool = False,
                 max_seq_len: int = MAX_SEQ_LEN, stride: int = STRIDE,
                 teacher: Sequence[Tensor] | None = None):
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError("is not a fast tokenizer; question answering needs character "
                              "offsets", source=type(tokenizer).__name__)
        self.examples = list(examples)
        enc = tokenizer([ex.question.lstrip() for ex in self.examples],
                        [ex.context for ex in self.examples], truncation="only_second",
                        max_length=max_seq_len, stride=stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True)
        self.example_index: list[int] = list(enc["overflow_to_sample_mapping"])
        self.offsets: list[list[tuple[int, int] | None]] = []
        self.starts: list[int] = []
        self.ends: list[int] = []
        for i, offsets in enumerate(enc["offset_mapping"]):
            context = [s == 1 for s in enc.sequence_ids(i)]
            self.offsets.append([tuple(o) if c else None for o, c in zip(offsets, context)])
            if train:
                start, end = self._positions(self.offsets[-1],
                                             self.examples[self.example_index[i]])
                self.starts.append(start)
                self.ends.append(end)
        self.features = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")
                         if k in enc}
        self.train = train
        self.teacher = teacher
        if teacher is not None and len(teacher) != len(self.example_index):
            raise ValueError(f"{len(teacher)} teacher outputs for {len(self)} windows")

    @staticmethod
    def _positions(offsets: list[tuple[int, int] | None], ex: QAExample) -> tuple[int, int]:
        text, first = ex.answers[0]
        last = first + len(text)  # one past the answer's last character
        tokens = [k for k, o in enumerate(offsets) if o is not None]
        if offsets[tokens[0]][0] > first or offsets[tokens[-1]][1] < last:
            return 0, 0  # the answer is not (wholly) in this window
        start = next(k for k in tokens if offsets[k][1] > first)
        end = next(k for k in reversed(tokens) if offsets[k][0] < last)
        return start, end

    def __len__(self) -> int:
        return len(self.example_index)

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.features.items()}
        if self.train:
            item["start_positions"], item["end_positions"] = self.starts[i], self.ends[i]
        if self.teacher is not None:
            item["teacher_logits"] = self.teacher[i]
        return item


def collate(items: list[dict], pad_id: int = 0) -> dict[str, Tensor]:
    """A batch of windows padded to the longest (the teacher's logits with a logit
    softmax turns into nothing)."""
    import torch

    batch = {key: torch.tensor(pad([it[key] for it in items], fill))
             for key, fill in (("input_ids", pad_id), ("attention_mask", 0),
                               ("token_type_ids", 0)) if key in items[0]}
    for key in ("start_positions", "end_positions"):
        if key in items[0]:
            batch[key] = torch.tensor([it[key] for it in items])
    if "teacher_logits" in items[0]:
        n = batch["input_ids"].shape[1]
        batch["teacher_logits"] = torch.stack([torch.nn.functional.pad(
            it["teacher_logits"], (0, n - it["teacher_logits"].shape[1]), value=-1e4)
            for it in items])
    return batch


def distillation_loss(out, batch: Mapping[str, Tensor], temperature: float,
                      model=None) -> Tensor:
    """The mean of the start and end distributions' KL to the teacher's, over each
    window's real tokens."""
    teacher, mask = batch["teacher_logits"], batch["attention_mask"]
    return (position_kl(out.start_logits, teacher[:, 0], mask, temperature)
            + position_kl(out.end_logits, teacher[:, 1], mask, temperature)) / 2


def predict(model, features: QAFeatures, *, batch_size: int = 64,
            progress: str | None = None) -> list[Tensor]:
    """Each window's ``(2, tokens)`` start and end logits, in order."""
    import torch

    rows = predict_rows(model, features.features, collate,
                        lambda r: torch.stack([r.start_logits, r.end_logits], -1).float().cpu(),
                        batch_size=batch_size, progress=progress)
    return [x.T.contiguous() for x in rows]


def evaluate(model, tokenizer, examples: Sequence[QAExample], *,
             max_seq_len: int = MAX_SEQ_LEN, stride: int = STRIDE, n_best: int = N_BEST,
             max_answer_tokens: int = MAX_ANSWER_TOKENS) -> tuple[dict[str, float],
                                                                 dict[str, str]]:
    """Exact match and F1 of ``model`` on ``examples``, and its answer to each."""
    features = QAFeatures(tokenizer, examples, max_seq_len=max_seq_len, stride=stride)
    logits = predict(model, features)
    answers = postprocess(features, [x[0].tolist() for x in logits],
                          [x[1].tolist() for x in logits], n_best=n_best,
                          max_answer_tokens=max_answer_tokens)
    return squad_scores(answers, examples), answers


def postprocess(features: QAFeatures, start_logits: Sequence[Sequence[float]],
                end_logits: Sequence[Sequence[float]], *, n_best: int = N_BEST,
                max_answer_tokens: int = MAX_ANSWER_TOKENS) -> dict[str, str]:
    """Each example's answer text: over all its windows, the ``n_best`` best starts and
    ends that lie in the context, end not before start and at most
    ``max_answer_tokens`` tokens apart, the pair with the highest start + end logit,
    cut from the context by the tokens' character offsets ("" when none is valid)."""
    best: dict[int, tuple[float, str]] = {}
    for i, offsets in enumerate(features.offsets):
        ex_i = features.example_index[i]
        context = features.examples[ex_i].context
        starts, ends = list(start_logits[i])[:len(offsets)], list(end_logits[i])[:len(offsets)]
        top_s = sorted(range(len(starts)), key=starts.__getitem__, reverse=True)[:n_best]
        top_e = sorted(range(len(ends)), key=ends.__getitem__, reverse=True)[:n_best]
        for s in top_s:
            for e in top_e:
                if (offsets[s] is None or offsets[e] is None or e < s
                        or e - s + 1 > max_answer_tokens):
                    continue
                score = starts[s] + ends[e]
                if ex_i not in best or score > best[ex_i][0]:
                    best[ex_i] = (score, context[offsets[s][0]:offsets[e][1]])
    return {ex.id: best[i][1] if i in best else "" for i, ex in enumerate(features.examples)}


# ------------------------------------------------------------------- the v1.1 metric
# Written here: the `evaluate` library's SQuAD metric is a script it fetches from the
# hub when loaded, which fails offline; the official v1.1 procedure it runs is short.

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation: lower case, punctuation removed, the articles a, an
    and the removed, runs of white space made one space."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _f1(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Mapping[str, str], examples: Sequence[QAExample]
                 ) -> dict[str, float]:
    """Exact match and F1 (x 100) of ``predictions`` (question id -> answer text), each
    the best over the question's reference answers, averaged over ``examples`` (a
    question with no prediction scores 0)."""
    if not examples:
        raise ValueError("no examples to score")
    em = f1 = 0.0
    for ex in examples:
        pred = predictions.get(ex.id, "")
        truths = [text for text, _ in ex.answers] or [""]
        em += max(float(normalize_answer(pred) == normalize_answer(t)) for t in truths)
        f1 += max(_f1(pred, t) for t in truths)
    return {"exact_match": 100 * em / len(examples), "f1": 100 * f1 / len(examples)}


# ------------------------------------------------------------------- the family


def stride(max_seq_len: int) -> int:
    """The overlap of a context's windows: the field's 128 at sequences of 384, a third
    of shorter ones (a window must hold the question and more context than overlap)."""
    return min(STRIDE, max_seq_len // 3)


class QAFamily(Family):
    """Extractive question answering through the fine-tuning stage: a start/end head,
    distillation on the teacher's start and end logits, exact match and F1 (in [0, 1])
    after the n-best post-processing, on SQuAD v1.1's dev split."""

    name = "qa"
    label_names = ("start_positions", "end_positions")
    timing = {"seq": MAX_SEQ_LEN}  # as the field times question answering

    def load(self, task, data_dir=None, *, seed=0, fold=None, folds=5) -> QAData:
        refuse_fold(task, fold)
        return load_squad(data_dir)

    def check(self, data, config) -> None:
        refuse_pairs(data.name, config, "reads a question and its context in one sequence")
        if config.max_seq_len < 64:
            raise ConfigError(f"max_seq_len {config.max_seq_len} leaves no room for a "
                              "question and its context; give 384 (the field's) or at "
                              "least 64", source="task squad")

    def model(self, path, data, config, seed, *, pooling=None, examples=None):
        return load_head("AutoModelForQuestionAnswering", path, seed)

    def dataset(self, tokenizer, data, config, examples, *, train=True, teacher=None):
        return QAFeatures(tokenizer, examples, train=train, max_seq_len=config.max_seq_len,
                          stride=stride(config.max_seq_len), teacher=teacher)

    collate = staticmethod(collate)
    predict = staticmethod(predict)
    distillation_loss = staticmethod(distillation_loss)

    def targets(self, out):
        import torch

        return torch.stack([out.start_logits, out.end_logits], 1).detach()

    def score(self, model, tokenizer, data, config, examples):
        scores, _ = evaluate(model, tokenizer, examples, max_seq_len=config.max_seq_len,
                             stride=stride(config.max_seq_len))
        return {k: v / 100 for k, v in scores.items()}

    def items(self, dataset, indices):
        wanted = set(indices)  # an example's windows
        return [i for i, e in enumerate(dataset.example_index) if e in wanted]

    def evaluate(self, model, tokenizer, data, config, *, splits=None):
        metrics, preds = {}, {}
        for split in splits or data.spec.dev_splits:
            examples = subset(data.split(split), config.max_dev_examples, config.seed)
            scores, answers = evaluate(model, tokenizer, examples,
                                       max_seq_len=config.max_seq_len,
                                       stride=stride(config.max_seq_len))
            metrics[split] = {k: v / 100 for k, v in scores.items()}
            preds[split] = [" ".join(answers[ex.id].split()) for ex in examples]
        return metrics, preds


FAMILY = QAFamily()
