"""Quantisation-aware fine-tuning: for a student that dynamic int8 costs accuracy, a
short fine-tuning with every linear layer computing on int8's grid
(:func:`~nasbert.quantize.fake_quantized`), distilled from the task's teacher as
the student was (its cached logits, the student's schedule), so the weights settle where
rounding them costs least. Through the one fine-tuning loop.

The result is measured as int8 (dynamic quantisation of the trained float32 weights,
evaluated on dev after quantising); its latency is the plain int8 form's, the same
kernels on the same shapes. :func:`~nasbert.compress.deploy.prepare_deployment` runs it
where int8 loses more than ``QatConfig.threshold``; ``nasbert query --task`` then
chooses between the plain int8 and this one by their measured accuracy.

Run folder: ``finetune/<task>/<id>-qat/`` (``model/``: float32 weights trained for int8,
``metrics.json``: int8 dev metrics, ``deploy.json``: its deployable form).

>>> train_quantization_aware(run, data, "latency-8ms")          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from nasbert.data.tasks import TaskData
from nasbert.digest import digest
from nasbert.errors import ConfigError
from nasbert.families.sentence import evaluate, load_classifier
from nasbert.finetune.distill import train_classifier
from nasbert.finetune.record import FinetunedRecord
from nasbert.finetune.stage import (
    WorkDir,
    cached_result,
    distillation_set,
    save_result,
)
from nasbert.provenance import provenance
from nasbert.run import RunDir, Variant
from nasbert.schema import check


@dataclasses.dataclass(frozen=True)
class QatConfig:
    """Quantisation-aware fine-tuning of a fine-tuned student (a fraction of its
    schedule at a lower learning rate: it starts from the converged float32 model)."""

    # train when int8 loses more than this (in the task's metric); None: every model
    threshold: float | None = 0.01
    epochs: float = 1.0
    lr: float = 1e-5
    per_channel: bool = True  # as deployment quantises (nasbert.quantize)

    def __post_init__(self) -> None:
        check(self.threshold is None or self.threshold >= 0, "must be at least 0",
              field="threshold")
        check(self.epochs > 0, "must be positive", field="epochs")
        check(self.lr > 0, "must be positive", field="lr")


def qat_dir(run: RunDir, task: str, model_id: str) -> Path:
    return run.finetune_dir(task, Variant(model_id, form="quantisation-aware"))


def train_quantization_aware(run: RunDir | str | Path, data: TaskData, model_id: str,
                             config: QatConfig | None = None, *, progress: bool = True) -> dict:
    """Quantisation-aware fine-tuning of ``finetune/<task>/<model_id>/model`` into
    ``finetune/<task>/<id>-qat/``, with the student's own schedule and teacher logits;
    returns its record (dev metrics of the int8 model). A no-op when done with the same
    inputs."""
    from nasbert.quantize import fake_quantized, quantize

    run = RunDir.of(run)
    config = config or QatConfig()
    task = data.spec.name
    source = run.finetune_dir(task, model_id)
    student = FinetunedRecord.load(source)
    if student is None or not (source / "model").is_dir():
        raise ConfigError(f"holds no fine-tuned model; run `nasbert finetune {run} --task "
                          f"{task} --subnet {model_id}` first", source=str(source))
    folder = qat_dir(run, task, model_id)
    key = digest([student.key, dataclasses.asdict(config)])
    cached = cached_result(folder, key)
    if cached:
        return cached
    schedule = student.schedule(str(source))
    tokenizer = run.tokenizer()
    train, _ = distillation_set(run, data, schedule)
    model = load_classifier(source / "model", data.spec, schedule.seed)
    start = time.time()
    with WorkDir(folder) as work, fake_quantized(model, per_channel=config.per_channel):
        history = train_classifier(
            model, tokenizer, data, schedule, train_set=train, lr=config.lr,
            epochs=config.epochs, batch_size=schedule.batch_size, alpha=schedule.alpha,
            workdir=work, progress=f"{task} {model_id} (int8-aware)" if progress else None)
    with torch.inference_mode():
        metrics, preds = evaluate(quantize(model), tokenizer, data, schedule)
    record = FinetunedRecord(model_id, key, task, dataclasses.asdict(config), metrics, extra={
        "student_key": student.key, "source": str(source), "precision": "int8",
        "seconds": round(time.time() - start, 1), "history": history,
        **provenance()}).to_dict()
    save_result(folder, model, tokenizer, record, preds)
    return record
