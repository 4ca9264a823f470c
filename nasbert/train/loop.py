"""The one training loop: block-wise supernet distillation and end-to-end distillation
of extracted models (stage one) are two objectives of it.

:class:`LoopTrainer` owns what every training shares: the data order (a function of the
seed and the step), the optimiser step with its all-reduce, checkpoints and resume,
progress, TensorBoard and callbacks. :class:`BlockwiseTrainer` trains the supernet
(every block on a sampled path, with progressive shrinking);
:class:`nasbert.train.stage_one.EndToEndTrainer` distils one extracted model on the corpus.

:func:`nasbert.train.launch.train_loop` runs one of them: in this process, or once per
worker under Ray Train's ``TorchTrainer``, with the process group already set up
(:func:`~nasbert.train.launch.run_on_ray`). Workers take the same step
(seeded by the step) on their share of the batch, so N workers compute what one
process would with the whole batch; gradients are averaged by one all-reduce.

Everything a step depends on (data order, sampled paths) is a function of the seed and
the step, so a run resumed from a checkpoint continues exactly where it stopped.
Checkpoints: one process writes them to its ``checkpoints/step-<n>/`` (atomically, the
last ``keep_checkpoints`` kept); on Ray Train they are Ray's own (reported with
``ray.train.report``, kept by its ``CheckpointConfig``, resumed with
``ray.train.get_checkpoint``), stored under its ``ray/`` folder. Either kind resumes
either way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from nasbert.errors import ConfigError
from nasbert.importance import Importance
from nasbert.io import atomic_dir, atomic_write_text
from nasbert.losses import masked_mse
from nasbert.provenance import provenance
from nasbert.recipe import Recipe
from nasbert.run import RunDir
from nasbert.space import BlockArch, SearchSpace
from nasbert.supernet import Supernet
from nasbert.teacher import Teacher
from nasbert.train.inherit import CHECK_SEQUENCES, check_teacher_path, inherit
from nasbert.train.shrink import Shrinker

log = logging.getLogger(__name__)

STATE = "state.pt"  # the file inside a checkpoint folder
# called with the trainer after every step (logging, tests that stop a worker mid-run)
StepCallback = Callable[["LoopTrainer"], None]


@dataclass(frozen=True)
class Worker:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls, use_gpu: bool = False) -> Worker:
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            rank, world = 0, 1
        device = torch.device("cpu")
        if use_gpu:
            if not torch.cuda.is_available():
                raise ConfigError("asks for a GPU, but torch sees no CUDA device here; give "
                                  "--device cpu (scaling.use_gpu: false) or install a CUDA "
                                  "build of torch",
                                  source="scaling", field="use_gpu")
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return cls(rank, world, device)

    # Not accelerate (it is installed, for transformers' Trainer): its Accelerator would join
    # Ray Train's process group (it initialises one only when none is), but its gradient
    # sync is DDP through ``prepare(model)``, which syncs only what runs through the
    # wrapped module's ``forward``, while the supernet trains through ``forward_block``
    # on sampled paths (parameters unused on most steps); and ``Accelerator.reduce``
    # issues one collective per tensor (accelerate 1.16, utils/operations.py), where this
    # sends every gradient of the step in one. These dozen lines are the whole of it.
    def all_reduce_mean(self, tensors: list[Tensor]) -> None:
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """In place; a CPU tensor travels through this worker's device (NCCL reduces
        CUDA tensors only)."""
        if self.world > 1:
            on_device = tensor.to(self.device)
            dist.all_reduce(on_device)
            tensor.copy_(on_device)
        return tensor


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_dirs(own: Path | RunDir, ray_storage: Path | None = None) -> list[Path]:
    """Checkpoint folders, oldest first: those under ``own`` and Ray Train's under
    ``ray_storage`` (given a run directory: its supernet's)."""
    if isinstance(own, RunDir):
        own, ray_storage = own.checkpoints, own.ray_storage
    found = [*own.glob("step-*"), *(ray_storage.glob("*/step-*") if ray_storage else ())]
    return sorted((p for p in found if (p / STATE).is_file()), key=lambda p: p.name)


def load_state(folder: Path) -> dict:
    path = folder / STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is the same error
        raise ConfigError(f"is corrupt ({type(e).__name__}: {str(e).splitlines()[0][:80]}); "
                          "delete its folder to resume from the one before, or start a new "
                          "run directory", source=str(path)) from None


# ----------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class Schedule:
    """What the loop needs of a training's configuration."""

    batch_size: int  # global: split across workers
    max_steps: int
    epoch_steps: int  # steps per pass over the data (its order is reshuffled each pass)
    seed: int
    grad_clip: float
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int
    dtype: str = "float32"


class LoopTrainer:
    """The loop and its checkpoints; a subclass supplies the objective.

    A subclass sets, in its ``__init__`` (after calling this one's): ``schedule``,
    ``checkpoints`` and ``ray_storage`` (folders), ``tensorboard`` (a folder or None),
    ``data`` (the ``(sequences, seq_len)`` training ids), ``optimizer`` and ``scheduler``;
    and implements :meth:`train_step`, :meth:`start`, :meth:`finish` and the model part
    of :meth:`state_dict` / :meth:`load_state_dict`. :meth:`after_step` is its hook
    between steps (shrinking)."""

    desc = "train"  # the progress bar's name
    schedule: Schedule
    checkpoints: Path
    ray_storage: Path
    tensorboard: Path | None
    data: Tensor

    def __init__(self, worker: Worker, *, progress: bool = True, on_ray: bool = False,
                 callbacks: Sequence[StepCallback] = ()):
        self.worker = worker
        self.progress, self.on_ray, self.callbacks = progress and worker.main, on_ray, callbacks
        self.step = 0

    @property
    def per_worker(self) -> int:
        return max(1, self.schedule.batch_size // self.worker.world)

    def precision(self):
        if self.schedule.dtype == "bfloat16":
            return torch.autocast(self.worker.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def batch_indices(self, step: int) -> Tensor:
        """This worker's share of the global batch of ``step``."""
        n, bs = len(self.data), self.schedule.batch_size
        epoch, pos = divmod(step, self.schedule.epoch_steps)
        g = torch.Generator().manual_seed(self.schedule.seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=g)
        idx = perm[(torch.arange(bs) + pos * bs) % n]
        return idx[self.worker.rank::self.worker.world][: self.per_worker]

    def optimizer_step(self, loss: Tensor, params: Sequence[torch.nn.Parameter]) -> float:
        """Backward, all-reduce, clip, step; returns the gradient norm."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.worker.all_reduce_mean([p.grad for p in params if p.grad is not None])
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.schedule.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return float(grad_norm)

    def mean_over_workers(self, losses: dict[str, float]) -> dict[str, float]:
        stats = torch.tensor([losses[k] for k in sorted(losses)])
        stats = self.worker.all_reduce_sum(stats) / self.worker.world
        return dict(zip(sorted(losses), stats.tolist()))

    # -- to implement --------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        """One step; returns its losses (``loss`` the one the bar shows)."""
        raise NotImplementedError

    def start(self, resumed: bool) -> None:
        """Before the first step (measure where training starts)."""

    def after_step(self, bar, writer) -> None:
        """Between steps, after logging and before checkpointing."""

    def finish(self, first: dict | None, last: dict, writer) -> dict:
        raise NotImplementedError

    def settings(self) -> dict | None:
        """What the checkpoints depend on (a configuration's key): a checkpoint made with
        other settings, an interrupted attempt, is dropped on resume, not loaded. None:
        not checked (the supernet checks its recipe before it starts)."""
        return None

    def state_dict(self) -> dict:
        return {"step": self.step, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                "settings": self.settings(), "provenance": provenance()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]

    # -- checkpoints ---------------------------------------------------------------------

    def save_checkpoint(self, metrics: dict[str, float]) -> None:
        """One process: ``<checkpoints>/step-<n>/``, the oldest beyond
        ``keep_checkpoints`` removed. Ray Train: reported to Ray (every worker reports, the
        main one with the state), which stores and prunes them."""
        name = f"step-{self.step:08d}"
        # Not accelerate's save_state with ProjectConfiguration(total_limit=...): it writes
        # checkpoint_<i>/ in place after deleting the oldest (accelerate 1.16), so a kill
        # mid-write leaves a half checkpoint as the latest and one fewer good one; here the
        # new one is complete (atomic_dir) before an old one goes. Its folders are named by
        # its own save counter, not by step as resume() and Ray's folders are, and on Ray
        # Train the rotation is Ray's (CheckpointConfig), which it would not replace.
        if not self.on_ray:
            with atomic_dir(self.checkpoints / name) as tmp:
                torch.save(self.state_dict(), tmp / STATE)
            own = sorted(self.checkpoints.glob("step-*"))
            for old in own[: -self.schedule.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
            return
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.worker.main:
                torch.save(self.state_dict(), Path(tmp) / STATE)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({"step": self.step, **metrics}, checkpoint=checkpoint,
                             checkpoint_dir_name=name)

    def resume(self) -> Path | None:
        """Load the latest checkpoint: on Ray Train the one Ray hands back (after a
        failure, or the one the driver resumed from), else the latest on disk."""
        if self.on_ray:
            import ray.train

            checkpoint = ray.train.get_checkpoint()
            if checkpoint is None:
                return None
            with checkpoint.as_directory() as folder:
                self.load_state_dict(load_state(Path(folder)))
            return Path(checkpoint.path)
        for tmp in self.checkpoints.glob(".*"):  # a write a kill cut short
            shutil.rmtree(tmp, ignore_errors=True)
        found = checkpoint_dirs(self.checkpoints, self.ray_storage)
        if found and self.settings() is not None and \
                load_state(found[-1]).get("settings") != self.settings():
            if self.progress:
                print(f"{self.checkpoints}: made with other settings; starting afresh",
                      flush=True)
            shutil.rmtree(self.checkpoints, ignore_errors=True)
            found = checkpoint_dirs(self.checkpoints, self.ray_storage)
        if not found:
            return None
        self.load_state_dict(load_state(found[-1]))
        return found[-1]

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> dict:
        sc = self.schedule
        resumed = self.resume()
        self.start(resumed is not None)
        writer = None
        if self.worker.main:
            if self.tensorboard is not None:
                from tensorboardX import SummaryWriter

                writer = SummaryWriter(str(self.tensorboard))
            if resumed:
                print(f"resuming from step {self.step} ({resumed})", flush=True)
        tokens = sc.batch_size * self.data.shape[1]
        bar = tqdm(total=sc.max_steps, initial=self.step, desc=self.desc, unit="step",
                   disable=not self.progress, dynamic_ncols=True)
        first_losses: dict[str, float] | None = None
        last: dict[str, float] = {}
        window_start, window_steps = time.perf_counter(), 0
        while self.step < sc.max_steps:
            last = self.train_step()
            first_losses = first_losses or dict(last)
            window_steps += 1
            elapsed = time.perf_counter() - window_start
            last["tokens_per_s"] = window_steps * tokens / max(elapsed, 1e-9)
            bar.update(1)
            if self.step % sc.log_every == 0 or self.step == sc.max_steps:
                bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_s']:.0f}")
                if writer is not None:
                    for k, v in last.items():
                        writer.add_scalar(f"train/{k}", v, self.step)
                    writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
                window_start, window_steps = time.perf_counter(), 0
            self.after_step(bar, writer)
            if self.step % sc.checkpoint_every == 0 or self.step == sc.max_steps:
                self.save_checkpoint(last)
            for callback in self.callbacks:
                callback(self)
        bar.close()
        summary = self.finish(first_losses, last, writer)
        if writer is not None:
            writer.close()
        return summary


class BlockwiseTrainer(LoopTrainer):
    """The supernet's objective: every block (and the embedding) on a sampled path, each
    to the teacher block's output from the teacher block's input; shrinking between
    epochs; the final supernet and the shrink tables at the end."""

    desc = "supernet"

    def __init__(self, recipe: Recipe, run: RunDir, worker: Worker, *,
                 progress: bool = True, on_ray: bool = False,
                 callbacks: Sequence[StepCallback] = ()):
        super().__init__(worker, progress=progress, on_ray=on_ray, callbacks=callbacks)
        self.recipe, self.run_dir = recipe, run
        self.checkpoints, self.ray_storage = run.checkpoints, run.ray_storage
        self.tensorboard = run.tensorboard
        tc = recipe.train
        torch.manual_seed(tc.seed)
        space = SearchSpace.from_yaml(recipe.space)
        self.teacher = Teacher.load(recipe.teacher, space, device=worker.device)
        self.space = self.teacher.fitted_space(space)
        self.corpus = run.corpus()
        teacher_config = self.teacher.config
        self.supernet = Supernet(self.space, dropout=tc.dropout, attention_dropout=tc.dropout,
                                 layer_norm_eps=teacher_config.layer_norm_eps,
                                 initializer_range=teacher_config.initializer_range
                                 ).to(worker.device)
        self.initialised_from_teacher: list[str] = []
        self.teacher_check: dict = {"skipped": "train.init is random"}
        if tc.init != "random":
            importance = (Importance.load(run.importance) if tc.init in ("fisher", "magnitude")
                          else None)
            self.initialised_from_teacher = inherit(
                self.supernet, self.teacher, importance,
                basis_sequences=(self.corpus.train[:tc.init_sequences].to(worker.device)
                                 if tc.basis == "pca" else None))
            check_ids = self.corpus.dev if len(self.corpus.dev) else self.corpus.train
            self.teacher_check = check_teacher_path(
                self.supernet, self.teacher, check_ids[:CHECK_SEQUENCES],
                initialised=self.initialised_from_teacher)
        # fused: one pass per tensor; the unfused AdamW costs more than the step on a CPU
        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=tc.lr, betas=tuple(tc.betas),
                                           fused=True)
        from transformers import get_linear_schedule_with_warmup

        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, tc.warmup_steps,
                                                         tc.max_steps)
        self.shrinker = self._shrinker()
        self.data = self.corpus.train
        self.epoch_steps = recipe.shrink.epoch_steps or max(
            1, math.ceil(len(self.data) / tc.batch_size))
        self.schedule = Schedule(tc.batch_size, tc.max_steps, self.epoch_steps, tc.seed,
                                 tc.grad_clip, tc.log_every, tc.checkpoint_every,
                                 tc.keep_checkpoints, tc.dtype)
        self._cache: dict[int, Tensor] = {}
        width = self.space.dims.hidden_size
        per_seq = (len(self.space.blocks) + 1) * self.corpus.train.shape[1] * width * 2
        self._cache_limit = int(tc.cache_teacher_gb * 2**30 // per_seq)
        self._dev = self._dev_states()
        self.start_losses: dict[str, float] = {}
        self._extremes_cache: dict[tuple[int, int], list[BlockArch]] = {}

    # -- set-up --------------------------------------------------------------------------

    def _shrinker(self) -> Shrinker:
        """Bins by latency when the run has a lookup table measured on this machine (as
        the paper does), else by parameters."""
        config, dims = self.recipe.shrink, self.space.dims
        table = self.run_dir.latency_table() if config.by in ("latency", "auto") else None
        if config.by == "latency" and table is None:
            raise ConfigError("shrink.by is 'latency' but the run has no latency table for "
                              f"this machine; run `nasbert latency profile {self.run_dir}`",
                              source=str(self.run_dir.run_yaml), field="shrink.by")
        if table is not None:
            return Shrinker(self.space, config, lambda i, p: table.block_ms(p),
                            seed=self.recipe.train.seed, size_name="latency_ms")
        return Shrinker(self.space, config, lambda i, p: float(p.num_params(dims)),
                        seed=self.recipe.train.seed)

    def _param_groups(self) -> list[dict]:
        decay, no_decay = [], []
        for name, p in self.supernet.named_parameters():
            (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
        return [{"params": decay, "weight_decay": self.recipe.train.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def _dev_states(self) -> list[tuple[Tensor, Tensor, list[Tensor]]]:
        """Dev batches with their teacher states, computed once: shrinking scores
        thousands of paths on them."""
        return self.teacher.batches(self.corpus.dev, self.recipe.train.batch_size,
                                    limit=self.recipe.shrink.dev_batches)

    # -- checkpoints ---------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {**super().state_dict(), "supernet": self.supernet.state_dict(),
                "shrink": self.shrinker.state_dict(), "start_losses": self.start_losses,
                "recipe": self.recipe.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.supernet.load_state_dict(state["supernet"])
        self.shrinker.load_state_dict(state["shrink"])
        self.start_losses = state["start_losses"]
        super().load_state_dict(state)

    # -- one step ------------------------------------------------------------------------

    def teacher_states(self, idx: Tensor, ids: Tensor, mask: Tensor) -> list[Tensor]:
        """Teacher states of a batch, from the in-memory cache when it holds them. With
        the cache on, targets are always rounded to its float16, cached or not, so that
        a resumed run (whose cache starts empty) computes what an uninterrupted one does."""
        keys = idx.tolist()
        if self._cache_limit and all(k in self._cache for k in keys):
            stacked = torch.stack([self._cache[k] for k in keys]).to(self.worker.device)
            return [s.float() for s in stacked.unbind(1)]
        states = self.teacher.block_states(ids, mask)
        if not self._cache_limit:
            return states
        rounded = torch.stack(states, dim=1).to(torch.float16)
        for j, k in enumerate(keys):
            if len(self._cache) < self._cache_limit:
                self._cache[k] = rounded[j].cpu()
        return [s.float() for s in rounded.unbind(1)]

    def sample_paths(self, step: int) -> tuple[list[int], list[list[BlockArch]]]:
        """Embedding sizes and per-block paths to train at ``step``; the same on every
        worker. Uniform: one each; sandwich: also the largest and the smallest."""
        rng = random.Random(self.recipe.train.seed * 1_000_003 + step)
        embeds = [rng.choice(self.space.embed_sizes)]
        paths = []
        for i in range(len(self.space.blocks)):
            chosen = [rng.choice(self.shrinker.paths(i))]
            if self.recipe.train.sampling == "sandwich":
                chosen += self._extremes(i)
            paths.append(chosen)
        if self.recipe.train.sampling == "sandwich":
            embeds += [max(self.space.embed_sizes), min(self.space.embed_sizes)]
        return embeds, paths

    def _extremes(self, index: int) -> list[BlockArch]:
        """The largest and smallest surviving paths of a block, by parameters; they only
        change when shrinking runs, so they are computed once per shrinking round."""
        key = (index, self.shrinker.rounds)
        if key not in self._extremes_cache:
            dims, alive = self.space.dims, self.shrinker.paths(index)
            size = lambda p: (p.num_params(dims), str(p))  # noqa: E731
            self._extremes_cache[key] = [max(alive, key=size), min(alive, key=size)]
        return self._extremes_cache[key]

    def train_step(self) -> dict[str, float]:
        idx = self.batch_indices(self.step)
        ids = self.corpus.train[idx].to(self.worker.device)
        mask = torch.ones_like(ids)
        states = self.teacher_states(idx, ids, mask)
        embeds, paths = self.sample_paths(self.step)
        self.supernet.train()
        losses: dict[str, float] = {}
        with self.precision():
            total = 0.0
            emb_loss = sum(masked_mse(self.supernet.embed(ids, size=e), states[0], mask)
                           for e in embeds) / len(embeds)
            total = emb_loss
            losses["embeddings"] = emb_loss.item()
            for i, chosen in enumerate(paths):
                loss = sum(masked_mse(self.supernet.forward_block(i, states[i], p, mask),
                                states[i + 1], mask) for p in chosen) / len(chosen)
                losses[f"block{i}"] = loss.item()
                total = total + loss
        grad_norm = self.optimizer_step(total, list(self.supernet.parameters()))
        out = self.mean_over_workers(losses)
        out["loss"] = sum(v for k, v in out.items() if k.startswith("block"))
        out["grad_norm"] = grad_norm
        return out

    # -- shrinking -----------------------------------------------------------------------

    @torch.no_grad()
    def score(self, index: int, paths: list[BlockArch]) -> list[float]:
        """Dev distillation loss of each path of block ``index``, the work split across
        workers."""
        was_training = self.supernet.training
        self.supernet.eval()
        losses = torch.zeros(len(paths), dtype=torch.float64)
        mine = range(self.worker.rank, len(paths), self.worker.world)
        for j in tqdm(mine, desc=f"scoring block {index}", leave=False,
                      disable=not self.progress or len(mine) < 100):
            total = 0.0
            for _ids, mask, states in self._dev:
                with self.precision():
                    out = self.supernet.forward_block(index, states[index], paths[j], mask)
                total += float(masked_mse(out.float(), states[index + 1], mask))
            losses[j] = total / len(self._dev)
        self.worker.all_reduce_sum(losses)
        self.supernet.train(was_training)
        return losses.tolist()

    def reference_paths(self, index: int) -> list[BlockArch]:
        """Fixed paths of the whole space (the largest, the smallest and six seeded
        random ones) whose dev loss measures training progress, before and after."""
        space = self.space
        rng = random.Random(self.recipe.train.seed + 17 * index)
        largest, smallest = space.max_arch().blocks[index], space.min_arch().blocks[index]
        return [largest, smallest, *(space.sample_block(index, rng) for _ in range(6))]

    @torch.no_grad()
    def reference_losses(self) -> dict[str, float]:
        """Mean dev loss of the reference paths per block, and of the embeddings over
        every embedding size."""
        out = {}
        self.supernet.eval()
        emb = [float(masked_mse(self.supernet.embed(ids, size=e), states[0], mask))
               for e in self.space.embed_sizes for ids, mask, states in self._dev]
        out["embeddings"] = sum(emb) / len(emb)
        for i in range(len(self.space.blocks)):
            losses = self.score(i, self.reference_paths(i))
            out[f"block{i}"] = sum(losses) / len(losses)
        self.supernet.train()
        return out

    # -- the loop's hooks -----------------------------------------------------------------

    def start(self, resumed: bool) -> None:
        if not resumed:
            self.start_losses = self.reference_losses()

    def after_step(self, bar, writer) -> None:
        """A shrinking round at the end of each epoch after the warm-up."""
        if self.step % self.epoch_steps or not self.shrinker.due(self.step // self.epoch_steps):
            return
        record = self.shrinker.round(self.score)
        if self.worker.main:
            bar.write(f"shrink round {record['round']} at step {self.step}: paths left "
                      + ", ".join(str(b["left"]) for b in record["blocks"]))
            if writer is not None:
                for b in record["blocks"]:
                    writer.add_scalar(f"shrink/block{b['block']}_paths", b["left"], self.step)

    def finish(self, first: dict | None, last: dict, writer) -> dict:
        """Shrink to the end, re-score the survivors, write the final supernet and the
        ``shrink/`` tables."""
        if self.recipe.shrink.enabled:
            self.shrinker.finish(self.score)
        summary = {
            "steps": self.step,
            "dev_loss_start": self.start_losses, "dev_loss_end": self.reference_losses(),
            "first_losses": first, "last_losses": last,
            "initialised_from_teacher": self.initialised_from_teacher,
            "teacher_path_check": self.teacher_check,
            "teacher": self.teacher.describe(), "corpus": self.corpus.info,
            "epoch_steps": self.epoch_steps, "workers": self.worker.world,
        }
        if self.worker.main:
            if self.recipe.shrink.enabled:
                self.shrinker.write(self.run_dir.shrink, teacher=self.recipe.teacher,
                                    step=self.step)
            self.supernet.save(self.run_dir.final, recipe=self.recipe.to_dict(),
                               teacher=self.teacher.describe(), steps=self.step)
            atomic_write_text(self.run_dir.summary, json.dumps(summary, indent=1, default=str))
        return summary
