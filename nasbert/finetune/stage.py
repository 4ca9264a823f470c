"""Stage 4: downstream fine-tuning with knowledge distillation, for a run's models.

The teacher is fine-tuned on the task first (once, cached in the run folder) and its
logits on the training set are cached once. A student (an extracted subnet, a
baseline, any sequence-classification model) is then trained with distillation from
them (:mod:`~nasbert.finetune.distill`).

Run folder layout::

    finetune/<task>/teacher/        model/, metrics.json, train_logits.pt
    finetune/<task>/<id>/           model/, metrics.json, predictions_<split>.tsv

>>> results = finetune("runs/qs", "sst2", data_dir="glue/SST-2")  # doctest: +SKIP
>>> results["latency-12ms"]["dev"]["accuracy"]                    # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from nasbert.data.tasks import Examples, TaskData
from nasbert.digest import digest
from nasbert.errors import ConfigError
from nasbert.families import family_of
from nasbert.families.sentence import Encoded, load_classifier, predict
from nasbert.finetune.config import FinetuneConfig, key_fields
from nasbert.finetune.distill import CHECKPOINT_SECONDS, seconds_before, train_classifier
from nasbert.finetune.record import FinetunedRecord
from nasbert.hf.quiet import quiet_transformers
from nasbert.io import atomic_dir, atomic_torch_save, atomic_write_text, cached_record
from nasbert.model import check_model_dir
from nasbert.pooling import Pooling
from nasbert.provenance import provenance
from nasbert.run import TEACHER, RunDir, Variant


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.base_model.parameters())


def save_result(folder: Path, model, tokenizer, metrics: dict, preds: dict[str, list],
          extra: dict | None = None) -> None:
    """model/ (unless ``model`` is None), metrics.json and predictions, all at once (a
    folder swap)."""
    with atomic_dir(folder) as tmp:
        if model is not None:
            with quiet_transformers():
                model.save_pretrained(tmp / "model")
                tokenizer.save_pretrained(tmp / "model")
        for split, pred in preds.items():
            (tmp / f"predictions_{split}.tsv").write_text(
                "index\tprediction\n" + "".join(f"{i}\t{p}\n" for i, p in enumerate(pred)))
        for name, value in (extra or {}).items():
            atomic_torch_save(tmp / name, value)
        atomic_write_text(tmp / "metrics.json", json.dumps(metrics, indent=1))


def finetune_teacher(run: RunDir | str | Path, data: TaskData, config: FinetuneConfig, *,
                     progress: bool = True) -> Path:
    """Fine-tune the run's teacher on the task and cache its training-set logits; a no-op
    when ``finetune/<task>/teacher`` already holds them for the same data and schedule."""
    run = RunDir.of(run)
    family = family_of(data.spec.name)
    family.check(data, config)
    folder = run.finetune_dir(data.name, teacher_variant(config))
    key = config.teacher_key(data)
    if cached_result(folder, key):
        return folder
    name = run.teacher_name()
    tokenizer = run.tokenizer()
    train_examples = family.examples(data, config)
    train_set = family.dataset(tokenizer, data, config, train_examples)
    model = family.model(name, data, config, config.seed, pooling=Pooling.of(name),
                         examples=train_examples)
    start = time.time()
    with WorkDir(folder, key) as work:  # kept until the result is written
        history = train_classifier(
            model, tokenizer, data, config, lr=config.teacher_lr, epochs=config.teacher_epochs,
            batch_size=config.teacher_batch_size, train_set=train_set, workdir=work,
            progress=f"{data.name} {teacher_variant(config).folder}" if progress else None,
            checkpoint_seconds=CHECKPOINT_SECONDS)
        metrics, preds = family.evaluate(model, tokenizer, data, config)
        logits = family.predict(model, family.dataset(  # on the scale the students learn
            tokenizer, data, config, train_examples, train=False))
        record = FinetunedRecord(
            TEACHER, key, data.spec.name, dataclasses.asdict(config), metrics, extra={
                "data": data.source, "model": run.recipe().teacher, "params": _params(model),
                "train_examples": len(train_set),
                "seconds": round(time.time() - start + seconds_before(history), 1),
                "history": history, **provenance()})
        save_result(folder, model, tokenizer, record.to_dict(), preds,
              extra={"train_logits.pt": {"key": key, "logits": logits}})
    return folder


def cached_result(folder: Path, key: str) -> dict | None:
    record = cached_record(folder / "metrics.json", key)
    if record is not None:  # and the scratch folder a kill after writing it may have left
        shutil.rmtree(WorkDir(folder).path, ignore_errors=True)
    return record


class WorkDir:
    """Trainer's scratch folder beside the result. With ``key`` (what the result
    depends on) it holds the checkpoints a killed training resumes from: kept when the
    block fails, reused while the key is the same, removed once the block (which writes
    the result) completes. Without a key, started afresh every time."""

    def __init__(self, folder: Path, key: str | None = None):
        self.path = folder.parent / f".{folder.name}.work"
        self.key = key

    def __enter__(self) -> Path:
        stamp = self.path / "key"
        if self.key is None or not stamp.is_file() or stamp.read_text() != self.key:
            shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)
        if self.key is not None:
            stamp.write_text(self.key)
        return self.path

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None or self.key is None:
            shutil.rmtree(self.path, ignore_errors=True)


def teacher_labels(run: RunDir, data: TaskData, config: FinetuneConfig, name: str,
                   identity: list, make: Callable[[], Examples], *, teacher_key: str | None = None,
                   progress: bool = True) -> tuple[Examples, torch.Tensor]:
    """Examples that ``make`` builds (identified by ``identity``) and the fine-tuned
    teacher's logits on them, made once and kept in
    ``finetune/<task>/teacher/<name>-<key>.pt`` (beside its training-set logits, and
    replaced with them when the teacher is). ``teacher_key``: the teacher's stored key
    (default: the one ``config`` gives)."""
    teacher_dir = run.finetune_dir(data.name, teacher_variant(config))
    teacher_key = teacher_key or config.teacher_key(data)
    if not cached_result(teacher_dir, teacher_key):
        raise ConfigError(f"holds no teacher fine-tuned on {data.name} with this schedule; "
                          f"run `nasbert finetune {run} --task {data.spec.name}` first",
                          source=str(teacher_dir))
    key = digest([teacher_key, *identity])
    path = teacher_dir / f"{name}-{key}.pt"
    if path.is_file():
        stored = torch.load(path, weights_only=True)
        return Examples([tuple(t) for t in stored["texts"]], stored["labels"]), stored["logits"]
    examples = make()
    model = load_classifier(teacher_dir / "model", data.spec, config.seed,
                            formulation=config.formulation)
    label = f"{data.name}: the teacher labels {len(examples):,} {name} examples"
    logits = predict(model, Encoded(run.tokenizer(), examples, config.max_seq_len,
                                    apart=config.formulation == "bi"),
                     progress=label if progress else None)
    atomic_torch_save(path, {"texts": [list(t) for t in examples.texts],
                             "labels": examples.labels, "logits": logits,
                             "identity": identity, **provenance()})
    return examples, logits


def teacher_labelled(run: RunDir, data: TaskData, config: FinetuneConfig, *,
                     progress: bool = True) -> tuple[Examples, torch.Tensor]:
    """The transfer examples of ``config.augment`` (from the training set and the run's
    corpus) and the fine-tuned teacher's logits on them (:func:`teacher_labels`)."""
    from nasbert.finetune.augment import WordPool, augment, corpus_sentences

    if data.spec.is_regression:
        raise ConfigError("augmentation is for classification tasks (the teacher's soft "
                          "labels); leave augment out", source=f"task {data.spec.name}")

    def make() -> Examples:
        sentences = corpus_sentences(run)
        pool = WordPool([w for s in sentences for w in s.split()],
                        list(run.tokenizer().get_vocab()))
        train = data.split("train").subset(config.max_train_examples, config.seed)
        return augment(train, pool, config.augment, sentences)

    return teacher_labels(run, data, config, "augmented",
                          [dataclasses.asdict(config.augment), run.corpus_key()], make,
                          progress=progress)


def student_key(config: FinetuneConfig, teacher_key: str, model_id: str,
                source: str = "extracted") -> str:
    """What a fine-tuned student depends on; ``source``: ``"extracted"`` or the key of
    the stage-one model it started from."""
    return digest([teacher_key, model_id, key_fields(config), source])


def student_source(run: RunDir, model_id: str, init: str = "auto") -> tuple[Path, str]:
    """The folder a student starts from and its identity for :func:`student_key`: the
    stage-one model when there is one (unless ``init`` is ``"extracted"``), else the
    extracted one."""
    folder = run.distilled_dir(model_id)
    record = folder / "stage_one.json"
    if init != "extracted" and record.is_file():
        return folder, json.loads(record.read_text())["key"]
    if init == "distilled":
        raise ConfigError(f"holds no stage-one model; run `nasbert distill {run} --subnet "
                          f"{model_id}` first, or fine-tune from the extracted weights "
                          "(init: extracted)", source=str(folder))
    return run.subnet_dir(model_id), "extracted"


def distillation_set(run: RunDir, data, config: FinetuneConfig
                     ) -> tuple[torch.utils.data.Dataset, Sequence]:
    """The task's training examples under ``config`` (its subset), encoded with the
    fine-tuned teacher's cached outputs: what every student of the task distils on."""
    stored = torch.load(run.finetune_dir(data.name, teacher_variant(config)) / "train_logits.pt",
                        weights_only=True)
    family = family_of(data.spec.name)
    examples = family.examples(data, config)
    return family.dataset(run.tokenizer(), data, config, examples,
                          teacher=stored["logits"]), examples


def student_variant(model_id: str, config: FinetuneConfig) -> Variant:
    """Which fine-tuned folder of ``model_id`` the schedule ``config`` writes: another
    student seed's, without stage one (``init="extracted"``), with transfer data."""
    return Variant(model_id, seed=config.student_seed, extracted=config.init == "extracted",
                   augmented=config.augment.enabled, bi=config.formulation == "bi")


def teacher_variant(config: FinetuneConfig) -> Variant:
    """Which folder the teacher fine-tuned under ``config`` lies in: one per
    formulation."""
    return Variant(TEACHER, bi=config.formulation == "bi")


def finetune_student(run: RunDir | str | Path, model_id: str, data: TaskData,
                     config: FinetuneConfig, *, out_dir: Path | None = None,
                     on_epoch: Callable[[dict], None] | None = None,
                     save_model: bool = True, progress: bool = True,
                     checkpoint_seconds: float | None = CHECKPOINT_SECONDS) -> dict:
    """Fine-tune and distil ``subnets/<model_id>`` on the task (the fine-tuned teacher
    must exist); writes ``finetune/<task>/<model_id>/`` and returns its record. A no-op
    returning the stored record when it was done with the same configuration; a killed
    one resumes from its last checkpoint (saved every ``checkpoint_seconds``; None: no
    checkpoints)."""
    run = RunDir.of(run)
    family = family_of(data.spec.name)
    family.check(data, config)
    source, identity = student_source(run, run.model_ids([model_id])[0], config.init)
    teacher_dir = run.finetune_dir(data.name, teacher_variant(config))
    tkey = config.teacher_key(data)
    if not cached_result(teacher_dir, tkey):
        raise ConfigError("holds no teacher fine-tuned with this data and schedule; run "
                          "finetune_teacher first", source=str(teacher_dir))
    seed = config.seed if config.student_seed is None else config.student_seed
    variant = student_variant(model_id, config)
    name = variant.folder
    folder = out_dir or run.finetune_dir(data.name, variant)
    key = student_key(config, tkey, model_id, identity)
    cached = cached_result(folder, key)
    if cached:
        return cached
    tokenizer = run.tokenizer()
    train_set, train_examples = distillation_set(run, data, config)
    augmented = 0
    if config.augment.enabled:
        examples, logits = teacher_labelled(run, data, config, progress=progress)
        augmented = len(examples)
        train_set = torch.utils.data.ConcatDataset(
            [train_set, Encoded(tokenizer, examples, config.max_seq_len, teacher=logits,
                                apart=config.formulation == "bi")])
    model = family.model(source, data, config, seed, pooling=Pooling.of(run.teacher_name()),
                         examples=train_examples)
    teacher = (family.model(teacher_dir / "model", data, config, seed)
               if config.hidden_epochs > 0 else None)
    start = time.time()
    with WorkDir(folder, key) as work:  # kept until the result is written
        history = train_classifier(
            model, tokenizer, data, config, lr=config.lr, epochs=config.epochs,
            batch_size=config.batch_size, alpha=config.alpha, train_set=train_set,
            teacher=teacher, hidden_epochs=config.hidden_epochs, on_epoch=on_epoch,
            workdir=work, progress=f"{data.name} {name}" if progress else None, seed=seed,
            checkpoint_seconds=checkpoint_seconds)
        metrics, preds = family.evaluate(model, tokenizer, data, config)
        card = {}
        if (source / "nasbert.json").is_file():
            card = json.loads((source / "nasbert.json").read_text())
        record = FinetunedRecord(
            model_id, key, data.spec.name, dataclasses.asdict(config), metrics, extra={
                "teacher_key": tkey, "data": data.source, "source": str(source),
                "stage_one": identity != "extracted", "arch": card.get("arch"),
                "params": _params(model), "train_examples": len(train_examples),
                "augmented": augmented,
                "seconds": round(time.time() - start + seconds_before(history), 1),
                "history": history, **provenance()}).to_dict()
        save_result(folder, model if save_model else None, tokenizer, record, preds)
    return record


def finetune(run: RunDir | str | Path, task: str, *, data_dir: str | Path | None = None,
             models: Sequence[str] | None = None, config: FinetuneConfig | None = None,
             progress: bool = True) -> dict[str, dict]:
    """Fine-tune the teacher (cached) and then each of ``models`` (default: every model
    under ``subnets/``) with distillation; returns each one's record, the teacher's
    under ``"teacher"``. Re-running skips what is done. ``progress``: a bar per model
    (with its loss) and a line with its result."""
    run = RunDir.of(run)
    config = config or FinetuneConfig()
    family = family_of(task)
    data = family.load(task, data_dir, seed=config.seed, fold=config.fold, folds=config.folds)
    family.check(data, config)
    ids = run.model_ids(models)
    for model_id in ids:  # before the teacher's fine-tuning: a broken folder fails at once
        check_model_dir(student_source(run, model_id, config.init)[0], any_type=True)
    main, metric = data.spec.dev_splits[0], data.spec.metric
    teacher_dir = finetune_teacher(run, data, config, progress=progress)
    results = {TEACHER: FinetunedRecord.load(teacher_dir).to_dict()}
    if progress:
        print(f"{TEACHER:<24} {metric} {results[TEACHER][main][metric]:.4f}", flush=True)
    for model_id in ids:
        record = finetune_student(run, model_id, data, config, progress=progress)
        results[model_id] = record
        if progress:
            print(f"{model_id:<24} {metric} {record[main][metric]:.4f}  "
                  f"({record['seconds']:.0f} s)", flush=True)
    logging.getLogger(__name__).info("fine-tuned %d models on %s", len(ids), task)
    return results
