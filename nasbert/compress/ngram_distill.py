"""Distilling a task's fine-tuned teacher into a sparse n-gram student
(:mod:`nasbert.compress.ngram`), as Sparse Distillation does (Ye et al., NAACL 2022):

1. **distillation text**: the task's training text (all of it, when the teacher was
   fine-tuned on a subset: the rest is read without its labels), in-domain text the user points at
   (files, folders or ``hf:NAME``, read like a corpus; cut into sentences, or pairs of
   consecutive sentences for pair tasks) and, optionally, perturbed training examples
   (:mod:`nasbert.finetune.augment`); the teacher labels it once (cached beside its
   training-set logits);
2. **mining**: the n-gram vocabulary of that text (floor and cap);
3. **stage one**: the student learns the teacher's soft targets on all of that text
   (distillation alone), then **stage two** on the labelled training set with the
   transformer students' loss (the teacher's ``alpha`` and temperature): both through
   the one fine-tuning loop (:func:`~nasbert.finetune.distill.train_classifier`), with
   Adagrad for the sparse table;
4. **in the family**: the student lands in ``finetune/<task>/ngram/`` (model, tokenizer,
   model card, dev metrics) beside the task's transformer students, and
   :func:`measure_ngram` measures it with the latency protocol into its ``deploy.json``,
   where ``nasbert query`` finds it.

Pair tasks (the paper's variant): each sentence's bag is averaged apart and the MLP reads
``[u, v, |u - v|, u * v]``.

Stage one's model is kept (``finetune/<task>/.<id>-stage-one/``), so an interrupted
run resumes with stage two; a finished student is not trained again for the same inputs.

>>> record = train_ngram_student("runs/wiki", load_task("sst2", "glue"),
...                              NgramStudentConfig(texts=("wiki/",)))   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import time
from pathlib import Path

import torch

from nasbert.compress.forms import FormsRecord, MeasuredForm
from nasbert.compress.ngram import (
    MiningConfig,
    NgramForSequenceClassification,
    NgramTokenizer,
    load_ngram,
    mine_ngrams,
    sparse_optimizer,
)
from nasbert.data.tasks import Examples, TaskData
from nasbert.digest import digest
from nasbert.errors import ConfigError
from nasbert.families import IGNORE
from nasbert.finetune.augment import AugmentConfig
from nasbert.finetune.config import FinetuneConfig
from nasbert.finetune.record import FinetunedRecord
from nasbert.io import atomic_dir, atomic_write_text, cached_record
from nasbert.provenance import provenance
from nasbert.run import NGRAM, TEACHER, RunDir, is_ngram
from nasbert.schema import check

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclasses.dataclass(frozen=True)
class NgramStudentConfig:
    """The student's size, its distillation text and its schedule."""

    mining: MiningConfig = MiningConfig()
    hidden_size: int = 128  # embedding width (the table: rows x hidden_size floats)
    mlp_sizes: tuple[int, ...] = (256,)
    dropout: float = 0.1
    # in-domain unlabelled text: files, folders (.txt, .jsonl) or hf:NAME, as corpora are
    texts: tuple[str, ...] = ()
    max_texts: int = 100_000  # sentences (pairs) of that text the teacher labels
    # the task's training examples the teacher was not fine-tuned on (a subset schedule),
    # read as unlabelled text: at most this many (None: all of them)
    task_texts: int | None = None
    augment: AugmentConfig = AugmentConfig()  # perturbed training examples, teacher-labelled
    # the schedule of results/ngram.md (SST-2 dev accuracy 0.8211 and 0.8234 after the
    # two epochs of stage one; stage two added nothing there)
    unlabelled_epochs: float = 2.0  # stage one: soft targets on all the distillation text
    epochs: float = 1.0  # stage two: the labelled training set, the students' loss
    lr: float = 0.1  # Adagrad
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.hidden_size > 0, "must be positive", field="hidden_size")
        check(all(s > 0 for s in self.mlp_sizes), "must list positive sizes", field="mlp_sizes")
        check(0 <= self.dropout < 1, "must be in [0, 1)", field="dropout")
        check(self.max_texts >= 0, "must not be negative", field="max_texts")
        check(self.task_texts is None or self.task_texts >= 0, "must not be negative",
              field="task_texts")
        check(self.unlabelled_epochs >= 0, "must not be negative", field="unlabelled_epochs")
        check(self.epochs >= 0, "must not be negative", field="epochs")
        check(self.unlabelled_epochs + self.epochs > 0, "and epochs cannot both be 0",
              field="unlabelled_epochs")
        check(self.lr > 0, "must be positive", field="lr")
        check(self.batch_size > 0, "must be positive", field="batch_size")


def teacher_schedule(run: RunDir, task: str) -> tuple[FinetuneConfig, FinetunedRecord]:
    """The schedule the task's teacher was fine-tuned with, and its record (an error
    naming the command when there is none)."""
    folder = run.finetune_dir(task, TEACHER)
    record_file = folder / "metrics.json"
    if not record_file.is_file() or not (folder / "train_logits.pt").is_file():
        raise ConfigError(f"has no teacher fine-tuned on {task}; an n-gram student distils "
                          f"one: run `nasbert finetune {run} --task {task}` first",
                          source=str(run))
    record = FinetunedRecord.load(folder)
    return record.schedule(str(record_file)), record


def sentences(documents: list[str], *, pair: bool, limit: int, seed: int
              ) -> list[tuple[str, ...]]:
    """Sentences of 3 to 64 words (pair tasks: consecutive ones, two by two), a seeded
    random ``limit`` of them, in a fixed order."""
    out: list[tuple[str, ...]] = []
    for doc in documents:
        pieces = [s.strip() for line in doc.splitlines() for s in _SENTENCE.split(line)]
        pieces = [s for s in pieces if 3 <= len(s.split()) <= 64]
        if pair:
            out += [(a, b) for a, b in zip(pieces[::2], pieces[1::2])]
        else:
            out += [(s,) for s in pieces]
    if len(out) > limit:
        out = [out[i] for i in sorted(random.Random(seed).sample(range(len(out)), limit))]
    return out


def _transfer(run: RunDir, data: TaskData, schedule: FinetuneConfig, teacher: FinetunedRecord,
              config: NgramStudentConfig, *, progress: bool) -> tuple[Examples, torch.Tensor,
                                                                      list]:
    """The teacher-labelled distillation text besides the training set: in-domain
    sentences, the task's examples the teacher did not see, perturbed training examples;
    each part labelled once and cached on its own (beside the teacher's logits), so that
    students on other mixtures reuse it."""
    from nasbert.data.corpus import CorpusConfig, read_documents
    from nasbert.finetune.augment import WordPool, augment
    from nasbert.finetune.stage import teacher_labels

    train = data.split("train").subset(schedule.max_train_examples, schedule.seed)
    seen = set(train.texts)
    unused = [t for t in data.split("train").texts if t not in seen]
    if config.task_texts is not None and len(unused) > config.task_texts:
        unused = random.Random(config.seed).sample(unused, config.task_texts)
    pair = len(data.spec.columns) == 2
    docs, records = read_documents(CorpusConfig(sources=config.texts)) if config.texts else ([], [])

    def in_domain() -> Examples:
        texts = sentences(docs, pair=pair, limit=config.max_texts, seed=config.seed)
        if not texts:
            raise ConfigError("holds no sentence of 3 to 64 words; give text to distil on",
                              source="distillation text " + ", ".join(config.texts))
        return Examples(texts, [IGNORE] * len(texts))

    def perturbed() -> Examples:  # replacement words: the training text's and the vocabulary's
        pool = WordPool([w for t in train.texts for s in t for w in s.split()],
                        list(run.tokenizer().get_vocab()))
        return augment(train, pool, dataclasses.replace(config.augment, corpus_sentences=0))

    parts = []
    if config.texts and config.max_texts:
        parts.append(("ngram-text", [records, config.max_texts, pair, config.seed], in_domain))
    if unused:
        parts.append(("ngram-task", [len(unused), digest(unused)],
                      lambda: Examples(unused, [IGNORE] * len(unused))))
    if config.augment.enabled:
        parts.append(("ngram-augmented", [dataclasses.asdict(config.augment)], perturbed))
    examples, logits = Examples([], []), torch.empty(0, data.spec.num_labels)
    for name, identity, make in parts:
        more, more_logits = teacher_labels(run, data, schedule, name, identity, make,
                                           teacher_key=teacher.key, progress=progress)
        examples = Examples(examples.texts + more.texts, examples.labels + more.labels)
        logits = torch.cat([logits, more_logits])
    return examples, logits, records


def _identity(source: dict) -> str:
    """What data is, not where it lies (as the teacher's key reads it)."""
    return json.dumps({k: v for k, v in source.items() if k != "path"}, sort_keys=True)


def student_key(teacher_key: str, config: NgramStudentConfig, records: list) -> str:
    return digest([teacher_key, dataclasses.asdict(config), records, NGRAM])


def train_ngram_student(run: RunDir | str | Path, data: TaskData,
                        config: NgramStudentConfig = NgramStudentConfig(), *,
                        model_id: str = NGRAM, progress: bool = True) -> dict:
    """Distil the task's fine-tuned teacher into an n-gram student; writes
    ``finetune/<task>/<model_id>/`` (``ngram``, or ``ngram-<variant>`` for a study's
    others) and returns its record (the stored one when it was made from the same
    inputs)."""
    from nasbert.families.sentence import Encoded, evaluate, unit_scale
    from nasbert.finetune.distill import train_classifier
    from nasbert.finetune.stage import WorkDir
    from nasbert.hf.quiet import quiet_transformers

    if not is_ngram(model_id):
        raise ConfigError(f"must be {NGRAM!r} or start with '{NGRAM}-' (the family tells n-gram "
                          "students by their id)", source=f"model id {model_id!r}")
    run = RunDir.of(run)
    task = data.spec.name
    schedule, teacher = teacher_schedule(run, task)
    if _identity(data.source) != _identity(teacher.extra["data"]):
        raise ConfigError(f"was fine-tuned on other data than {data.source.get('path', task)}; "
                          f"give the data it was fine-tuned on, or fine-tune it again "
                          f"(`nasbert finetune {run} --task {task}`)",
                          source=str(run.finetune_dir(task, TEACHER)))
    examples, logits, records = _transfer(run, data, schedule, teacher, config,
                                          progress=progress)
    folder = run.finetune_dir(task, model_id)
    key = student_key(teacher.key, config, records)
    stored = cached_record(folder / "metrics.json", key)
    if stored:
        return stored
    start = time.time()
    train = data.split("train").subset(schedule.max_train_examples, schedule.seed)
    train_logits = torch.load(run.finetune_dir(task, TEACHER) / "train_logits.pt",
                              weights_only=True)["logits"]
    stage_one = run.finetune_dir(task, f".{model_id}-stage-one")
    done = (cached_record(stage_one / "stage.json", key)
            if (stage_one / "optimizer.pt").is_file() else None)
    history: list[dict] = []
    if done:
        model, tokenizer = load_ngram(stage_one / "model")
        mined_stats, history = done["mining"], done["history"]
        model.train()
    else:
        texts = (s for t in [*train.texts, *examples.texts] for s in t)
        mined = mine_ngrams(texts, config.mining)
        mined_stats = mined.stats
        if progress:
            print(f"{task}: {mined.stats['kept']:,} n-grams of {mined.stats['distinct']:,} "
                  f"({mined.stats['seconds']:.0f} s, peak memory "
                  f"{mined.stats['peak_rss_mb']:,.0f} MB)", flush=True)
        tokenizer = NgramTokenizer.from_mining(mined)
        model = _new_student(tokenizer, data, config, run, teacher, mined.stats)
    L = schedule.max_seq_len
    # one optimiser for both stages: stage two continues stage one with Adagrad's
    # accumulated squares. A fresh Adagrad takes steps of about lr on every row it
    # touches: restarted so at stage two, SST-2 dev accuracy fell from 0.826 to 0.798
    optimizer = sparse_optimizer(model, config.lr)
    if done:
        optimizer.load_state_dict(torch.load(stage_one / "optimizer.pt", weights_only=True))

    def fit(train_set, epochs: float, alpha: float, name: str) -> list[dict]:
        with WorkDir(folder) as work:
            return train_classifier(
                model, tokenizer, data, schedule, train_set=train_set, lr=config.lr,
                epochs=epochs, batch_size=config.batch_size, alpha=alpha, workdir=work,
                progress=f"{task} {name}" if progress else None, seed=config.seed,
                optimizer=lambda lr: optimizer, max_grad_norm=0.0)

    scale = unit_scale(data, schedule, train)  # the teacher's logits are on that scale
    model.config.label_scale = scale
    labelled = Encoded(tokenizer, train, L, teacher=train_logits, scale=scale)
    if not done and config.unlabelled_epochs > 0:
        everything = torch.utils.data.ConcatDataset(
            [labelled, Encoded(tokenizer, examples, L, teacher=logits)] if len(examples)
            else [labelled])
        history = [{**h, "stage": "unlabelled"} for h in fit(
            everything, config.unlabelled_epochs, 0.0, f"{model_id} (teacher's soft targets)")]
        with atomic_dir(stage_one) as tmp, quiet_transformers():
            model.save_pretrained(tmp / "model")
            tokenizer.save_pretrained(tmp / "model")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            atomic_write_text(tmp / "stage.json", json.dumps(
                {"key": key, "mining": mined_stats, "history": history}, indent=1))
    if config.epochs > 0:
        history += [{**h, "stage": "labelled"} for h in fit(labelled, config.epochs,
                                                             schedule.alpha, model_id)]
    model.eval()
    metrics, preds = evaluate(model, tokenizer, data, schedule)
    memory = model.memory_bytes()
    record = FinetunedRecord(model_id, key, task, dataclasses.asdict(config), metrics, extra={
        "kind": NGRAM, "teacher_key": teacher.key, "data": data.source, "rows": len(tokenizer),
        "params": sum(p.numel() for p in model.parameters()),
        "memory_mb": {k: round(v / 2**20, 1) for k, v in memory.items()},
        "train_examples": len(train), "transfer_examples": len(examples),
        "text_sources": records, "mining": mined_stats, "teacher_config": teacher.config,
        "seconds": round(time.time() - start, 1), "history": history,
        **provenance()}).to_dict()
    _write(folder, model, tokenizer, record, preds, teacher)
    return record


def _new_student(tokenizer: NgramTokenizer, data: TaskData, config: NgramStudentConfig,
                 run: RunDir, teacher: FinetunedRecord,
                 mining: dict) -> NgramForSequenceClassification:
    from nasbert.compress.configuration_ngram import NgramConfig

    spec = data.spec
    torch.manual_seed(config.seed)
    labels = {} if spec.is_regression else {
        "id2label": dict(enumerate(spec.classes)),
        "label2id": {c: i for i, c in enumerate(spec.classes)}}
    return NgramForSequenceClassification(NgramConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size,
        mlp_sizes=list(config.mlp_sizes), hidden_dropout_prob=config.dropout,
        max_n=tokenizer.max_n, lowercase=tokenizer.lowercase,
        token_pattern=tokenizer.token_pattern, pair=len(spec.columns) == 2,
        num_labels=spec.num_labels,
        problem_type="regression" if spec.is_regression else "single_label_classification",
        task=spec.name, provenance={"run": str(run.path), "teacher": teacher.extra["model"],
                                    "teacher_key": teacher.key,
                                    "mining": mining["config"]}, **labels))


def _write(folder: Path, model, tokenizer: NgramTokenizer, record: dict,
           preds: dict[str, list], teacher: FinetunedRecord) -> None:
    from nasbert.hf.quiet import quiet_transformers

    with atomic_dir(folder) as tmp:
        with quiet_transformers():
            model.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        (tmp / "model" / "README.md").write_text(model_card(record, teacher), encoding="utf-8")
        for split, pred in preds.items():
            (tmp / f"predictions_{split}.tsv").write_text(
                "index\tprediction\n" + "".join(f"{i}\t{p}\n" for i, p in enumerate(pred)))
        atomic_write_text(tmp / "metrics.json", json.dumps(record, indent=1))


def model_card(record: dict, teacher: FinetunedRecord) -> str:
    from nasbert.data.tasks import task_spec

    spec = task_spec(record["task"])
    split, metric = spec.dev_splits[0], spec.metric
    ours, theirs = record[split][metric], teacher.metrics[split][metric]
    mining = record["mining"]
    return "\n".join([
        f"# n-gram student for {record['task']}", "",
        "A sparse n-gram student (Sparse Distillation: a deep averaging network over word "
        f"n-grams), distilled by [nasbert](https://pypi.org/project/nasbert/) from the "
        f"fine-tuned teacher `{teacher.extra['model']}`. It is **task-specific**: it classifies "
        f"{record['task']} and nothing else.", "",
        "```python",
        "import nasbert",
        "from nasbert.compress.ngram import load_ngram",
        "model, tokenizer = load_ngram(folder)",
        "logits = model(**tokenizer(['a text'], return_tensors='pt')).logits",
        "```", "",
        "| field | value |", "| --- | --- |",
        f"| {split} {metric} | {ours:.4f} (teacher {theirs:.4f}, "
        f"{ours / theirs:.1%} of it) |" if theirs else f"| {split} {metric} | {ours:.4f} |",
        f"| n-gram rows | {record['rows']:,} (1 to {mining['config']['max_n']} words, seen "
        f">= {mining['config']['min_count']} times, at most "
        f"{mining['config']['max_ngrams']:,}) |",
        f"| weights | table {record['memory_mb']['table']:,} MB, MLP "
        f"{record['memory_mb']['mlp']:,} MB |",
        f"| distillation text | {record['train_examples']:,} training examples + "
        f"{record['transfer_examples']:,} teacher-labelled others |",
        f"| made | {record['created']}, nasbert {record['nasbert']} |",
    ]) + "\n"


def measure_ngram(run: RunDir | str | Path, task: str, protocol=None, *,
                  model_id: str = NGRAM) -> dict:
    """The student's latency under ``protocol`` (in a clean process, rescaled against
    the run's teacher as profiled, as every deployment figure is), stored as its
    ``deploy.json`` (float32: the table is read, not multiplied; the MLP is tiny), where
    :func:`~nasbert.compress.deploy.deployment_candidates` finds it."""
    from nasbert.latency.measure import Protocol, device_id, fingerprint, measure_clean
    from nasbert.latency.stage import reference

    run = RunDir.of(run)
    protocol = protocol or Protocol()
    folder = run.finetune_dir(task, model_id)
    record = FinetunedRecord.load(folder)
    if record is None:
        raise ConfigError(f"has no n-gram student for {task}; run `nasbert ngram {run} "
                          f"--task {task}`", source=str(run))
    device = device_id(fingerprint(protocol))
    key = digest([record.key, dataclasses.asdict(protocol), device])
    stored = cached_record(folder / "deploy.json", key)
    if stored:
        return stored
    ref = reference(run, protocol)
    ms = measure_clean([folder / "model"], protocol, rounds=protocol.rounds, reference=ref)[0]
    deploy = FormsRecord(key, model_id, task, dataclasses.asdict(protocol),
                         [MeasuredForm("float32", record.metrics, ms, device)], kind=NGRAM,
                         provenance=provenance())
    deploy.save(folder / "deploy.json")
    return deploy.to_dict()
