"""The recipe of a run: one frozen dataclass per concern, parsed once.

A recipe (YAML; the shipped ones are in ``supernet/``) names the search space,
the teacher, the corpus, the training schedule, the shrinking schedule and the scaling.
``run.yaml`` stores it resolved. The search space is a shipped name (``minilm_l6``) or
a path relative to the recipe file (a recipe and its space travel together); corpus
sources and teacher folders are data, relative to the working directory, like every
other path given on the command line.

>>> recipe = load_recipe("quickstart", ["train.max_steps=50"])
>>> recipe.train.max_steps, recipe.space.name
(50, 'minilm_l6.yaml')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from nasbert.data.corpus import CorpusConfig
from nasbert.errors import ConfigError
from nasbert.resources import DEFAULT_TEACHER, shipped
from nasbert.schema import apply_overrides, check, load_yaml, parse, to_dict


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Block-wise distillation: every block (and the embedding) trains in the same step
    on an independently sampled path, with MSE to the teacher block's output."""

    batch_size: int = 32  # global: split across workers
    max_steps: int = 1000
    lr: float = 5e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    betas: tuple[float, ...] = (0.9, 0.999)
    grad_clip: float = 1.0
    dropout: float = 0.1
    sampling: Literal["uniform", "sandwich"] = "uniform"  # sandwich adds largest + smallest
    # how the supernet starts: the teacher's weights with heads and neurons ordered by
    # Fisher or magnitude importance (so that pruned ops and narrow slices keep the most
    # important), the teacher's weights as they are ("prefix"), or random
    init: Literal["fisher", "magnitude", "prefix", "random"] = "fisher"
    init_sequences: int = 128  # training sequences importance and bases are fitted on
    # narrower hidden sizes: on the principal directions of the teacher's hidden states
    # at the block (a linear autoencoder), or on its first h coordinates
    basis: Literal["pca", "prefix"] = "pca"
    cache_teacher_gb: float = 2.0  # teacher outputs kept in memory across epochs (0: off)
    dtype: Literal["float32", "bfloat16"] = "float32"
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10

    def __post_init__(self) -> None:
        check(self.batch_size > 0, "must be positive", field="batch_size")
        check(self.max_steps > 0, "must be positive", field="max_steps")
        check(self.warmup_steps >= 0, "must be 0 or more", field="warmup_steps")
        check(self.lr > 0, "must be positive", field="lr")
        check(0 <= self.dropout < 1, "must be in [0, 1)", field="dropout")
        check(self.keep_checkpoints > 0, "must be positive", field="keep_checkpoints")
        check(self.log_every > 0, "must be positive", field="log_every")
        check(len(self.betas) == 2, "needs two values", field="betas")
        check(self.checkpoint_every > 0, "must be positive", field="checkpoint_every")
        check(self.init_sequences > 0, "must be positive", field="init_sequences")


@dataclasses.dataclass(frozen=True)
class ShrinkConfig:
    """Progressive search-space shrinking (NAS-BERT section 3.2.2)."""

    enabled: bool = True
    bins: int = 10  # B: bins per block, by size
    spacing: Literal["linear", "log"] = "linear"  # equal-width bins (paper) or equal-ratio
    by: Literal["params", "latency", "auto"] = "auto"  # auto: latency once a table exists
    warmup_epochs: int = 3  # W: epochs before the first shrink
    epoch_steps: int | None = None  # steps per epoch (default: one pass over the data)
    sample_per_bin: int = 2000  # E: paths sampled and scored per bin and epoch
    keep_per_bin: int = 10  # m: paths kept per bin
    dev_batches: int = 5  # dev batches a path is scored on
    candidates: int | None = None  # start each block from this many sampled paths (all: None)

    def __post_init__(self) -> None:
        check(self.bins > 0, "must be positive", field="bins")
        check(self.keep_per_bin > 0, "must be positive", field="keep_per_bin")
        check(self.sample_per_bin >= 2, "must be at least 2", field="sample_per_bin")
        check(self.dev_batches > 0, "must be positive", field="dev_batches")


@dataclasses.dataclass(frozen=True)
class ScalingConfig:
    workers: int = 1  # > 1: Ray Train, one process per worker
    use_gpu: bool = False
    address: str | None = None  # an existing Ray cluster ("auto", "ray://host:10001")
    cpus_per_worker: int = 1
    max_failures: int = 3  # worker restarts Ray allows before giving up

    def __post_init__(self) -> None:
        check(self.workers > 0, "must be positive", field="workers")
        check(self.cpus_per_worker > 0, "must be positive", field="cpus_per_worker")
        check(self.max_failures >= 0, "must be 0 or more", field="max_failures")


@dataclasses.dataclass(frozen=True)
class Recipe:
    space: Path
    name: str = "supernet"
    teacher: str = DEFAULT_TEACHER
    corpus: CorpusConfig = CorpusConfig()
    train: TrainConfig = TrainConfig()
    shrink: ShrinkConfig = ShrinkConfig()
    scaling: ScalingConfig = ScalingConfig()

    def to_dict(self) -> dict:
        return to_dict(self)


def _resolve_paths(data: dict, recipe_dir: Path) -> None:
    """Absolute paths in place: the space against the recipe's folder (a shipped name
    stays a name until :func:`~nasbert.resources.shipped` finds it), corpus folders and
    teacher folders against the working directory."""
    space = data.get("space")
    if isinstance(space, str):
        found = shipped("spaces", recipe_dir / space if Path(space).suffix else space)
        data["space"] = str(found.resolve())
    corpus = data.get("corpus")
    if isinstance(corpus, dict):
        sources = corpus.get("sources")
        if isinstance(sources, str):
            sources = [sources]
        if isinstance(sources, list):
            corpus["sources"] = [_resolve_source(s) for s in sources]
    teacher = data.get("teacher")
    if isinstance(teacher, str) and teacher.startswith((".", "/", "~")):
        data["teacher"] = str(Path(teacher).expanduser().resolve())


def _resolve_source(source: object) -> object:
    if not isinstance(source, str) or source == "bbc" or source.startswith("hf:"):
        return source
    return str(Path(source).expanduser().resolve())


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Parse a recipe (a YAML path, or a shipped recipe by name: ``quickstart``,
    ``minilm_wiki``, ``bert_base_paper``), apply ``section.key=value`` overrides, check
    every field."""
    path = shipped("recipes", path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of sections (space, teacher, corpus, train, "
                          "shrink, scaling)", source=str(path))
    apply_overrides(data, list(overrides))
    _resolve_paths(data, path.resolve().parent)
    # a bad value may come from the file or from --set: the message names both
    source = str(path) + (f" with --set {' '.join(overrides)}" if overrides else "")
    return parse(Recipe, data, source=source)


def updated(recipe: Recipe, changes: Mapping[str, object]) -> Recipe:
    """``recipe`` with typed ``section.field`` changes (e.g. ``{"train.max_steps": 50}``,
    from the command line's flags); ``None`` values are ignored; every check runs again."""
    for key, value in changes.items():
        if value is None:
            continue
        section, _, name = key.partition(".")
        part = getattr(recipe, section)
        try:
            part = dataclasses.replace(part, **{name: value})
        except ConfigError as e:
            raise ConfigError(e.message, source="command line",
                              field=f"{section}.{e.field}") from None
        recipe = dataclasses.replace(recipe, **{section: part})
    return recipe


def recipe_from_dict(data: dict, *, source: str) -> Recipe:
    """A recipe from its resolved form (as ``run.yaml`` stores it)."""
    return parse(Recipe, data, source=source)
