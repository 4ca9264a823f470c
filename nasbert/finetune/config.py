"""The fine-tuning and sweep settings: frozen dataclasses, checked on construction; and
``GLUE_SCHEDULES``, the schedules of results/glue.md (whole training sets)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from nasbert.data.tasks import TaskData
from nasbert.digest import digest
from nasbert.finetune.augment import AugmentConfig
from nasbert.schema import check


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """One student's (and the teacher's) fine-tuning schedule."""

    epochs: float = 3.0
    lr: float = 1e-4
    batch_size: int = 32
    alpha: float = 0.5  # weight of the task loss; 1 - alpha weighs distillation
    temperature: float = 2.0
    hidden_epochs: float = 0.0  # stage 1: hidden-state distillation on the task data
    teacher_epochs: float = 3.0
    teacher_lr: float = 5e-5
    teacher_batch_size: int = 32
    max_seq_len: int = 128
    max_train_examples: int | None = None  # a seeded subset (quick runs)
    max_dev_examples: int | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    # batches of similar lengths (transformers' LengthGroupedSampler), so that dynamic
    # padding pads little. Measured on the training sets (tokens computed over real
    # ones, batches of 32 / 16): SST-2 3.01x random, 1.05x grouped; CoLA 1.82x / 1.03x;
    # MRPC 1.43x / 1.02x (scripts/padding_waste.py, results/padding.md)
    group_by_length: bool = True
    seed: int = 0  # the training and dev subsets, the teacher's and (by default) the students'
    # a student's own seed (its head's initialisation, its data order), to repeat students
    # over seeds against the same teacher; such a student lands in <id>-seed<n>/
    student_seed: int | None = None
    # what a student starts from: its stage-one model (distill/<id>/model) when stage one
    # has made one ("auto"), always ("distilled": an error if missing), or the extracted
    # weights ("extracted", the ablation without stage one; lands in <id>-extracted/)
    init: Literal["auto", "distilled", "extracted"] = "auto"
    # teacher-labelled transfer data for the student (nasbert.finetune.augment); a
    # student trained with it lands in <id>-aug/
    augment: AugmentConfig = AugmentConfig()
    # how a sentence-pair task is read: "cross" (the pair in one sequence, a head on the
    # first token) or "bi" (each sentence encoded and pooled alone with the teacher's
    # pooling, nasbert.families.pairs); the teacher and every student alike, each
    # formulation in its own folders (<id>-bi/)
    formulation: Literal["cross", "bi"] = "cross"
    # score on a held-out fold of the training set (1..folds, seeded by seed) instead of
    # the dev split, for a task whose dev split is missing (STS-B's training file alone)
    fold: int | None = None
    folds: int = 5
    # a cross-encoder's regression labels: "unit", scaled to [0, 1] by the largest (the
    # model predicts in [0, 1], its predictions scaled back); "raw", as they are. Measured
    # on STS-B (results/pairs.md, the teacher on fold 1): 87.0 Pearson unit, 82.8 raw
    regression_labels: Literal["unit", "raw"] = "unit"

    def __post_init__(self) -> None:
        check(self.epochs > 0, "must be positive", field="epochs")
        check(self.lr > 0, "must be positive", field="lr")
        check(self.batch_size > 0, "must be positive", field="batch_size")
        check(0 <= self.alpha <= 1, "must be in [0, 1]", field="alpha")
        check(self.temperature > 0, "must be positive", field="temperature")
        check(self.hidden_epochs >= 0, "must not be negative", field="hidden_epochs")
        check(8 <= self.max_seq_len <= 512, "must be in [8, 512]", field="max_seq_len")
        check(self.teacher_epochs > 0, "must be positive", field="teacher_epochs")
        check(self.teacher_lr > 0, "must be positive", field="teacher_lr")
        check(self.teacher_batch_size > 0, "must be positive", field="teacher_batch_size")
        check(self.formulation in ("cross", "bi"), "must be cross or bi", field="formulation")
        check(self.folds >= 2, "must be at least 2", field="folds")
        check(self.fold is None or 1 <= self.fold <= self.folds,
              f"must be in 1..{self.folds} (folds)", field="fold")
        for name in ("max_train_examples", "max_dev_examples"):
            check(getattr(self, name) is None or getattr(self, name) > 0,
                  "must be positive (leave it out for the whole split)", field=name)

    def teacher_key(self, data: TaskData) -> str:
        """What the fine-tuned teacher and its cached logits depend on: the data's
        contents (not where they lie, nor how the path was spelt) and the schedule."""
        fields = ("teacher_epochs", "teacher_lr", "teacher_batch_size", "max_seq_len",
                  "max_train_examples", "weight_decay", "warmup_ratio", "seed",
                  "group_by_length")
        identity = {k: v for k, v in data.source.items() if k != "path"}
        labels = ([{"regression_labels": self.regression_labels}]
                  if data.spec.is_regression and self.formulation == "cross" else [])
        return digest([identity, {f: getattr(self, f) for f in fields}, *later(self, fields=(
            "formulation",)), *labels])


# The formulation of a sentence-pair task where it is not given (the CLI's default, from
# task_defaults): measured for the teacher and every student in results/pairs.md. STS-B
# as bi-encoders (fold 1 of its training file, the replication recipe's run, seed 1): the
# teacher 88.9 Pearson against 82.8 as a cross-encoder, every student 77.8-85.8 against
# 28.1-60.5. The other pair tasks stay cross-encoders until measured.
PAIR_FORMULATION = {"stsb": "bi"}
# The sequence length of the span and token families where none is given: question
# answering as the field times and trains it (384 tokens, contexts cut into windows with a
# stride of 128), named entities long enough for every CoNLL-2003 valid sentence (256)
FAMILY_SEQ_LEN = {"squad": 384, "conll2003": 256}


def task_defaults(task: str) -> dict:
    """The fine-tuning settings a task takes where none is given: its measured
    formulation (:data:`PAIR_FORMULATION`), its family's sequence length
    (:data:`FAMILY_SEQ_LEN`)."""
    out = {"formulation": PAIR_FORMULATION[task]} if task in PAIR_FORMULATION else {}
    return {**out, **({"max_seq_len": FAMILY_SEQ_LEN[task]} if task in FAMILY_SEQ_LEN else {})}


# fields added after keys were first made: left out of a key while at these defaults, so
# that results made before them stay valid
_LATER = {"student_seed": None, "formulation": "cross", "fold": None, "folds": 5}


def later(config: FinetuneConfig, *, fields: tuple[str, ...] = tuple(_LATER)) -> list[dict]:
    """Those of ``fields`` (added after keys were first made) that differ from their
    defaults, as one dict, or nothing: what a key adds for them."""
    changed = {f: getattr(config, f) for f in fields if getattr(config, f) != _LATER[f]}
    return [changed] if changed else []


def key_fields(config: FinetuneConfig) -> dict:
    """The schedule as a student's key holds it: every field, less those added later
    while at their defaults (:data:`_LATER`)."""
    fields = dataclasses.asdict(config)
    del fields["regression_labels"]  # in the teacher's key, where it applies
    return {k: v for k, v in fields.items() if k not in _LATER or v != _LATER[k]}


# The schedules of results/glue.md (``nasbert.pipeline.build_results``), on the whole
# training sets. Sequence lengths from the data (the teacher's tokenizer, measured):
# SST-2 66 tokens at most (mean 13.3; 64 truncates 0.01 %), CoLA 47 (mean 11.3), MRPC
# pairs 103 (mean 53.2); batches are padded to their longest (dynamic padding), so short
# sentences cost what they are.
# The teacher: 3 epochs at 3e-5 (5 on the small tasks), the usual BERT-family settings.
# Students: logits distillation mixed with the task loss, after an epoch of hidden-state
# distillation on the small tasks, where the labelled set alone teaches a shallow student
# little.
GLUE_SCHEDULES: dict[str, FinetuneConfig] = {
    "sst2": FinetuneConfig(max_seq_len=64, epochs=2, lr=1e-4, teacher_epochs=3,
                           teacher_lr=3e-5, alpha=0.5, temperature=2.0),
    "mrpc": FinetuneConfig(max_seq_len=128, hidden_epochs=1, epochs=5, lr=1e-4,
                           teacher_epochs=5, teacher_lr=3e-5, alpha=0.5, temperature=2.0,
                           batch_size=16, teacher_batch_size=16),
    "cola": FinetuneConfig(max_seq_len=64, hidden_epochs=1, epochs=5, lr=1e-4,
                           teacher_epochs=5, teacher_lr=3e-5, alpha=0.5, temperature=2.0,
                           batch_size=16, teacher_batch_size=16),
}


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A hyper-parameter sweep on Ray Tune: ``OptunaSearch`` (TPE) proposes learning
    rate, epochs, batch size, alpha and temperature; ASHA stops poor trials after
    ``grace_period`` epochs. Trials run in parallel, ``cpus_per_trial`` each."""

    trials: int = 20  # configurations tried per model
    lr: tuple[float, float] = (2e-5, 5e-4)  # log-uniform
    epochs: tuple[int, ...] = (1, 2, 3)
    batch_size: tuple[int, ...] = (16, 32, 64)
    alpha: tuple[float, float] = (0.0, 1.0)
    temperature: tuple[float, float] = (1.0, 8.0)
    grace_period: int = 1
    reduction_factor: int = 2
    cpus_per_trial: int = 1
    max_concurrent: int = 0  # 0: as many as the CPUs allow
    num_cpus: int | None = None  # a local Ray's CPUs (default: all)
    address: str | None = None  # an existing Ray cluster
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.trials > 0, "must be positive", field="trials")
        check(0 < self.lr[0] < self.lr[1], "must be (low, high), 0 < low < high",
              field="lr")
        check(all(e > 0 for e in self.epochs) and bool(self.epochs),
              "must list positive epoch counts", field="epochs")
        check(self.cpus_per_trial > 0, "must be positive", field="cpus_per_trial")
