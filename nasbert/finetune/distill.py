"""The one fine-tuning loop: transformers' ``Trainer`` with distillation, for every task
family (:mod:`nasbert.families`).

    loss = alpha * task_loss + (1 - alpha) * distillation_loss(student, teacher)

from cached teacher outputs (the family's loss: KL of softened class distributions, MSE
for regression, KL over start and end positions for question answering, per token for
named entities), optionally preceded by a stage of hidden-state distillation on the task
data (MSE between the student's and the teacher's last hidden states): NAS-BERT's second
distillation stage. Both stages, and the teacher's own fine-tuning, run here
(:func:`train_classifier`).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from nasbert.families import IGNORE, Family, family_of
from nasbert.families.pairs import BiEncoder, sides
from nasbert.finetune.config import FinetuneConfig
from nasbert.hf.quiet import quiet_transformers
from nasbert.losses import masked_mse

# how often a fine-tuning saves the checkpoint a killed run resumes from: a kill loses at
# most this much training
CHECKPOINT_SECONDS = 300.0


def _trainer_class():
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """``Trainer`` with the distillation loss: ``mode='logits'`` mixes the task loss
        with the ``family``'s distillation loss from cached teacher outputs (``alpha`` 1:
        the task loss alone); ``mode='hidden'`` matches the teacher's last hidden states.
        A family whose metrics the Trainer cannot compute is evaluated through its own
        ``evaluate`` on ``data``'s first dev split."""

        def __init__(self, *args, family: Family, data=None, config=None, tok=None,
                     alpha: float = 1.0, temperature: float = 1.0, regression: bool = False,
                     mode: str = "logits", teacher: nn.Module | None = None,
                     length_configs: Callable[[], list] | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.family, self.data, self.config, self.tok = family, data, config, tok
            self.alpha, self.temperature, self.regression = alpha, temperature, regression
            self.mode, self.teacher, self.length_configs = mode, teacher, length_configs

        def _get_grad_norm(self, model, grad_norm=None):
            # the Trainer logs the norm through clip_grad_norm_, which takes no sparse
            # gradient (an n-gram student's table): computed here for those
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if grad_norm is None and any(g.is_sparse for g in grads):
                return float(sum((g.coalesce().values() if g.is_sparse else g).float().pow(2).sum()
                                 for g in grads) ** 0.5)
            return super()._get_grad_norm(model, grad_norm)

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            if self.family.trainer_metrics:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            split = self.data.spec.dev_splits[0]
            metrics, _ = self.family.evaluate(self.model, self.tok, self.data, self.config,
                                              splits=[split])
            out = {f"{metric_key_prefix}_{k}": v for k, v in metrics[split].items()}
            self.log(out)
            self.control = self.callback_handler.on_evaluate(self.args, self.state,
                                                             self.control, out)
            return out

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            teacher_logits = inputs.pop("teacher_logits", None)
            enc = {k: v for k, v in inputs.items() if k not in self.family.label_names}
            if self.mode == "hidden" and isinstance(model, BiEncoder):
                # the teacher's sentence vectors, each sentence alone: what the head reads
                loss = 0.0
                for side in sides(inputs):
                    with torch.no_grad():
                        target = self.teacher.embed(**side)
                    loss = loss + nn.functional.mse_loss(model.embed(**side), target)
                return (loss, None) if return_outputs else loss
            if self.mode == "hidden":
                with torch.no_grad():
                    target = self.teacher.base_model(**enc).last_hidden_state
                states = model.base_model(**enc).last_hidden_state
                loss = masked_mse(states, target, enc["attention_mask"])
                return (loss, None) if return_outputs else loss
            labels = inputs.get("labels")
            # distillation alone when the task loss weighs nothing or the batch holds only
            # teacher-labelled transfer examples (cross-entropy over no label is NaN)
            kd_only = teacher_logits is not None and (self.alpha == 0 or (
                not self.regression and labels is not None
                and bool((labels == IGNORE).all())))
            out = model(**(enc if kd_only else inputs))
            if teacher_logits is not None and (kd_only or self.alpha < 1):
                kd = self.family.distillation_loss(
                    out, {**inputs, "teacher_logits": teacher_logits}, self.temperature, model)
                loss = kd if kd_only else self.alpha * out.loss + (1 - self.alpha) * kd
            else:
                loss = out.loss
            if self.length_configs is not None and model.training:
                # LengthDrop's sandwich: the shorter configurations learn from the full one
                target = {**inputs, "teacher_logits": self.family.targets(out)}
                for config in self.length_configs():
                    short = model(**enc, length_config=config)
                    loss = loss + self.family.distillation_loss(short, target,
                                                                self.temperature, model)
            return (loss, out) if return_outputs else loss

    return DistillTrainer


def train_classifier(model: nn.Module, tokenizer, data, config: FinetuneConfig, *,
                     train_set: torch.utils.data.Dataset, lr: float, epochs: float, batch_size: int,
                     alpha: float = 1.0, teacher: nn.Module | None = None,
                     hidden_epochs: float = 0.0, on_epoch: Callable[[dict], None] | None = None,
                     workdir: Path, progress: str | None = None, seed: int | None = None,
                     length_configs: Callable[[], list] | None = None,
                     eval_set: torch.utils.data.Dataset | None = None,
                     optimizer: Callable[[float], torch.optim.Optimizer] | None = None,
                     max_grad_norm: float = 1.0,
                     checkpoint_seconds: float | None = None,
                     family: Family | None = None) -> list[dict]:
    """The one fine-tuning loop: ``Trainer`` on the task's training set (with cached
    teacher outputs in ``train_set`` for distillation; ``family``, default the task's,
    says how batches are made and the losses taken), evaluated on the first dev split
    after every epoch (``on_epoch`` gets those metrics, e.g. to report to Ray Tune). With
    ``hidden_epochs``, a stage of hidden-state distillation from ``teacher`` comes
    first. ``seed`` (default ``config.seed``) seeds the data order. ``progress``: the
    name of the progress bar (one per model and stage, with its loss), or None for
    none. ``length_configs``: LengthDrop (:mod:`nasbert.compress.length`), a function
    giving, at each step, the length configurations that learn from the full-length
    model beside it. ``eval_set``: what is evaluated after each epoch instead of the dev
    split. ``optimizer``: makes each stage's optimiser from its learning rate (default:
    the Trainer's AdamW), e.g. one for sparse gradients, which take no clipping
    (``max_grad_norm`` 0). Returns the log history.

    Resumable with ``checkpoint_seconds`` (None: no checkpoints): each stage saves a
    Trainer checkpoint (weights, optimiser, scheduler, random states) under ``workdir``
    that often and at its end, the last one kept; a stage whose folder holds one resumes
    from it (the caller keeps ``workdir`` only while the inputs are the same), and the
    history records the step it resumed from."""
    from transformers import TrainerCallback, TrainingArguments

    spec = data.spec
    family = family or family_of(spec.name)
    if family.trainer_metrics:
        dev, metric_fn = family.trainer_eval(tokenizer, data, config)
    else:  # evaluated through the family (DistillTrainer.evaluate); the dev set is unread
        dev, metric_fn = train_set, None
    dev = eval_set if eval_set is not None else dev
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
            disable_tqdm=True, remove_unused_columns=False,
            train_sampling_strategy="group_by_length" if config.group_by_length else "random",
            dataloader_pin_memory=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(),
            label_names=list(family.label_names), max_grad_norm=max_grad_norm, save_total_limit=1)

    class Checkpoints(TrainerCallback):
        """A checkpoint every ``checkpoint_seconds`` of training and at the last step
        (by time, not steps: the same cadence for a tiny and a large model), with the
        seconds trained so far (``before``: those of the runs it resumes)."""

        def __init__(self, before: float):
            self.before = before

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = self.start = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            if (time.monotonic() - self.last >= checkpoint_seconds
                    or state.global_step >= state.max_steps):
                control.should_save = True
                self.last = time.monotonic()

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / SECONDS_FILE).write_text(json.dumps(
                    {"seconds": self.before + time.monotonic() - self.start}))

    def train(trainer, stage: str) -> None:
        last = _last_complete_checkpoint(Path(trainer.args.output_dir))
        before = _seconds_before(last)
        if checkpoint_seconds is not None:
            trainer.add_callback(Checkpoints(before))
        trainer.train(resume_from_checkpoint=last)
        history.extend({"stage": stage, **h} for h in trainer.state.log_history)
        if last is not None:
            history.append({"stage": stage, "resumed_from": int(last.rsplit("-", 1)[1]),
                            "seconds_before": before})

    history: list[dict] = []
    with quiet_transformers():
        pad_id = tokenizer.pad_token_id or 0
        common = {"model": model, "train_dataset": train_set, "family": family,
                  "data_collator": lambda items: family.collate(items, pad_id),
                  "regression": spec.is_regression}
        if hidden_epochs > 0:
            if teacher is None:
                raise ValueError("hidden-state distillation needs the teacher model")
            args = arguments("hidden", hidden_epochs, lr)
            t = DistillTrainer(args=args, mode="hidden", teacher=teacher.eval().to(args.device),
                               optimizers=(optimizer and optimizer(lr), None), **common)
            _show(t, progress and f"{progress} (hidden states)")
            train(t, "hidden")
        t = DistillTrainer(args=arguments("logits", epochs, lr), eval_dataset=dev, alpha=alpha,
                           temperature=config.temperature, compute_metrics=metric_fn,
                           data=data, config=config, tok=tokenizer,
                           callbacks=[Report()], length_configs=length_configs,
                           optimizers=(optimizer and optimizer(lr), None), **common)
        _show(t, progress)
        train(t, "logits")
    return history


SECONDS_FILE = "nasbert_seconds.json"  # beside a Trainer checkpoint: seconds trained


def seconds_before(history: list[dict]) -> float:
    """The seconds a resumed training spent before the process that finished it (the
    runs it resumed), from :func:`train_classifier`'s history: add them to the
    finishing process's own time for the whole training time."""
    return sum(h.get("seconds_before", 0.0) for h in history)


def _seconds_before(checkpoint: str | None) -> float:
    try:
        return float(json.loads((Path(checkpoint) / SECONDS_FILE).read_text())["seconds"])
    except (TypeError, OSError, ValueError, KeyError):  # none, or saved before it was kept
        return 0.0


def _last_complete_checkpoint(folder: Path) -> str | None:
    """The newest Trainer checkpoint under ``folder`` that was written whole, or None.
    Trainer writes ``trainer_state.json`` last, so a folder without a readable one was
    cut off mid-save (a kill): it is removed, and the one before it is resumed from
    (``transformers.trainer_utils.get_last_checkpoint`` would pick the broken one)."""
    found = sorted((int(p.name.rsplit("-", 1)[1]), p) for p in folder.glob("checkpoint-*")
                   if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit())
    for _, path in reversed(found):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            shutil.rmtree(path, ignore_errors=True)
            continue
        return str(path)
    return None


def _show(trainer, name: str | None) -> None:
    """One bar per model and stage, with its loss, instead of the Trainer's bar and
    its line per log (the history is returned)."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    if not name:
        return

    class Bar(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(total=state.max_steps, desc=name, unit="step", dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{logs['loss']:.4f}")

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    trainer.add_callback(Bar())
