"""Length-adaptive inference (Kim & Cho, *Length-Adaptive Transformer*, 2021; the LAT of
QuaLA-MiniLM): a fine-tuned subnet learns once to run with fewer tokens after each
block, then any length configuration is chosen at inference without retraining.

* **The model** drops tokens between blocks (:meth:`~nasbert.model.NasBertModel.forward`,
  ``length_config``: one retention in (0, 1] per block), keeping those that received the
  most attention in the last attention layer at or before the block; [CLS] always.
* **LengthDrop** (:func:`train_length_adaptive`): fine-tuning goes on, through the one
  fine-tuning loop, with LengthDrop's sandwich at every step: the full-length model
  learns the task and the teacher's logits as before, and the smallest configuration
  (every block keeping ``1 - max_drop``) and ``sub_models - 1`` random ones (each block
  ``U(1 - max_drop, 1)``) learn the full-length model's logits (in-place distillation).
  A seeded slice of the training set is held out of it.
* **The search** (:func:`search_lengths`): NSGA-II (Optuna, SQLite, resumable) over
  per-block retentions, maximising the task metric on the held-out slice (never dev)
  and minimising latency, timed side by side with the full-length model in one process
  (a ratio, which a slow spell of the machine cancels out of). The Pareto set is then
  measured in one clean process at every precision (float32, int8) and evaluated on
  dev: the candidates ``nasbert query --task`` chooses from.

Run folder: ``finetune/<task>/<id>-lat/`` holds the LengthDrop model (``model/``),
``metrics.json``, the study (``lengths.db``) and the candidates (``lengths.json``).

>>> train_length_adaptive(run, data, "latency-8ms", schedule)        # doctest: +SKIP
>>> search_lengths(run, data, "latency-8ms", schedule)              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from nasbert.compress.forms import FormsRecord, MeasuredForm
from nasbert.data.tasks import TaskData
from nasbert.digest import digest
from nasbert.errors import ConfigError
from nasbert.families import family_of
from nasbert.families.base import pick
from nasbert.finetune.config import FinetuneConfig
from nasbert.finetune.distill import CHECKPOINT_SECONDS, seconds_before, train_classifier
from nasbert.finetune.record import FinetunedRecord
from nasbert.finetune.stage import (
    WorkDir,
    cached_result,
    distillation_set,
    save_result,
)
from nasbert.latency.measure import (
    PRECISIONS,
    Protocol,
    Reference,
    device_id,
    fingerprint,
    measure_precisions,
    prepare,
)
from nasbert.latency.stage import reference
from nasbert.ops import Attention
from nasbert.provenance import provenance
from nasbert.run import RunDir, Variant
from nasbert.schema import check


@dataclasses.dataclass(frozen=True)
class LengthDropConfig:
    """LengthDrop training of a fine-tuned subnet (LAT's defaults: ``max_drop`` 0.2, the
    smallest and one random sub-model a step)."""

    max_drop: float = 0.2  # a block drops a share of its tokens drawn from [0, max_drop]
    sub_models: int = 2  # shorter configurations a step: the smallest, then random ones
    epochs: float = 1.0
    lr: float = 5e-5
    heldout: float = 0.1  # of the training set, kept out to score length configurations
    max_heldout: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        check(0 < self.max_drop < 1, "must be in (0, 1)", field="max_drop")
        check(self.sub_models >= 1, "must be at least 1", field="sub_models")
        check(self.epochs > 0, "must be positive", field="epochs")
        check(0 < self.heldout < 0.5, "must be in (0, 0.5)", field="heldout")


@dataclasses.dataclass(frozen=True)
class LengthSearchConfig:
    """The search over length configurations of a LengthDrop model."""

    trials: int = 60  # length configurations tried
    grid: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # retentions a block may take
    rounds: int = 5  # timings per trial, interleaved with the full-length model
    keep: int = 8  # Pareto members measured cleanly and evaluated on dev
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.trials > 0, "must be positive", field="trials")
        check(all(0 < r <= 1 for r in self.grid) and 1.0 in self.grid,
              "must hold retentions in (0, 1], 1.0 among them", field="grid")
        check(self.keep > 0, "must be positive", field="keep")


# ----------------------------------------------------------------------------- configurations


def droppable(model: nn.Module) -> list[bool]:
    """Per block of a NAS-BERT encoder, whether it may drop tokens: there must be an
    attention layer at or before it (tokens are kept by the attention they receive)."""
    seen, out = False, []
    for block in model.base_model.blocks:
        seen = seen or any(isinstance(layer, Attention) for layer in block.layers)
        out.append(seen)
    if not any(out):
        raise ConfigError("has no attention layer, so no block can choose which tokens to keep; "
                          "length-adaptive inference needs one", source=model.config.arch)
    return out


def sandwich(blocks: Sequence[bool], config: LengthDropConfig) -> Callable[[], list]:
    """LengthDrop's sub-models for each step: the smallest configuration, then random
    ones, each block that may drop keeping ``U(1 - max_drop, 1)`` of its tokens."""
    rng = random.Random(config.seed)
    low = 1.0 - config.max_drop

    def draw() -> list[tuple[float, ...]]:
        configs = [tuple(low if d else 1.0 for d in blocks)]
        for _ in range(config.sub_models - 1):
            configs.append(tuple(rng.uniform(low, 1.0) if d else 1.0 for d in blocks))
        return configs
    return draw


def tokens_kept(config: Sequence[float], n: int = 128) -> list[int]:
    """The sequence length after each block for an input of ``n`` tokens."""
    out = []
    for r in config:
        n = max(1, math.ceil(n * r))
        out.append(n)
    return out


# ----------------------------------------------------------------------------- LengthDrop


def _split(n: int, config: LengthDropConfig) -> tuple[list[int], list[int]]:
    """Seeded (train, held-out) indices of a training set of ``n``."""
    order = list(range(n))
    random.Random(config.seed).shuffle(order)
    held = min(config.max_heldout, max(1, round(n * config.heldout)))
    return sorted(order[held:]), sorted(order[:held])


def lat_dir(run: RunDir, task: str, model_id: str) -> Path:
    return run.finetune_dir(task, Variant(model_id, form="length-adaptive"))


def _sets(run: RunDir, data: TaskData, schedule: FinetuneConfig, config: LengthDropConfig):
    """The schedule's training examples split seeded: (what LengthDrop trains on, the
    held-out ones encoded, the held-out examples the search scores), each example's
    items (a question's windows) on its side."""
    family = family_of(data.spec.name)
    full, examples = distillation_set(run, data, schedule)
    train, held = _split(len(examples), config)
    return (torch.utils.data.Subset(full, family.items(full, train)),
            torch.utils.data.Subset(full, family.items(full, held)), pick(examples, held))


def train_length_adaptive(run: RunDir | str | Path, data: TaskData, model_id: str,
                          schedule: FinetuneConfig, config: LengthDropConfig | None = None, *,
                          progress: bool = True) -> dict:
    """LengthDrop training of ``finetune/<task>/<model_id>/model`` (fine-tuned with
    ``schedule``, whose teacher logits it reuses) into ``finetune/<task>/<id>-lat/``;
    returns its record (dev metrics at full length). A no-op when done with the same
    inputs."""
    run = RunDir.of(run)
    config = config or LengthDropConfig()
    task = data.spec.name
    source = run.finetune_dir(task, model_id)
    student = FinetunedRecord.load(source)
    if not student or not (source / "model").is_dir():
        raise ConfigError(f"holds no fine-tuned model; run `nasbert finetune {run} --task "
                          f"{task} --subnet {model_id}` first", source=str(source))
    folder = lat_dir(run, task, model_id)
    # the schedule too: its batch size, loss weights and lengths shape the training
    key = digest([student.key, dataclasses.asdict(config), dataclasses.asdict(schedule)])
    cached = cached_result(folder, key)
    if cached:
        return cached
    family = family_of(task)
    model = family.model(source / "model", data, schedule, schedule.seed)
    if model.config.model_type != "nasbert":
        raise ConfigError("is not a NAS-BERT model; length-adaptive inference is built into "
                          "the extracted subnets (nasbert model type)", source=str(source))
    blocks = droppable(model)
    train, held, _ = _sets(run, data, schedule, config)
    start = time.time()
    with WorkDir(folder, key) as work:  # a killed training resumes; kept until written
        history = train_classifier(
            model, run.tokenizer(), data, schedule, train_set=train, lr=config.lr,
            epochs=config.epochs, batch_size=schedule.batch_size, alpha=schedule.alpha,
            workdir=work, progress=f"{task} {model_id} (LengthDrop)" if progress else None,
            seed=config.seed, length_configs=sandwich(blocks, config),
            # scored after each epoch on the held-out slice where the Trainer can score
            # it (else the family scores dev): never what the search reads
            eval_set=held if family.trainer_metrics else None,
            checkpoint_seconds=CHECKPOINT_SECONDS)
        metrics, preds = family.evaluate(model, run.tokenizer(), data, schedule)
        record = FinetunedRecord(model_id, key, task, dataclasses.asdict(config), metrics, extra={
            "student_key": student.key, "source": str(source), "arch": model.config.arch,
            "droppable": blocks, "train_examples": len(train), "heldout_examples": len(held),
            "schedule": dataclasses.asdict(schedule),
            "seconds": round(time.time() - start + seconds_before(history), 1),
            "history": history, **provenance()}).to_dict()
        save_result(folder, model, run.tokenizer(), record, preds)
    return record


# ----------------------------------------------------------------------------- search


class _Configured(nn.Module):
    """A task model that always runs with one length configuration."""

    def __init__(self, model: nn.Module, length_config: Sequence[float] | None):
        super().__init__()
        self.model, self.length_config = model, length_config
        self.config = model.config

    def forward(self, **batch):
        return self.model(**batch, length_config=self.length_config)


def _ratio(model: nn.Module, config: Sequence[float], protocol: Protocol, rounds: int) -> float:
    """Latency of ``config`` over the full length's, timed side by side in this process
    (median of ``rounds`` interleaved pairs)."""
    from nasbert.latency.measure import time_ms

    p = dataclasses.replace(protocol.resolved(), warmup=2, repeats=5)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, model.config.vocab_size, (p.batch, p.seq), generator=g)
    mask = torch.ones_like(ids)
    full = lambda: model(ids, attention_mask=mask)  # noqa: E731
    short = lambda: model(ids, attention_mask=mask, length_config=config)  # noqa: E731
    return statistics.median(time_ms(short, p) / time_ms(full, p) for _ in range(rounds))


def search_lengths(run: RunDir | str | Path, data: TaskData, model_id: str,
                   schedule: FinetuneConfig, config: LengthSearchConfig | None = None, *,
                   drop: LengthDropConfig | None = None, protocol: Protocol | None = None,
                   progress: bool = True) -> list[MeasuredForm]:
    """Search the LengthDrop model of ``model_id`` for length configurations (see the
    module's docstring); writes and returns the candidates of ``lengths.json``: each
    Pareto member (and the full length) at every precision, with its held-out and dev
    metrics and its latency measured cleanly under ``protocol`` (batch and sequence)."""
    import optuna

    run = RunDir.of(run)
    config, drop = config or LengthSearchConfig(), drop or LengthDropConfig()
    protocol = protocol or Protocol()
    task = data.spec.name
    folder = lat_dir(run, task, model_id)
    record = train_length_adaptive(run, data, model_id, schedule, drop, progress=progress)
    key = digest([record["key"], dataclasses.asdict(config), dataclasses.asdict(protocol),
                  device_id(fingerprint(protocol))])
    out = folder / "lengths.json"
    stored = FormsRecord.load(out)
    if stored is not None and stored.key == key:
        return stored.candidates
    family = family_of(task)
    model = family.model(folder / "model", data, schedule, schedule.seed).eval()
    tokenizer = run.tokenizer()
    blocks = record["droppable"]
    _, _, held = _sets(run, data, schedule, drop)
    metric = data.spec.metric

    def score(m: nn.Module, length: Sequence[float]) -> dict[str, float]:
        return family.score(_Configured(m, length), tokenizer, data, schedule, held)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=key, storage=f"sqlite:///{folder / 'lengths.db'}", load_if_exists=True,
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.NSGAIISampler(seed=config.seed))
    grid = sorted(set(config.grid))

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        length = tuple(trial.suggest_categorical(f"block{i}", grid) if d else 1.0
                       for i, d in enumerate(blocks))
        with torch.inference_mode():
            value = score(model, length)[metric]
            ratio = _ratio(model, length, protocol, config.rounds)
        trial.set_user_attr("length_config", list(length))
        return value, ratio

    complete = optuna.trial.TrialState.COMPLETE
    if not any(t.state == complete for t in study.trials):
        study.enqueue_trial({f"block{i}": 1.0 for i, d in enumerate(blocks) if d})
    done = sum(t.state == complete for t in study.trials)
    if config.trials > done:
        study.optimize(objective, n_trials=config.trials - done,
                       show_progress_bar=progress)
    front = sorted(study.best_trials, key=lambda t: t.values[1])
    step = max(1, math.ceil(len(front) / config.keep))
    chosen = [tuple(t.user_attrs["length_config"]) for t in front[::step]][:config.keep]
    full = tuple(1.0 for _ in blocks)
    chosen = list(dict.fromkeys([full, *chosen]))  # the full length is always a candidate

    candidates = _measure_candidates(model, tokenizer, data, schedule, chosen, score,
                                     protocol, reference(run, protocol), progress=progress)
    FormsRecord(key, model_id, task, dataclasses.asdict(protocol), candidates,
                provenance=provenance()).save(out)
    return candidates


def _measure_candidates(model: nn.Module, tokenizer, data: TaskData, schedule: FinetuneConfig,
                        chosen: list[tuple[float, ...]],
                        score: Callable[[nn.Module, Sequence[float]], dict[str, float]],
                        protocol: Protocol, ref: Reference | None, *,
                        progress: bool) -> list[MeasuredForm]:
    """Every chosen configuration at every precision: metrics on the held-out slice
    (``score``) and on dev, and latency, every configuration and precision side by side
    in one clean process."""
    import copy

    encoders = []
    for length in chosen:  # saved with its configuration, which forward then applies
        encoder = copy.deepcopy(model.base_model)
        encoder.config.length_config = list(length)
        encoders.append(encoder)
    times = measure_precisions(encoders, protocol, reference=ref)
    family = family_of(data.spec.name)
    out = []
    for precision in PRECISIONS:
        p = dataclasses.replace(protocol, dtype=precision)
        runnable = prepare(model, p)
        for length, latency in zip(chosen, times[precision]):
            with torch.inference_mode():
                heldout = score(runnable, length)
                dev, _ = family.evaluate(_Configured(runnable, length), tokenizer, data,
                                         schedule)
            out.append(MeasuredForm(precision, dev, latency, device_id(fingerprint(p)),
                                    length_config=tuple(length),
                                    tokens_kept=tokens_kept(length, protocol.seq),
                                    heldout=heldout))
            if progress:
                print(f"  {precision:<8} {list(length)}  held-out "
                      f"{heldout[data.spec.metric]:.4f}  {latency:.2f} ms", flush=True)
    return out
