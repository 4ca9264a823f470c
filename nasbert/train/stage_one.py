"""Stage one of NAS-BERT's two-stage distillation: every extracted model (searched
subnets and baselines alike) distilled end to end on the unlabelled corpus, with one
token budget for all, before it is fine-tuned on a task.

The loss, per batch, over the real tokens::

    hidden_weight    * mean_j MSE(P_j(s_j), t_{map(j)})     student states j = 0..B-1
  + attention_weight * mean_j KL(t_att_{map'(j)} || s_att_j)  where the head counts match
  + output_weight    * MSE(s_out, t_out)

``s_j`` is the student's state after its ``j``-th block (``s_0`` its embedding output) and
``t_i`` the teacher's after its ``i``-th layer; a student of ``B`` blocks (or layers)
learns from a teacher of ``L`` layers with ``map(j) = round(j L / B)``, the uniform
layer map of TinyBERT, and its output from the teacher's. ``P_j`` is the identity at the
teacher's width and otherwise a linear map to it, fitted by (ridge) least squares on
the first batch, then trained with the student and dropped afterwards. Attention: a block's
last attention layer learns the distributions of the teacher layer that ends at
``map(j + 1)`` (MiniLM's KL over keys, averaged over heads and real queries), where
both have the same number of heads; other shapes have no attention term.

It runs in the one training loop (:class:`~nasbert.train.loop.LoopTrainer`): one process
or Ray Train, checkpoints under ``distill/<id>/checkpoints/``, resumed when re-run.

>>> from nasbert.train import distill
>>> records = distill("runs/wiki", ["4x"], DistillConfig(tokens=1_000_000))  # doctest: +SKIP
>>> records["4x"]["dev_loss_end"]                                            # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from nasbert.digest import digest
from nasbert.io import cached_record
from nasbert.losses import masked_mse
from nasbert.provenance import provenance
from nasbert.run import RunDir
from nasbert.schema import check
from nasbert.space import SearchSpace
from nasbert.teacher import Teacher
from nasbert.train.loop import Schedule, StepCallback, Worker
from nasbert.train.student import (
    StudentTrainer,
    check_training,
    load_student,
    training_key,
    weights_digest,
)

__all__ = ["DistillConfig", "EndToEndTrainer", "distilled", "layer_map"]

RECORD = "stage_one.json"  # in distill/<id>/model/: what made the model
RIDGE = 1e-2  # of the mean state variance: the projections' least-squares regulariser


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Stage one's schedule and loss; ``tokens`` is the budget every model gets."""

    tokens: int = 2_000_000  # corpus tokens each model trains on
    batch_size: int = 32  # sequences of the run's corpus (its seq_len)
    lr: float = 1e-4
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    hidden_weight: float = 1.0
    attention_weight: float = 1.0
    output_weight: float = 1.0
    # the word embeddings stay as extracted (oBERTa: freezing them helps a pruned model
    # keep the teacher's vocabulary)
    freeze_embeddings: bool = False
    dev_batches: int = 4  # corpus dev batches the loss is measured on, before and after
    dtype: Literal["float32", "bfloat16"] = "float32"
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 1
    log_every: int = 5

    def __post_init__(self) -> None:
        check(self.tokens > 0, "must be positive", field="tokens")
        check(self.batch_size > 0, "must be positive", field="batch_size")
        check_training(self, ("hidden_weight", "attention_weight", "output_weight"))

    def steps(self, seq_len: int) -> int:
        return max(1, math.ceil(self.tokens / (self.batch_size * seq_len)))

    def key(self) -> dict:
        """The fields the distilled model depends on (not logging nor checkpointing)."""
        return training_key(self)


def layer_map(student: int, teacher: int) -> list[int]:
    """For each of the student's ``student + 1`` states (embeddings, then each block or
    layer), the teacher state it learns: ``round(j * teacher / student)``."""
    return [round(j * teacher / student) for j in range(student + 1)]


# ----------------------------------------------------------------------------- the student


class _Student:
    """Uniform access to a student's states and attention distributions: a nasbert model
    (blocks; attention from its ``Attention`` layers, recomputed by a hook) or a
    transformers encoder (layers; ``output_attentions`` in eager mode)."""

    def __init__(self, model: nn.Module, teacher_heads: int, with_attention: bool):
        from nasbert.model import NasBertModel
        from nasbert.ops import Attention

        self.model = model
        self.nasbert = isinstance(model, NasBertModel)
        self._captured: dict[int, Tensor] = {}
        self._masks = None
        if self.nasbert:
            self.depth = len(model.blocks)
            self.attending: list[int] = []
            for j, block in enumerate(model.blocks):
                layers = [m for m in block.layers if isinstance(m, Attention)]
                if with_attention and layers and layers[-1].heads == teacher_heads:
                    self.attending.append(j)
                    layers[-1].register_forward_hook(self._hook(j))
        else:
            self.depth = int(model.config.num_hidden_layers)
            same = int(model.config.num_attention_heads) == teacher_heads
            self.attending = list(range(self.depth)) if with_attention and same else []

    def _hook(self, j: int):
        def capture(module, args, _out):
            self._captured[j] = module.log_probabilities(*args)
        return capture

    def __call__(self, ids: Tensor, mask: Tensor) -> tuple[list[Tensor], Tensor, dict[int, Tensor]]:
        """States ``[s_0 .. s_{B-1}]``, the output and the attention log-probabilities of
        the attending blocks."""
        self._captured = {}
        want = bool(self.attending) and not self.nasbert
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                         **({"output_attentions": True} if want else {}))
        states = list(out.hidden_states[:-1])
        if self.nasbert:
            attention = dict(self._captured)
        else:
            attention = {j: out.attentions[j].clamp_min(1e-12).log() for j in self.attending}
        return states, out.last_hidden_state, attention


def attention_kl(teacher: Tensor, student_log: Tensor, mask: Tensor) -> Tensor:
    """``KL(teacher || student)`` over keys, averaged over heads and real queries."""
    kl = torch.xlogy(teacher, teacher) - teacher * student_log  # (B, H, T, T)
    per_query = kl.sum(-1).mean(1)  # (B, T)
    m = mask.to(per_query.dtype)
    return (per_query * m).sum() / m.sum()


# ----------------------------------------------------------------------------- the trainer


class EndToEndTrainer(StudentTrainer):
    """Stage one of one model: ``subnets/<model_id>`` distilled on the run's corpus into
    ``distill/<model_id>/model/``."""

    desc = "stage one"

    def __init__(self, run: RunDir, model_id: str, config: DistillConfig, worker: Worker, *,
                 progress: bool = True, on_ray: bool = False,
                 callbacks: Sequence[StepCallback] = ()):
        super().__init__(worker, progress=progress, on_ray=on_ray, callbacks=callbacks)
        self.run_dir, self.model_id, self.config = run, model_id, config
        self.desc = f"stage one {model_id}"
        folder = run.distill_dir(model_id)
        self.checkpoints, self.ray_storage = folder / "checkpoints", folder / "ray"
        self.tensorboard = run.tensorboard / "distill" / model_id
        self.source = run.subnet_dir(model_id)
        recipe = run.recipe()
        torch.manual_seed(config.seed)
        with_attention = config.attention_weight > 0
        self.teacher = Teacher.load(recipe.teacher, SearchSpace.from_yaml(recipe.space),
                                    device=worker.device, attentions=with_attention)
        self.corpus = run.corpus()
        self.data = self.corpus.train
        model = load_student(self.source, eager=with_attention).to(worker.device)
        if config.freeze_embeddings:
            model.get_input_embeddings().requires_grad_(False)
        self.model = model.train()
        tconf = self.teacher.config
        self.student = _Student(model, int(tconf.num_attention_heads), with_attention)
        self.targets = layer_map(self.student.depth, int(tconf.num_hidden_layers))
        self.width = int(tconf.hidden_size)
        self.projections = self._fit_projections()
        steps = config.steps(self.data.shape[1])
        self.schedule = Schedule(config.batch_size, steps,
                                 max(1, math.ceil(len(self.data) / config.batch_size)),
                                 config.seed, config.grad_clip, config.log_every,
                                 config.checkpoint_every, config.keep_checkpoints, config.dtype)
        self.optimize((*model.parameters(), *self.projections.parameters()), steps)
        self._dev = [self.corpus.dev[i:i + config.batch_size]
                     for i in range(0, len(self.corpus.dev), config.batch_size)
                     ][: config.dev_batches]

    # -- the objective -------------------------------------------------------------------

    def _teacher(self, ids: Tensor, mask: Tensor) -> tuple[list[Tensor], list[Tensor] | None]:
        with torch.no_grad():
            out = self.teacher.model(input_ids=ids, attention_mask=mask,
                                     output_hidden_states=True,
                                     output_attentions=bool(self.student.attending))
        return list(out.hidden_states), (list(out.attentions) if out.attentions else None)

    @torch.no_grad()
    def _fit_projections(self) -> nn.ModuleList:
        """``P_j``: identity at the teacher's width, else the least-squares map of the
        student's states onto the teacher's, on the corpus's first sequences."""
        idx = torch.arange(min(self.config.batch_size, len(self.data)))
        ids = self.data[idx].to(self.worker.device)
        mask = torch.ones_like(ids)
        t_states, _ = self._teacher(ids, mask)
        self.model.eval()
        s_states, _, _ = self.student(ids, mask)
        self.model.train()
        out = []
        for j, s in enumerate(s_states):
            if s.shape[-1] == self.width:
                out.append(nn.Identity())
                continue
            x = s.reshape(-1, s.shape[-1]).double()
            y = t_states[self.targets[j]].reshape(-1, self.width).double()
            # ridge: the plain solution amplifies directions of tiny variance, and the
            # dropout noise of training along them (measured: train-mode loss 5,000x the
            # eval-mode one on a narrow student)
            gram = x.T @ x
            ridge = RIDGE * gram.diagonal().mean() * torch.eye(
                len(gram), dtype=gram.dtype, device=gram.device)
            w = torch.linalg.solve(gram + ridge, x.T @ y)  # (h, d)
            proj = nn.Linear(s.shape[-1], self.width, bias=False)
            proj.weight.copy_(w.T.float())
            out.append(proj)
        return nn.ModuleList(out).to(self.worker.device)

    def losses(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
        c = self.config
        t_states, t_att = self._teacher(ids, mask)
        with self.precision():
            s_states, s_out, s_att = self.student(ids, mask)
            parts: dict[str, Tensor] = {}
            if c.hidden_weight > 0:
                parts["hidden"] = sum(
                    masked_mse(self.projections[j](s).float(), t_states[self.targets[j]], mask)
                    for j, s in enumerate(s_states)) / len(s_states)
            if c.attention_weight > 0 and s_att:
                parts["attention"] = sum(
                    attention_kl(t_att[self.targets[j + 1] - 1], s_att[j].float(), mask)
                    for j in s_att) / len(s_att)
            if c.output_weight > 0:
                parts["output"] = masked_mse(s_out.float(), t_states[-1], mask)
            weights = {"hidden": c.hidden_weight, "attention": c.attention_weight,
                       "output": c.output_weight}
            total = sum(weights[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def train_step(self) -> dict[str, float]:
        idx = self.batch_indices(self.step)
        ids = self.data[idx].to(self.worker.device)
        mask = torch.ones_like(ids)
        total, parts = self.losses(ids, mask)
        grad_norm = self.optimizer_step(total, self.params)
        out = self.mean_over_workers({**parts, "loss": float(total.detach())})
        out["grad_norm"] = grad_norm
        return out

    @torch.no_grad()
    def dev_losses(self) -> dict[str, float]:
        """The loss and its terms on the corpus's dev sequences."""
        self.model.eval()
        sums: dict[str, float] = {}
        for ids in self._dev:
            ids = ids.to(self.worker.device)
            total, parts = self.losses(ids, torch.ones_like(ids))
            for k, v in {**parts, "loss": float(total)}.items():
                sums[k] = sums.get(k, 0.0) + v / len(self._dev)
        self.model.train()
        return sums

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"projections": self.projections}

    def finish(self, first: dict | None, last: dict, writer) -> dict:
        """Write ``distill/<id>/model/`` (the model, its card files and
        ``stage_one.json``), then drop the checkpoints."""
        record = {
            "id": self.model_id, "key": stage_one_key(self.run_dir, self.model_id, self.config),
            "source": str(self.source), "steps": self.step,
            "tokens": self.step * self.config.batch_size * self.data.shape[1],
            "seq_len": int(self.data.shape[1]), "config": dataclasses.asdict(self.config),
            "layer_map": self.targets, "attention_blocks": self.student.attending,
            "dev_loss_start": self.start_losses, "dev_loss_end": self.dev_losses(),
            "first_losses": first, "last_losses": last, "workers": self.worker.world,
            "seconds": self.seconds(), "teacher": self.teacher.describe(), **provenance()}
        self.save_result(self.run_dir.distilled_dir(self.model_id), record, RECORD)
        return record


def stage_one_key(run: RunDir, model_id: str, config: DistillConfig) -> str:
    """What a distilled model depends on: the extracted weights, the corpus, the teacher
    and the configuration."""
    return digest([weights_digest(run.subnet_dir(model_id)), run.corpus_key(),
                   run.recipe().teacher, config.key()])


# ----------------------------------------------------------------------------- the stage


def distilled(run: RunDir | str | Path, model_id: str, config: DistillConfig) -> dict | None:
    """The record of ``distill/<id>/model`` when it was made from the current extracted
    weights with ``config``, else None."""
    run = RunDir.of(run)
    return cached_record(run.distilled_dir(model_id) / RECORD,
                         stage_one_key(run, model_id, config))
