"""What the trainers of one extracted model share (stage one,
:mod:`~nasbert.train.stage_one`; embedding distillation, :mod:`~nasbert.train.embedding`):
loading the student, AdamW (weight decay on matrices only) under a linear warm-up
schedule, the dev loss before training, the training time over resumes, checkpoints
checked against the configuration's key, and the result folder written whole."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from nasbert.digest import file_digest
from nasbert.errors import ConfigError
from nasbert.hf.quiet import quiet_transformers
from nasbert.io import atomic_dir
from nasbert.schema import check
from nasbert.train.loop import LoopTrainer

__all__ = ["StudentTrainer", "check_training", "load_student", "training_key",
           "weights_digest"]

CARD_FILES = ("nasbert.json", "README.md")  # what the extracted folder says about itself
BOOKKEEPING = ("checkpoint_every", "keep_checkpoints", "log_every")  # not in a result's key


def check_training(config, weights: tuple[str, ...]) -> None:
    """The checks every student training's configuration shares: a positive learning
    rate, a warm-up share in [0, 1), the loss ``weights`` (field names) not negative and
    one of them positive, positive ``dev_batches`` and ``checkpoint_every``."""
    check(config.lr > 0, "must be positive", field="lr")
    check(0 <= config.warmup_ratio < 1, "must be in [0, 1)", field="warmup_ratio")
    for name in weights:
        check(getattr(config, name) >= 0, "must not be negative", field=name)
    check(sum(getattr(config, name) for name in weights) > 0,
          "at least one loss term needs a positive weight", field=weights[-1])
    check(config.dev_batches > 0, "must be positive", field="dev_batches")
    check(config.checkpoint_every > 0, "must be positive", field="checkpoint_every")


def training_key(config) -> dict:
    """The fields of a training configuration its result depends on (not logging nor
    checkpointing)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in BOOKKEEPING}


def load_student(path: Path, *, eager: bool = False) -> nn.Module:
    """The encoder in a model folder (a NAS-BERT student or a transformers one; ``eager``
    attention where it must return its maps), or one line naming the folder."""
    from transformers import AutoConfig, AutoModel

    import nasbert  # noqa: F401 - registers the nasbert model type

    kwargs = {}
    try:
        if eager and AutoConfig.from_pretrained(path).model_type != "nasbert":
            kwargs["attn_implementation"] = "eager"  # output_attentions needs it
        with quiet_transformers():
            return AutoModel.from_pretrained(str(path), **kwargs)
    except Exception as e:  # noqa: BLE001 - any loader failure: the folder is unreadable
        raise ConfigError(f"could not be loaded ({(str(e).splitlines() or [''])[0][:160]}); "
                          "extract it again (`nasbert search` or `nasbert extract`)",
                          source=str(path)) from None


def weights_digest(folder: Path) -> str | None:
    """The digest of a model folder's weights file (None when it has none)."""
    weights = next((folder / f for f in ("model.safetensors", "pytorch_model.bin")
                    if (folder / f).is_file()), None)
    return file_digest(weights) if weights else None


class StudentTrainer(LoopTrainer):
    """A :class:`LoopTrainer` of one student model (``self.model``, loaded from
    ``self.source``) under a frozen configuration (``self.config``: ``key()``, ``lr``,
    ``weight_decay``, ``warmup_ratio``). A subclass implements :meth:`dev_losses` and
    :meth:`train_step`, calls :meth:`optimize` once its trainable parameters exist, and
    lists in :meth:`extra_modules` what else it trains and checkpoints (projections)."""

    config: object
    model: nn.Module
    source: Path

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.start_losses: dict[str, float] = {}
        self.elapsed, self._since = 0.0, time.time()  # training time, over resumes

    def extra_modules(self) -> dict[str, nn.Module]:
        return {}

    def optimize(self, params: Iterable[nn.Parameter], steps: int) -> None:
        """``self.params``, the optimizer and the scheduler: AdamW, weight decay on
        matrices only, linear warm-up over ``warmup_ratio`` of ``steps`` then decay."""
        from transformers import get_linear_schedule_with_warmup

        c = self.config
        self.params = [p for p in params if p.requires_grad]
        decay = [p for p in self.params if p.ndim >= 2]
        rest = [p for p in self.params if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": c.weight_decay},
             {"params": rest, "weight_decay": 0.0}], lr=c.lr, fused=True)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(c.warmup_ratio * steps), steps)

    def dev_losses(self) -> dict[str, float]:
        raise NotImplementedError

    def seconds(self) -> float:
        return round(self.elapsed + time.time() - self._since, 1)

    # -- the loop's hooks ----------------------------------------------------------------

    def start(self, resumed: bool) -> None:
        if not resumed:
            self.start_losses = self.dev_losses()

    def settings(self) -> dict:
        return self.config.key()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "model": self.model.state_dict(),
                **{k: m.state_dict() for k, m in self.extra_modules().items()},
                "start_losses": self.start_losses, "elapsed": self.seconds()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        for k, m in self.extra_modules().items():
            m.load_state_dict(state[k])
        self.start_losses = state["start_losses"]
        self.elapsed, self._since = state.get("elapsed", 0.0), time.time()
        super().load_state_dict(state)

    def save_result(self, out: Path, record: dict, name: str,
                    also: Callable[[Path], None] | None = None) -> None:
        """On the main worker: ``out`` written whole (the model, the source's card files,
        ``name`` holding ``record``, whatever ``also`` adds to the folder), then the
        checkpoints dropped."""
        if not self.worker.main:
            return
        with atomic_dir(out) as tmp, quiet_transformers():
            self.model.save_pretrained(tmp)
            for card in CARD_FILES:
                if (self.source / card).is_file():
                    shutil.copy2(self.source / card, tmp / card)
            if also is not None:
                also(tmp)
            (tmp / name).write_text(json.dumps(record, indent=1, default=str))
        if not self.on_ray:
            shutil.rmtree(self.checkpoints, ignore_errors=True)
