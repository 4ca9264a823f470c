"""Sentence-level tasks (a label per sentence or sentence pair: classification and
regression; GLUE, tweets): the family's data (:mod:`nasbert.data.tasks`), its encoding
as cross-encoders (the pair in one sequence) or bi-encoders (each sentence alone,
:mod:`~nasbert.families.pairs`), its distillation loss and metrics.

    loss = alpha * task_loss + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

(MSE to the teacher's output for regression).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from nasbert.data.metrics import compute_metrics
from nasbert.data.tasks import Examples, TaskData, TaskSpec, load_task
from nasbert.errors import ConfigError
from nasbert.families.base import Family
from nasbert.families.pairs import SECOND, BiEncoder, encode_apart, is_bi_encoder
from nasbert.hf.quiet import quiet_transformers
from nasbert.pooling import Pooling

if TYPE_CHECKING:
    from nasbert.finetune.config import FinetuneConfig


class Encoded(torch.utils.data.Dataset):
    """Tokenised examples; ``teacher`` adds each one's cached teacher logits. ``apart``:
    each sentence of a pair alone, for a bi-encoder (:mod:`~nasbert.finetune.pairs`),
    instead of the pair in one sequence."""

    def __init__(self, tokenizer, examples: Examples, max_seq_len: int,
                 teacher: Tensor | None = None, *, apart: bool = False, scale: float = 1.0):
        if apart:
            self.features = encode_apart(tokenizer, examples.texts, max_seq_len)
        else:
            enc = tokenizer(*zip(*examples.texts), truncation=True, max_length=max_seq_len)
            self.features = {k: v for k, v in enc.items()
                             if k in ("input_ids", "attention_mask", "token_type_ids")}
        # a regression's labels brought to the scale its model predicts in (config.label_scale)
        self.labels = ([y / scale for y in examples.labels] if scale != 1.0
                       else examples.labels)
        self.teacher = teacher
        if teacher is not None and len(teacher) != len(self.labels):
            raise ValueError(f"{len(teacher)} teacher outputs for {len(self.labels)} examples")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.features.items()}
        item["labels"] = self.labels[i]
        if self.teacher is not None:
            item["teacher_logits"] = self.teacher[i]
        return item


def collate(items: list[dict], pad_id: int = 0) -> dict[str, Tensor]:
    """Pad to the longest in the batch (each sentence of a bi-encoder's pairs to the
    longest on its side)."""
    batch: dict[str, Tensor] = {}
    for side in ("", SECOND):
        if f"input_ids{side}" not in items[0]:
            continue
        n = max(len(it[f"input_ids{side}"]) for it in items)
        for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
            key += side
            if key in items[0]:
                batch[key] = torch.tensor([it[key] + [fill] * (n - len(it[key]))
                                           for it in items])
    labels = [it["labels"] for it in items]
    batch["labels"] = torch.tensor(labels, dtype=torch.float if isinstance(labels[0], float)
                                   else torch.long)
    if "teacher_logits" in items[0]:
        batch["teacher_logits"] = torch.stack([it["teacher_logits"] for it in items])
    return batch


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float,
                      regression: bool, model: nn.Module | None = None) -> Tensor:
    """``T^2 KL(softmax(teacher/T) || softmax(student/T))``; MSE for regression (on the
    scale its task loss takes, for a bi-encoder ``model``)."""
    if regression:
        if isinstance(model, BiEncoder):
            return model.regression_loss(student, teacher)
        return nn.functional.mse_loss(student.view(-1), teacher.view(-1).to(student.dtype))
    t = temperature
    return nn.functional.kl_div(nn.functional.log_softmax(student / t, dim=-1),
                                nn.functional.softmax(teacher.to(student.dtype) / t, dim=-1),
                                reduction="batchmean") * t * t


def _metric_fn(spec: TaskSpec) -> Callable:
    def fn(pred) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        return compute_metrics(spec, decide(spec, torch.as_tensor(logits)), pred.label_ids)
    return fn


def decide(spec: TaskSpec, logits: Tensor) -> list:
    return logits.view(-1).tolist() if spec.is_regression else logits.argmax(-1).tolist()


@torch.no_grad()
def predict(model: nn.Module, dataset: torch.utils.data.Dataset, *, batch_size: int = 128,
            progress: str | None = None) -> Tensor:
    """Logits for every example, in order; computed in batches of similar lengths (less
    padding), with a progress bar named ``progress``."""
    model.eval()
    device = next(model.parameters()).device  # where fine-tuning left it (a GPU, say)
    order = sorted(range(len(dataset)), key=lambda i: len(dataset[i]["input_ids"]))
    out = torch.empty(0)
    for start in tqdm(range(0, len(order), batch_size), desc=progress, unit="batch",
                      disable=not progress, dynamic_ncols=True):
        idx = order[start:start + batch_size]
        batch = collate([dataset[j] for j in idx])
        batch.pop("labels")
        batch.pop("teacher_logits", None)
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
        if not out.numel():
            out = torch.empty(len(dataset), logits.shape[-1])
        out[idx] = logits
    return out


def evaluate(model: nn.Module, tokenizer, data: TaskData, config: FinetuneConfig, *,
             splits: Sequence[str] | None = None
             ) -> tuple[dict[str, dict[str, float]], dict[str, list]]:
    """Metrics and predictions on each dev split (default: every one)."""
    metrics, preds = {}, {}
    for split in splits or data.spec.dev_splits:
        examples = data.split(split).subset(config.max_dev_examples, config.seed)
        metrics[split], preds[split] = scored(model, tokenizer, data, config, examples)
    return metrics, preds


def scored(model: nn.Module, tokenizer, data: TaskData, config: FinetuneConfig,
           examples: Examples) -> tuple[dict[str, float], list]:
    """Metrics and predictions of ``model`` on ``examples``."""
    logits = predict(model, Encoded(tokenizer, examples, config.max_seq_len,
                                    apart=config.formulation == "bi"))
    preds = decide(data.spec, logits * getattr(model.config, "label_scale", 1.0)
                   if data.spec.is_regression else logits)
    return compute_metrics(data.spec, preds, examples.labels), preds


def load_classifier(path: str | Path, spec: TaskSpec, seed: int, *,
                    formulation: str = "cross", pooling: Pooling | None = None,
                    scale: float = 1.0):
    """Any encoder folder (a NAS-BERT subnet, a BERT) with a fresh task head; with
    ``formulation="bi"``, a :class:`~nasbert.finetune.pairs.BiEncoder` (a fine-tuned one
    as it was saved; else pooling by ``pooling``, a regression's cosine scaled to
    ``scale``)."""
    from transformers import AutoModelForSequenceClassification

    import nasbert  # noqa: F401 - registers the nasbert model type

    torch.manual_seed(seed)  # the new head's initialisation
    if formulation == "bi":
        if is_bi_encoder(path):
            return BiEncoder.from_pretrained(path)
        return BiEncoder.from_encoder(path, num_labels=spec.num_labels, scale=scale,
                                      pooling=pooling or Pooling.of(path))
    try:
        with quiet_transformers():  # "newly initialised head" is what we want
            model = AutoModelForSequenceClassification.from_pretrained(
                str(path), num_labels=spec.num_labels,
                problem_type="regression" if spec.is_regression
                else "single_label_classification")
    except (OSError, ValueError) as e:
        raise ConfigError(f"could not be loaded ({str(e).splitlines()[0][:160]}); give a model "
                          "folder (config.json + weights)", source=str(path)) from None
    if not spec.is_regression:
        model.config.id2label = dict(enumerate(spec.classes))
        model.config.label2id = {c: i for i, c in enumerate(spec.classes)}
    return model


def check_formulation(data: TaskData, config: FinetuneConfig) -> None:
    if config.formulation == "bi" and len(data.spec.columns) != 2:
        raise ConfigError("reads one sentence; the bi-encoder formulation is for sentence-pair "
                          "tasks (mrpc, stsb, qqp, mnli, qnli, rte, wnli): leave --formulation "
                          "out", source=f"task {data.spec.name}")


def unit_scale(data: TaskData, config: FinetuneConfig, examples: Examples) -> float:
    """What a cross-encoder's regression labels are divided by for training
    (``config.regression_labels``: the largest, so that they lie in [0, 1]); 1 for
    classes, raw labels and bi-encoders (which scale their own)."""
    unit = (data.spec.is_regression and config.formulation == "cross"
            and config.regression_labels == "unit")
    return label_scale(examples) if unit else 1.0


def label_scale(examples: Examples) -> float:
    """A regression's largest absolute label (STS-B: 5), what a bi-encoder's cosine is
    scaled to; 1 for classes."""
    return max((abs(float(y)) for y in examples.labels), default=1.0) or 1.0


class SentenceFamily(Family):
    """A label per sentence or pair; the Trainer's own evaluation computes its metrics."""

    name = "sentence"
    trainer_metrics = True

    def load(self, task, data_dir=None, *, seed=0, fold=None, folds=5) -> TaskData:
        return load_task(task, data_dir, seed=seed, fold=fold, folds=folds)

    def check(self, data: TaskData, config: FinetuneConfig) -> None:
        check_formulation(data, config)

    def model(self, path, data: TaskData, config: FinetuneConfig, seed: int, *,
              pooling: Pooling | None = None, examples: Examples | None = None) -> nn.Module:
        scale = label_scale(examples) if examples is not None else 1.0
        model = load_classifier(path, data.spec, seed, formulation=config.formulation,
                                pooling=pooling, scale=scale)
        if examples is not None:  # what its predictions are multiplied by
            model.config.label_scale = unit_scale(data, config, examples)
        return model

    def dataset(self, tokenizer, data: TaskData, config: FinetuneConfig, examples: Examples,
                *, train: bool = True, teacher: Tensor | None = None) -> Encoded:
        return Encoded(tokenizer, examples, config.max_seq_len, teacher=teacher,
                       apart=config.formulation == "bi",
                       scale=unit_scale(data, config, examples) if train else 1.0)

    def collate(self, items: list[dict], pad_id: int = 0) -> dict[str, Tensor]:
        return collate(items, pad_id)

    def predict(self, model: nn.Module, dataset, *, progress: str | None = None) -> Tensor:
        return predict(model, dataset, progress=progress)

    def distillation_loss(self, out, batch: dict[str, Tensor], temperature: float,
                          model: nn.Module) -> Tensor:
        # one output is a regression's (every classification has two classes or more)
        return distillation_loss(out.logits, batch["teacher_logits"], temperature,
                                 out.logits.shape[-1] == 1, model)

    def targets(self, out) -> Tensor:
        return out.logits.detach()

    def score(self, model, tokenizer, data: TaskData, config: FinetuneConfig,
              examples: Examples) -> dict[str, float]:
        return scored(model, tokenizer, data, config, examples)[0]

    def evaluate(self, model, tokenizer, data: TaskData, config: FinetuneConfig, *,
                 splits: Sequence[str] | None = None):
        return evaluate(model, tokenizer, data, config, splits=splits)

    def trainer_eval(self, tokenizer, data: TaskData, config: FinetuneConfig):
        dev = Encoded(tokenizer, data.split(data.spec.dev_splits[0]).subset(
            config.max_dev_examples, config.seed), config.max_seq_len,
            apart=config.formulation == "bi")
        return dev, _metric_fn(data.spec)


FAMILY = SentenceFamily()
