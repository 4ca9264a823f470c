"""Downstream fine-tuning with knowledge distillation.

The teacher is fine-tuned on the task first (once, cached in the run folder) and its
logits on the training set are cached once. A student (an extracted subnet, a
baseline, any sequence-classification model) is then trained with

    loss = alpha * task_loss + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

(MSE to the teacher's output for regression), optionally preceded by a stage of
hidden-state distillation on the task data (MSE between the student's and the
teacher's last hidden states): NAS-BERT's second distillation stage. Both stages, and
the teacher's own fine-tuning, run in transformers' ``Trainer`` with a custom loss.

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
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from nasbert.config import check
from nasbert.data import Examples, TaskData, TaskSpec, compute_metrics, digest, load_task
from nasbert.errors import ConfigError
from nasbert.io import atomic_dir, atomic_torch_save, atomic_write_text
from nasbert.provenance import provenance

FINETUNE = "finetune"
TEACHER = "teacher"
SUBNETS = "subnets"


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
    seed: int = 0  # the training and dev subsets, the teacher's and (by default) the students'
    # a student's own seed (its head's initialisation, its data order), to repeat students
    # over seeds against the same teacher; such a student lands in <id>-seed<n>/
    student_seed: int | None = None

    def __post_init__(self) -> None:
        check(self.epochs > 0, "must be positive", field="finetune.epochs")
        check(self.lr > 0, "must be positive", field="finetune.lr")
        check(self.batch_size > 0, "must be positive", field="finetune.batch_size")
        check(0 <= self.alpha <= 1, "must be in [0, 1]", field="finetune.alpha")
        check(self.temperature > 0, "must be positive", field="finetune.temperature")
        check(self.hidden_epochs >= 0, "must not be negative", field="finetune.hidden_epochs")
        check(8 <= self.max_seq_len <= 512, "must be in [8, 512]", field="finetune.max_seq_len")

    def teacher_key(self, data: TaskData) -> str:
        """What the fine-tuned teacher and its cached logits depend on: the data's
        contents (not where they lie, nor how the path was spelt) and the schedule."""
        fields = ("teacher_epochs", "teacher_lr", "teacher_batch_size", "max_seq_len",
                  "max_train_examples", "weight_decay", "warmup_ratio", "seed")
        identity = {k: v for k, v in data.source.items() if k != "path"}
        return digest([identity, {f: getattr(self, f) for f in fields}])


# ----------------------------------------------------------------------------- data


class Encoded(torch.utils.data.Dataset):
    """Tokenised examples; ``teacher`` adds each one's cached teacher logits."""

    def __init__(self, tokenizer, examples: Examples, max_seq_len: int,
                 teacher: Tensor | None = None):
        columns = list(zip(*examples.texts))
        enc = tokenizer(*columns, truncation=True, max_length=max_seq_len)
        self.features = {k: v for k, v in enc.items()
                         if k in ("input_ids", "attention_mask", "token_type_ids")}
        self.labels = examples.labels
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
    """Pad to the longest in the batch."""
    n = max(len(it["input_ids"]) for it in items)
    batch: dict[str, Tensor] = {}
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
        if key in items[0]:
            batch[key] = torch.tensor([it[key] + [fill] * (n - len(it[key])) for it in items])
    labels = [it["labels"] for it in items]
    batch["labels"] = torch.tensor(labels, dtype=torch.float if isinstance(labels[0], float)
                                   else torch.long)
    if "teacher_logits" in items[0]:
        batch["teacher_logits"] = torch.stack([it["teacher_logits"] for it in items])
    return batch


# ----------------------------------------------------------------------------- losses


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float,
                      regression: bool) -> Tensor:
    """``T^2 KL(softmax(teacher/T) || softmax(student/T))``; MSE for regression."""
    if regression:
        return nn.functional.mse_loss(student.view(-1), teacher.view(-1).to(student.dtype))
    t = temperature
    return nn.functional.kl_div(nn.functional.log_softmax(student / t, dim=-1),
                                nn.functional.softmax(teacher.to(student.dtype) / t, dim=-1),
                                reduction="batchmean") * t * t


def hidden_loss(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """MSE between last hidden states, over real (unpadded) tokens."""
    m = mask.unsqueeze(-1).to(student.dtype)
    return ((student - teacher) ** 2 * m).sum() / (m.sum() * student.shape[-1])


def _trainer_class():
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """``Trainer`` with the distillation loss: ``mode='logits'`` mixes the task loss
        with distillation from cached teacher logits (``alpha`` 1: the task loss alone);
        ``mode='hidden'`` matches the teacher's last hidden states."""

        def __init__(self, *args, alpha: float = 1.0, temperature: float = 1.0,
                     regression: bool = False, mode: str = "logits",
                     teacher: nn.Module | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.alpha, self.temperature, self.regression = alpha, temperature, regression
            self.mode, self.teacher = mode, teacher

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            teacher_logits = inputs.pop("teacher_logits", None)
            if self.mode == "hidden":
                labels = inputs.pop("labels")
                enc = {k: v for k, v in inputs.items() if k != "labels"}
                with torch.no_grad():
                    target = self.teacher.base_model(**enc).last_hidden_state
                states = model.base_model(**enc).last_hidden_state
                loss = hidden_loss(states, target, enc["attention_mask"])
                inputs["labels"] = labels
                return (loss, None) if return_outputs else loss
            out = model(**inputs)
            loss = out.loss
            if teacher_logits is not None and self.alpha < 1:
                kd = distillation_loss(out.logits, teacher_logits, self.temperature,
                                       self.regression)
                loss = self.alpha * loss + (1 - self.alpha) * kd
            return (loss, out) if return_outputs else loss

    return DistillTrainer


def _metric_fn(spec: TaskSpec) -> Callable:
    def fn(pred) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        return compute_metrics(spec, _decide(spec, torch.as_tensor(logits)), pred.label_ids)
    return fn


def _decide(spec: TaskSpec, logits: Tensor) -> list:
    return logits.view(-1).tolist() if spec.is_regression else logits.argmax(-1).tolist()


def train(model: nn.Module, tokenizer, data: TaskData, config: FinetuneConfig, *,
          train_set: Encoded, lr: float, epochs: float, batch_size: int, alpha: float = 1.0,
          teacher: nn.Module | None = None, hidden_epochs: float = 0.0,
          on_epoch: Callable[[dict], None] | None = None, workdir: Path,
          progress: bool = True, seed: int | None = None) -> list[dict]:
    """The one training loop: ``Trainer`` on the task's training set (with cached teacher
    logits in ``train_set`` for distillation), evaluated on the first dev split after
    every epoch (``on_epoch`` gets those metrics, e.g. to report to Ray Tune). With
    ``hidden_epochs``, a stage of hidden-state distillation from ``teacher`` comes
    first. ``seed`` (default ``config.seed``) seeds the data order. Returns the log
    history."""
    from transformers import TrainerCallback, TrainingArguments

    from nasbert.teacher import quiet_transformers

    spec = data.spec
    dev_name = spec.dev_splits[0]
    dev = Encoded(tokenizer, data.split(dev_name).subset(config.max_dev_examples, config.seed),
                  config.max_seq_len)
    DistillTrainer = _trainer_class()

    class Report(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if on_epoch is not None and metrics:
                on_epoch({"epoch": state.epoch, **metrics})

    def arguments(stage: str, stage_epochs: float, stage_lr: float) -> TrainingArguments:
        steps = math.ceil(len(train_set) / batch_size)
        return TrainingArguments(
            output_dir=str(workdir / stage), num_train_epochs=stage_epochs,
            learning_rate=stage_lr, per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=max(64, batch_size),
            weight_decay=config.weight_decay, warmup_steps=int(config.warmup_ratio * steps
                                                                * stage_epochs),
            eval_strategy="epoch" if stage == "logits" else "no", save_strategy="no",
            logging_steps=max(1, steps // 4), report_to="none",
            seed=config.seed if seed is None else seed,
            disable_tqdm=not progress, remove_unused_columns=False,
            dataloader_pin_memory=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(),
            label_names=["labels"])

    history: list[dict] = []
    with quiet_transformers():
        common = {"model": model, "train_dataset": train_set, "data_collator": _collator(tokenizer),
                  "regression": spec.is_regression}
        if hidden_epochs > 0:
            if teacher is None:
                raise ValueError("hidden-state distillation needs the teacher model")
            args = arguments("hidden", hidden_epochs, lr)
            t = DistillTrainer(args=args, mode="hidden", teacher=teacher.eval().to(args.device),
                               **common)
            _quiet(t, progress)
            t.train()
            history += [{"stage": "hidden", **h} for h in t.state.log_history]
        t = DistillTrainer(args=arguments("logits", epochs, lr), eval_dataset=dev, alpha=alpha,
                           temperature=config.temperature, compute_metrics=_metric_fn(spec),
                           callbacks=[Report()], **common)
        _quiet(t, progress)
        t.train()
        history += [{"stage": "logits", **h} for h in t.state.log_history]
    return history


def _quiet(trainer, progress: bool) -> None:
    """Without progress, no line per log either (the history is returned)."""
    from transformers.trainer_callback import PrinterCallback

    if not progress:
        trainer.remove_callback(PrinterCallback)


def _collator(tokenizer) -> Callable:
    pad_id = tokenizer.pad_token_id or 0
    return lambda items: collate(items, pad_id)


@torch.no_grad()
def predict(model: nn.Module, dataset: Encoded, *, batch_size: int = 128) -> Tensor:
    """Logits for every example, in order."""
    model.eval()
    out = []
    for i in range(0, len(dataset), batch_size):
        batch = collate([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
        batch.pop("labels")
        batch.pop("teacher_logits", None)
        out.append(model(**batch).logits.float())
    return torch.cat(out)


def evaluate(model: nn.Module, tokenizer, data: TaskData, config: FinetuneConfig
             ) -> tuple[dict[str, dict[str, float]], dict[str, list]]:
    """Metrics and predictions on every dev split."""
    metrics, preds = {}, {}
    for split in data.spec.dev_splits:
        examples = data.split(split).subset(config.max_dev_examples, config.seed)
        logits = predict(model, Encoded(tokenizer, examples, config.max_seq_len))
        preds[split] = _decide(data.spec, logits)
        metrics[split] = compute_metrics(data.spec, preds[split], examples.labels)
    return metrics, preds


# ----------------------------------------------------------------------------- a run's models


def load_tokenizer(run_dir: Path):
    from transformers import AutoTokenizer

    from nasbert.teacher import run_teacher

    return AutoTokenizer.from_pretrained(run_teacher(run_dir))


def _load_classifier(path: str | Path, spec: TaskSpec, seed: int):
    """Any encoder folder (a NAS-BERT subnet, a BERT) with a fresh task head."""
    from transformers import AutoModelForSequenceClassification

    import nasbert  # noqa: F401 - registers the nasbert model type
    from nasbert.teacher import quiet_transformers

    torch.manual_seed(seed)  # the new head's initialisation
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


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.base_model.parameters())


def _save(folder: Path, model, tokenizer, metrics: dict, preds: dict[str, list],
          extra: dict | None = None) -> None:
    """model/ (unless ``model`` is None), metrics.json and predictions, all at once (a
    folder swap)."""
    from nasbert.teacher import quiet_transformers

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


def finetune_teacher(run_dir: str | Path, data: TaskData, config: FinetuneConfig, *,
                     progress: bool = True) -> Path:
    """Fine-tune the run's teacher on the task and cache its training-set logits; a no-op
    when ``finetune/<task>/teacher`` already holds them for the same data and schedule."""
    from nasbert.teacher import run_teacher
    from nasbert.train import load_run_recipe

    run_dir = Path(run_dir)
    folder = run_dir / FINETUNE / data.spec.name / TEACHER
    key = config.teacher_key(data)
    if _cached(folder, key):
        return folder
    name = run_teacher(run_dir)
    tokenizer = load_tokenizer(run_dir)
    train_examples = data.split("train").subset(config.max_train_examples, config.seed)
    train_set = Encoded(tokenizer, train_examples, config.max_seq_len)
    model = _load_classifier(name, data.spec, config.seed)
    start = time.time()
    with _workdir(folder) as work:
        history = train(model, tokenizer, data, config, lr=config.teacher_lr,
                        epochs=config.teacher_epochs, batch_size=config.teacher_batch_size,
                        train_set=train_set, workdir=work,
                        progress=progress)
    metrics, preds = evaluate(model, tokenizer, data, config)
    logits = predict(model, Encoded(tokenizer, train_examples, config.max_seq_len))
    record = {"id": TEACHER, "key": key, "task": data.spec.name, "data": data.source,
              "model": load_run_recipe(run_dir).teacher, "params": _params(model),
              "train_examples": len(train_set), "config": dataclasses.asdict(config),
              "seconds": round(time.time() - start, 1), **metrics, "history": history,
              **provenance()}
    _save(folder, model, tokenizer, record, preds,
          extra={"train_logits.pt": {"key": key, "logits": logits}})
    return folder


def _cached(folder: Path, key: str) -> dict | None:
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return record if record.get("key") == key else None


class _workdir:
    """Trainer's scratch folder beside the result, removed afterwards."""

    def __init__(self, folder: Path):
        self.path = folder.parent / f".{folder.name}.work"

    def __enter__(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path

    def __exit__(self, *exc) -> None:
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)


def available_models(run_dir: str | Path) -> list[str]:
    """The model ids under ``subnets/`` (searched subnets and baselines)."""
    folder = Path(run_dir) / SUBNETS
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / "config.json").is_file())


def _model_ids(run_dir: Path, models: Sequence[str] | None) -> list[str]:
    """``models`` (default: every model under ``subnets/``), each checked to be a model
    folder before any training starts."""
    have = available_models(run_dir)
    ids = list(models) if models else have
    if not ids:
        raise ConfigError("holds no subnets; run `nasbert search RUN_DIR --latency-ms ...` "
                          "first, or give --subnet", source=str(run_dir / SUBNETS))
    for model_id in ids:
        if not (run_dir / SUBNETS / model_id / "config.json").is_file():
            raise ConfigError(f"is not a model folder (subnets here: "
                              f"{', '.join(have) or 'none; run `nasbert search` first'})",
                              source=str(run_dir / SUBNETS / model_id))
    return ids


def student_key(config: FinetuneConfig, teacher_key: str, model_id: str) -> str:
    fields = dataclasses.asdict(config)
    if fields["student_seed"] is None:  # keys made before the field existed stay valid
        del fields["student_seed"]
    return digest([teacher_key, model_id, fields])


def finetune_student(run_dir: str | Path, model_id: str, data: TaskData,
                     config: FinetuneConfig, *, out_dir: Path | None = None,
                     on_epoch: Callable[[dict], None] | None = None,
                     save_model: bool = True, progress: bool = True) -> dict:
    """Fine-tune and distil ``subnets/<model_id>`` on the task (the fine-tuned teacher
    must exist); writes ``finetune/<task>/<model_id>/`` and returns its record. A no-op
    returning the stored record when it was done with the same configuration."""
    run_dir = Path(run_dir)
    source = run_dir / SUBNETS / _model_ids(run_dir, [model_id])[0]
    teacher_dir = run_dir / FINETUNE / data.spec.name / TEACHER
    tkey = config.teacher_key(data)
    if not _cached(teacher_dir, tkey):
        raise ConfigError("holds no teacher fine-tuned with this data and schedule; run "
                          "finetune_teacher first", source=str(teacher_dir))
    seed = config.seed if config.student_seed is None else config.student_seed
    folder = out_dir or run_dir / FINETUNE / data.spec.name / (
        model_id if config.student_seed is None else f"{model_id}-seed{seed}")
    key = student_key(config, tkey, model_id)
    cached = _cached(folder, key)
    if cached:
        return cached
    stored = torch.load(teacher_dir / "train_logits.pt", weights_only=True)
    tokenizer = load_tokenizer(run_dir)
    train_examples = data.split("train").subset(config.max_train_examples, config.seed)
    train_set = Encoded(tokenizer, train_examples, config.max_seq_len, teacher=stored["logits"])
    model = _load_classifier(source, data.spec, seed)
    teacher = (_load_classifier(teacher_dir / "model", data.spec, seed)
               if config.hidden_epochs > 0 else None)
    start = time.time()
    with _workdir(folder) as work:
        history = train(model, tokenizer, data, config, lr=config.lr, epochs=config.epochs,
                        batch_size=config.batch_size, alpha=config.alpha, train_set=train_set,
                        teacher=teacher,
                        hidden_epochs=config.hidden_epochs, on_epoch=on_epoch, workdir=work,
                        progress=progress, seed=seed)
    metrics, preds = evaluate(model, tokenizer, data, config)
    card = {}
    if (source / "nasbert.json").is_file():
        card = json.loads((source / "nasbert.json").read_text())
    record = {"id": model_id, "key": key, "teacher_key": tkey, "task": data.spec.name,
              "data": data.source, "source": str(source), "arch": card.get("arch"),
              "params": _params(model), "train_examples": len(train_set),
              "config": dataclasses.asdict(config), "seconds": round(time.time() - start, 1),
              **metrics, "history": history, **provenance()}
    _save(folder, model if save_model else None, tokenizer, record, preds)
    return record


def finetune(run_dir: str | Path, task: str, *, data_dir: str | Path | None = None,
             models: Sequence[str] | None = None, config: FinetuneConfig | None = None,
             progress: bool = True, trainer_progress: bool | None = None) -> dict[str, dict]:
    """Fine-tune the teacher (cached) and then each of ``models`` (default: every model
    under ``subnets/``) with distillation; returns each one's record, the teacher's
    under ``"teacher"``. Re-running skips what is done. ``progress``: a line per model;
    ``trainer_progress`` (default: the same): the Trainer's bars and logs."""
    run_dir = Path(run_dir)
    config = config or FinetuneConfig()
    data = load_task(task, data_dir, seed=config.seed)
    ids = _model_ids(run_dir, models)
    bars = progress if trainer_progress is None else trainer_progress
    if progress and not _cached(run_dir / FINETUNE / data.spec.name / TEACHER,
                                config.teacher_key(data)):
        n = len(data.split("train").subset(config.max_train_examples))
        print(f"fine-tuning the teacher on {data.spec.name} ({n} examples, "
              f"{config.teacher_epochs:g} epochs)", flush=True)
    teacher_dir = finetune_teacher(run_dir, data, config, progress=bars)
    results = {TEACHER: json.loads((teacher_dir / "metrics.json").read_text())}
    if progress:
        main = data.spec.dev_splits[0]
        print(f"{TEACHER:<24} {data.spec.metric} {results[TEACHER][main][data.spec.metric]:.4f}",
              flush=True)
    for model_id in ids:
        record = finetune_student(run_dir, model_id, data, config, progress=bars)
        results[model_id] = record
        if progress:
            main = data.spec.dev_splits[0]
            print(f"{model_id:<24} {data.spec.metric} {record[main][data.spec.metric]:.4f}  "
                  f"({record['seconds']:.0f} s)", flush=True)
    logging.getLogger(__name__).info("fine-tuned %d models on %s", len(ids), task)
    return results


def set_threads(n: int) -> None:
    """Intra-op threads for this process (Ray workers: their CPU share)."""
    if n > 0:
        torch.set_num_threads(n)
        os.environ["OMP_NUM_THREADS"] = str(n)


# ----------------------------------------------------------------------------- sweeps


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A hyper-parameter sweep on Ray Tune: ``OptunaSearch`` (TPE) proposes learning
    rate, epochs, batch size, alpha and temperature; ASHA stops poor trials after
    ``grace_period`` epochs. Trials run in parallel, ``cpus_per_trial`` each."""

    trials: int = 20
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
        check(self.trials > 0, "must be positive", field="sweep.trials")
        check(0 < self.lr[0] < self.lr[1], "must be (low, high), 0 < low < high",
              field="sweep.lr")
        check(all(e > 0 for e in self.epochs) and bool(self.epochs),
              "must list positive epoch counts", field="sweep.epochs")
        check(self.cpus_per_trial > 0, "must be positive", field="sweep.cpus_per_trial")


def _sweep_trial(params: dict, *, run_dir: str, model_id: str, data: TaskData,
                 base: FinetuneConfig, threads: int) -> None:
    from ray import tune

    set_threads(threads)
    config = dataclasses.replace(base, **params)
    metric = f"eval_{data.spec.metric}"
    trial_dir = Path(tune.get_context().get_trial_dir())

    def report(metrics: dict) -> None:
        tune.report({"score": metrics[metric], "epoch": metrics["epoch"],
                     **{k[5:]: v for k, v in metrics.items() if k.startswith("eval_")}})

    finetune_student(run_dir, model_id, data, config, out_dir=trial_dir / "result",
                     on_epoch=report, progress=False, save_model=False)


def sweep(run_dir: str | Path, task: str, *, data_dir: str | Path | None = None,
          models: Sequence[str] | None = None, base: FinetuneConfig | None = None,
          config: SweepConfig | None = None, progress: bool = True) -> dict[str, dict]:
    """Sweep each model's fine-tuning hyper-parameters on Ray Tune; writes every trial
    and the best to ``finetune/<task>/<id>/sweep.json`` and returns those records."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from nasbert.distributed import ray_session

    run_dir = Path(run_dir).resolve()
    base = base or FinetuneConfig()
    config = config or SweepConfig()
    data = load_task(task, data_dir, seed=base.seed)
    ids = _model_ids(run_dir, models)
    finetune_teacher(run_dir, data, base, progress=progress)  # once, before the trials
    space = {"lr": tune.loguniform(*config.lr), "epochs": tune.choice(list(config.epochs)),
             "batch_size": tune.choice(list(config.batch_size)),
             "alpha": tune.uniform(*config.alpha),
             "temperature": tune.uniform(*config.temperature)}
    out: dict[str, dict] = {}
    with ray_session(run_dir, num_cpus=config.num_cpus, address=config.address,
                     log_to_driver=progress):
        for model_id in ids:
            folder = run_dir / FINETUNE / data.spec.name / model_id
            trainable = tune.with_resources(
                tune.with_parameters(_sweep_trial, run_dir=str(run_dir), model_id=model_id,
                                     data=data, base=base, threads=config.cpus_per_trial),
                {"cpu": config.cpus_per_trial})
            tuner = tune.Tuner(
                trainable, param_space=space,
                tune_config=tune.TuneConfig(
                    search_alg=OptunaSearch(metric="score", mode="max", seed=config.seed),
                    scheduler=ASHAScheduler(metric="score", mode="max",
                                            time_attr="training_iteration",
                                            max_t=max(config.epochs),
                                            grace_period=config.grace_period,
                                            reduction_factor=config.reduction_factor),
                    num_samples=config.trials,
                    max_concurrent_trials=config.max_concurrent or None),
                run_config=tune.RunConfig(name=f"sweep-{data.spec.name}-{model_id}",
                                          storage_path=str(folder / "sweep"),
                                          verbose=1 if progress else 0))
            grid = tuner.fit()
            out[model_id] = _sweep_record(grid, model_id, data, base, config)
            atomic_write_text(folder / "sweep.json", json.dumps(out[model_id], indent=1))
            if progress:
                best = out[model_id]["best"]
                print(f"{model_id:<24} best {data.spec.metric} {best['score']:.4f} with "
                      + ", ".join(f"{k} {v:.3g}" for k, v in best["config"].items()),
                      flush=True)
    return out


def _sweep_record(grid, model_id: str, data: TaskData, base: FinetuneConfig,
                  config: SweepConfig) -> dict:
    trials = []
    for r in grid:
        df = r.metrics_dataframe
        scores = [] if df is None or "score" not in df else [float(v) for v in df["score"]]
        params = {k: (float(v) if isinstance(v, float) else v) for k, v in r.config.items()}
        trials.append({"trial": r.path.rsplit("/", 1)[-1], "config": params,
                       "epochs_run": len(scores), "scores": scores,
                       "best": max(scores) if scores else None,
                       "stopped_early": len(scores) < params["epochs"],
                       "error": str(r.error).splitlines()[0][:300] if r.error else None})
    done = [t for t in trials if t["best"] is not None]
    if not done:
        raise ConfigError(f"no trial finished ({trials[0]['error'] if trials else 'none ran'})",
                          source=f"sweep of {model_id}")
    best = max(done, key=lambda t: t["best"])
    return {"model": model_id, "task": data.spec.name, "metric": data.spec.metric,
            "best": {"score": best["best"], "config": best["config"], "trial": best["trial"]},
            "trials": trials, "base": dataclasses.asdict(base),
            "sweep": dataclasses.asdict(config), **provenance()}
