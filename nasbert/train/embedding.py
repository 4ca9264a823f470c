"""Embedding distillation: a student trained to reproduce the teacher's sentence
embeddings (its pooled states, pooled as the teacher's sentence-transformers folder
says) on unlabelled text, after stage one or from the extracted weights.

The loss, per batch of ``n`` texts with the student's and the teacher's pooled vectors
``s_i`` and ``t_i`` (before normalisation; ``^`` normalised)::

    mse_weight         * mean_i ||s_i - t_i||^2 / width
  + cosine_weight      * mean_i (1 - cos(s_i, t_i))
  + contrastive_weight * mean_i KL(softmax_j(t^_i . t^_j / tau) || softmax_j(s^_i . s^_j / tau))

the first two as sentence-transformers' distillation trains (MSE to the teacher's
embedding), the third in-batch: the student's similarity of each text to every other
text of the batch, as a distribution, learns the teacher's.

The text: spans of the run's corpus (``min_tokens`` to ``max_tokens`` tokens from each
packed sequence, ``[CLS] span [SEP]``, a sentence's length rather than a page's), or a
file with one text per line (``texts``). It runs in the one training loop
(:class:`~nasbert.train.loop.LoopTrainer`): one process or Ray Train, checkpoints under
``embed/<id>/checkpoints/``, resumed when re-run. The result, ``embed/<id>/model/``, is
a sentence-transformers folder (the model, the teacher's tokenizer and pooling) that
``SentenceTransformer(path)`` loads after ``import nasbert``.

>>> from nasbert.train import distill_embeddings
>>> records = distill_embeddings("runs/wiki", ["4x"])         # doctest: +SKIP
>>> records["4x"]["dev_end"]["cosine_to_teacher"]              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from nasbert.data.corpus import spans
from nasbert.digest import digest, file_digest
from nasbert.errors import ConfigError
from nasbert.io import cached_record
from nasbert.pooling import Pooling, pool
from nasbert.provenance import provenance
from nasbert.run import STATIC, RunDir
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

__all__ = ["EmbedDistillConfig", "EmbeddingTrainer", "embedded", "source_dir"]

RECORD = "embedding.json"  # in embed/<id>/model/: what made the model


@dataclasses.dataclass(frozen=True)
class EmbedDistillConfig:
    """Embedding distillation's schedule, text and loss."""

    start: Literal["stage-one", "extracted"] = "stage-one"  # which weights it starts from
    texts: str | None = None  # a file of one text per line (default: the run's corpus)
    min_tokens: int = 8  # a corpus span's length is drawn from [min_tokens, max_tokens];
    max_tokens: int = 64  # a text of the file is cut at max_tokens
    steps: int = 300
    batch_size: int = 64  # texts
    lr: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    mse_weight: float = 1.0
    cosine_weight: float = 1.0
    contrastive_weight: float = 1.0
    temperature: float = 0.05  # of the in-batch similarities
    dev_batches: int = 4  # held-out batches the loss is measured on, before and after
    dtype: Literal["float32", "bfloat16"] = "float32"
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 1
    log_every: int = 10

    def __post_init__(self) -> None:
        check(self.min_tokens > 0, "must be positive", field="min_tokens")
        check(self.max_tokens >= self.min_tokens, "must be at least min_tokens",
              field="max_tokens")
        check(self.steps > 0, "must be positive", field="steps")
        check(self.batch_size > 1, "must be at least 2", field="batch_size")
        check(self.temperature > 0, "must be positive", field="temperature")
        check_training(self, ("mse_weight", "cosine_weight", "contrastive_weight"))

    def key(self) -> dict:
        """The fields the distilled model depends on (not logging nor checkpointing)."""
        return training_key(self)


# ----------------------------------------------------------------------------- the text


def file_texts(path: Path, tokenizer, config: EmbedDistillConfig, *, dev: int, seed: int,
               limit: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The non-empty lines of ``path``, shuffled under ``seed``, tokenised (cut at
    ``max_tokens``, and at ``limit`` tokens in all) and padded: ``dev`` of them held out,
    the rest to train on."""
    if not path.is_file():
        raise ConfigError("is missing; give a text file, one text per line", source=str(path))
    lines = [t.strip() for t in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [t for t in lines if t]
    if len(lines) < dev + config.batch_size:
        raise ConfigError(f"holds {len(lines)} texts; embedding distillation needs at least "
                          f"{dev + config.batch_size} (the dev texts and one batch)",
                          source=str(path))
    random.Random(seed).shuffle(lines)
    batch = tokenizer(lines, padding="max_length", truncation=True,
                      max_length=min(config.max_tokens + 2, limit), return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    return (ids[dev:], mask[dev:]), (ids[:dev], mask[:dev])


# ----------------------------------------------------------------------------- the trainer


def source_dir(run: RunDir, model_id: str, config: EmbedDistillConfig) -> Path:
    """The weights embedding distillation starts from: stage one's model or the
    extracted one (``config.start``); for the static student, its table as made from
    the teacher (``embed/static/init/``)."""
    if model_id == STATIC:
        folder = run.embed_dir(STATIC) / "init"
        if not (folder / "config.json").is_file():
            raise ConfigError("is missing; make the static student first "
                              f"(`nasbert distill-embeddings {run.path} --static`)",
                              source=str(folder))
        return folder
    if config.start == "extracted":
        return run.subnet_dir(model_id)
    folder = run.distilled_dir(model_id)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"has no stage-one model; run `nasbert distill {run.path} --subnet "
                          f"{model_id}` first, or start from the extracted weights "
                          "(--start extracted)", source=str(folder))
    return folder


class EmbeddingTrainer(StudentTrainer):
    """Embedding distillation of one model into ``embed/<model_id>/model/``."""

    desc = "embeddings"

    def __init__(self, run: RunDir, model_id: str, config: EmbedDistillConfig, worker: Worker,
                 *, progress: bool = True, on_ray: bool = False,
                 callbacks: Sequence[StepCallback] = ()):
        super().__init__(worker, progress=progress, on_ray=on_ray, callbacks=callbacks)
        self.run_dir, self.model_id, self.config = run, model_id, config
        self.desc = f"embeddings {model_id}"
        folder = run.embed_dir(model_id)
        self.checkpoints, self.ray_storage = folder / "checkpoints", folder / "ray"
        self.tensorboard = run.tensorboard / "embed" / model_id
        self.source = source_dir(run, model_id, config)
        recipe = run.recipe()
        self.pooling = Pooling.of(run.teacher_name())
        torch.manual_seed(config.seed)
        self.teacher = Teacher.load(recipe.teacher, SearchSpace.from_yaml(recipe.space),
                                    device=worker.device)
        self.tokenizer = run.tokenizer()
        dev = config.dev_batches * config.batch_size
        if config.texts:
            (self.data, self.mask), (dev_ids, dev_mask) = file_texts(
                Path(config.texts), self.tokenizer, config, dev=dev, seed=config.seed,
                limit=min(self.pooling.max_seq_length,
                          int(self.teacher.config.max_position_embeddings)))
        else:
            corpus = run.corpus()
            pad = self.tokenizer.pad_token_id or 0
            self.data, self.mask = spans(corpus.train, config.min_tokens, config.max_tokens,
                                         seed=config.seed, pad_id=pad)
            dev_ids, dev_mask = spans(corpus.dev[:dev], config.min_tokens, config.max_tokens,
                                      seed=config.seed + 1, pad_id=pad)
        self._dev = [(dev_ids[i:i + config.batch_size], dev_mask[i:i + config.batch_size])
                     for i in range(0, len(dev_ids), config.batch_size)]
        self.model = load_student(self.source, eager=False).to(worker.device).train()
        self.schedule = Schedule(config.batch_size, config.steps,
                                 max(1, math.ceil(len(self.data) / config.batch_size)),
                                 config.seed, config.grad_clip, config.log_every,
                                 config.checkpoint_every, config.keep_checkpoints, config.dtype)
        self.optimize(self.model.parameters(), config.steps)
        self._targets = self._teacher_targets()

    @torch.no_grad()
    def teacher_embeddings(self, ids: Tensor, mask: Tensor) -> Tensor:
        return pool(self.teacher.model(input_ids=ids, attention_mask=mask).last_hidden_state,
                    mask, self.pooling, normalize=False).float()

    def _teacher_targets(self) -> tuple[Tensor, Tensor]:
        """The teacher's embeddings of every text this worker trains on, computed once
        and kept under ``embed/teacher/`` for every model of the run that trains on the
        same texts in the same order (the teacher is frozen and in eval mode, so they are
        the same each time; teacher forwards were most of a step's time): a row position
        per text (-1: unused) and the rows."""
        from nasbert.io import atomic_torch_save

        c = self.config
        used = torch.cat([self.batch_indices(step) for step in range(c.steps)]).unique()
        key = digest([embedding_texts_key(self.run_dir, c), self.run_dir.recipe().teacher,
                      dataclasses.asdict(self.pooling), self.worker.rank, self.worker.world,
                      {k: getattr(c, k) for k in ("steps", "batch_size", "seed", "min_tokens",
                                                  "max_tokens", "texts")}])
        path = self.run_dir.embed / "teacher" / f"{key}.pt"
        if path.is_file():
            rows = torch.load(path, weights_only=True)
        else:
            rows = torch.cat([
                self.teacher_embeddings(*self._trimmed(used[i:i + 256]))
                for i in range(0, len(used), 256)]).cpu()
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_torch_save(path, rows)
        position = torch.full((len(self.data),), -1, dtype=torch.long)
        position[used] = torch.arange(len(used))
        return position, rows

    def _trimmed(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The texts ``idx`` on the worker's device, cut to the longest of them."""
        ids, mask = self.data[idx], self.mask[idx]
        keep = int(mask.sum(1).max())  # no all-padding columns
        return ids[:, :keep].to(self.worker.device), mask[:, :keep].to(self.worker.device)

    def losses(self, ids: Tensor, mask: Tensor, t: Tensor | None = None
               ) -> tuple[Tensor, dict[str, float]]:
        """The loss and its terms on a batch, against the teacher's embeddings ``t`` of
        it (computed here when not given)."""
        c = self.config
        if t is None:
            t = self.teacher_embeddings(ids, mask)
        with self.precision():
            s = pool(self.model(input_ids=ids, attention_mask=mask).last_hidden_state,
                     mask, self.pooling, normalize=False).float()
        parts: dict[str, Tensor] = {
            "mse": F.mse_loss(s, t), "cosine": (1 - F.cosine_similarity(s, t)).mean()}
        if c.contrastive_weight > 0:
            sn, tn = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
            parts["contrastive"] = F.kl_div(
                F.log_softmax(sn @ sn.T / c.temperature, dim=-1),
                F.log_softmax(tn @ tn.T / c.temperature, dim=-1),
                log_target=True, reduction="batchmean")
        weights = {"mse": c.mse_weight, "cosine": c.cosine_weight,
                   "contrastive": c.contrastive_weight}
        total = sum(weights[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def train_step(self) -> dict[str, float]:
        idx = self.batch_indices(self.step)
        position, rows = self._targets
        total, parts = self.losses(*self._trimmed(idx),
                                   rows[position[idx]].to(self.worker.device))
        grad_norm = self.optimizer_step(total, self.params)
        out = self.mean_over_workers({**parts, "loss": float(total.detach())})
        out["grad_norm"] = grad_norm
        return out

    @torch.no_grad()
    def dev_losses(self) -> dict[str, float]:
        """The loss, its terms and the mean cosine to the teacher's embeddings on the
        held-out texts."""
        self.model.eval()
        sums: dict[str, float] = {}
        for ids, mask in self._dev:
            ids, mask = ids.to(self.worker.device), mask.to(self.worker.device)
            total, parts = self.losses(ids, mask)
            parts["cosine_to_teacher"] = 1 - parts["cosine"]
            for k, v in {**parts, "loss": float(total)}.items():
                sums[k] = sums.get(k, 0.0) + v / len(self._dev)
        self.model.train()
        return sums

    def finish(self, first: dict | None, last: dict, writer) -> dict:
        """Write ``embed/<id>/model/`` (the model, the teacher's tokenizer and pooling,
        the card files and ``embedding.json``), then drop the checkpoints."""
        record = {
            "id": self.model_id, "key": embedding_key(self.run_dir, self.model_id, self.config),
            "source": str(self.source), "start": self.config.start, "steps": self.step,
            "texts": self.config.texts or "corpus spans", "train_texts": len(self.data),
            "pooling": dataclasses.asdict(self.pooling), "config": dataclasses.asdict(self.config),
            "dev_start": self.start_losses, "dev_end": self.dev_losses(),
            "first_losses": first, "last_losses": last, "workers": self.worker.world,
            "seconds": self.seconds(), "teacher": self.teacher.describe(), **provenance()}

        def sentence_transformers(folder: Path) -> None:
            self.tokenizer.save_pretrained(folder)
            self.pooling.write(folder, int(self.model.config.hidden_size))

        self.save_result(self.run_dir.embedded_dir(self.model_id), record, RECORD,
                         also=sentence_transformers)
        return record


def embedding_texts_key(run: RunDir, config: EmbedDistillConfig) -> str:
    """What the texts depend on: the corpus, or the file's content."""
    return file_digest(Path(config.texts)) if config.texts else run.corpus_key()


def embedding_key(run: RunDir, model_id: str, config: EmbedDistillConfig) -> str:
    """What an embedding-distilled model depends on: the weights it starts from, the
    text (the corpus, or the file's content), the teacher and the configuration."""
    return digest([weights_digest(source_dir(run, model_id, config)),
                   embedding_texts_key(run, config), run.recipe().teacher, config.key()])


def embedded(run: RunDir | str | Path, model_id: str, config: EmbedDistillConfig
             ) -> dict | None:
    """The record of ``embed/<id>/model`` when it was made from the current weights and
    text with ``config``, else None."""
    run = RunDir.of(run)
    return cached_record(run.embedded_dir(model_id) / RECORD,
                         embedding_key(run, model_id, config))
