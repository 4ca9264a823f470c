"""The seam between a task family and the stages (:class:`Family`), and what the
families share: batching by length, padding, prediction in batches."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor, nn

    from nasbert.finetune.config import FinetuneConfig

IGNORE = -100  # a label no loss or score reads (a sub-token, a teacher-labelled example)
# the tasks of the families other than sentence-level ones
FAMILY_TASKS = {"squad": "qa", "conll2003": "ner"}


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """What the stages read of a task of a family beside its data: its name, metrics
    (the first is the main one) and dev splits. :class:`~nasbert.data.tasks.TaskSpec`
    is the sentence-level family's."""

    name: str
    metrics: tuple[str, ...]
    dev_splits: tuple[str, ...] = ("dev",)
    is_regression: bool = False

    @property
    def metric(self) -> str:
        return self.metrics[0]


# the specs of the tasks of the families other than sentence-level ones
SPECS = {"squad": FamilySpec("squad", ("f1", "exact_match")),
         "conll2003": FamilySpec("conll2003", ("f1", "precision", "recall"))}


class Family:
    """The seam between a kind of task and the stages. Data objects have ``name`` (the
    folder their models lie in, ``finetune/<name>/``), ``spec`` (a
    :class:`FamilySpec` or :class:`~nasbert.data.tasks.TaskSpec`), ``source`` (where
    they were read from, with a digest) and ``split(name)``."""

    name: str = ""
    # the batch keys the task loss reads: left out of what hidden-state distillation
    # feeds the encoder
    label_names: tuple[str, ...] = ("labels",)
    # the latency protocol's fields where the family's models are timed otherwise than
    # the default (nasbert.latency.protocol.Protocol)
    timing: dict = {}

    def load(self, task: str, data_dir: str | Path | None = None, *, seed: int = 0,
             fold: int | None = None, folds: int = 5) -> Any:
        raise NotImplementedError

    def check(self, data, config: FinetuneConfig) -> None:
        """Refuse, with one line, a schedule this family cannot train."""

    def model(self, path: str | Path, data, config: FinetuneConfig, seed: int, *,
              pooling=None, examples=None) -> nn.Module:
        """The model at ``path`` with this family's head (a fresh one, unless ``path``
        holds a fine-tuned one); ``examples``: the training examples it will learn."""
        raise NotImplementedError

    def examples(self, data, config: FinetuneConfig) -> Sequence:
        """The training examples a schedule uses (its seeded subset)."""
        return subset(data.split("train"), config.max_train_examples, config.seed)

    def dataset(self, tokenizer, data, config: FinetuneConfig, examples: Sequence, *,
                train: bool = True, teacher: Sequence | None = None):
        """``examples`` encoded as the model reads them, with what the task loss needs
        (``train``) and ``teacher``'s outputs beside each."""
        raise NotImplementedError

    def collate(self, items: list[dict], pad_id: int = 0) -> dict[str, Tensor]:
        raise NotImplementedError

    def predict(self, model: nn.Module, dataset, *, progress: str | None = None) -> Any:
        """``model``'s outputs on each item of ``dataset``, in order: what a teacher's
        cache holds and :meth:`distillation_loss` reads back as ``teacher_logits``."""
        raise NotImplementedError

    def distillation_loss(self, out, batch: dict[str, Tensor], temperature: float,
                          model: nn.Module) -> Tensor:
        """The student's output ``out`` against the teacher's, ``batch["teacher_logits"]``."""
        raise NotImplementedError

    def targets(self, out) -> Tensor:
        """A model's output (detached) as :meth:`predict` gives it batched: what
        :meth:`distillation_loss` reads as ``teacher_logits``, so that a model can teach
        (LengthDrop's shorter configurations learn from the full-length model)."""
        raise NotImplementedError

    def score(self, model: nn.Module, tokenizer, data, config: FinetuneConfig,
              examples: Sequence) -> dict[str, float]:
        """Metrics (each in [0, 1]) of ``model`` on ``examples`` of the task (e.g. a
        held-out slice of its training examples)."""
        raise NotImplementedError

    def items(self, dataset, indices: Sequence[int]) -> list[int]:
        """The items of :meth:`dataset` that encode the examples at ``indices`` (one
        each, unless a family cuts an example into several)."""
        return list(indices)

    def evaluate(self, model: nn.Module, tokenizer, data, config: FinetuneConfig, *,
                 splits: Sequence[str] | None = None) -> tuple[dict[str, dict], dict[str, list]]:
        """Metrics (each in [0, 1]) and predictions on each dev split (default: all)."""
        raise NotImplementedError

    # a family whose metric the Trainer's own evaluation loop cannot compute (it needs
    # post-processing over the whole split) evaluates through :meth:`evaluate`
    trainer_metrics: bool = False

    def trainer_eval(self, tokenizer, data, config: FinetuneConfig):
        """The dev set and ``compute_metrics`` of the Trainer's evaluation (where
        :attr:`trainer_metrics`)."""
        raise NotImplementedError


def refuse_fold(task: str, fold: int | None) -> None:
    """Folds of the training set are for a task without a dev split; one line if given."""
    if fold is not None:
        from nasbert.errors import ConfigError

        raise ConfigError("has a dev split to score on; leave --fold out", source=f"task {task}")


def refuse_pairs(task: str, config: FinetuneConfig, reads: str) -> None:
    """One line for what only sentence-level tasks take: the bi-encoder formulation and
    transfer data."""
    if config.formulation != "cross" or config.augment.enabled:
        from nasbert.errors import ConfigError

        raise ConfigError(f"{reads}, with no transfer data; leave --formulation and augment "
                          "out", source=f"task {task}")


def load_head(auto_class: str, path: str | Path, seed: int, **kwargs) -> nn.Module:
    """The model at ``path`` through transformers' ``auto_class`` (e.g.
    ``"AutoModelForQuestionAnswering"``): its head as saved, or a new one initialised
    under ``seed``; one line naming the folder when it cannot be loaded."""
    import torch
    import transformers

    import nasbert  # noqa: F401 - registers the nasbert model type
    from nasbert.errors import ConfigError
    from nasbert.hf.quiet import quiet_transformers

    torch.manual_seed(seed)  # a new head's initialisation
    try:
        with quiet_transformers():  # "newly initialised head" is what we want
            return getattr(transformers, auto_class).from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as e:
        raise ConfigError(f"could not be loaded ({str(e).splitlines()[0][:160]}); give a model "
                          "folder (config.json + weights)", source=str(path)) from None


def pick(items: Sequence, indices: Sequence[int]) -> Sequence:
    """The examples at ``indices``, of the same kind as ``items``."""
    if hasattr(items, "take"):
        return items.take(indices)
    return [items[i] for i in indices]


def subset(items: Sequence, n: int | None, seed: int = 0) -> Sequence:
    """A seeded random ``n`` of ``items`` in their order (all if ``n`` is None or not
    smaller)."""
    if hasattr(items, "subset"):
        return items.subset(n, seed)
    if n is None or n >= len(items):
        return items
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), n))]


def by_length(lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Indices in batches of similar lengths (the shortest first), so that padding to
    each batch's longest pads little when predicting."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def pad(rows: list[list[int]], fill: int) -> list[list[int]]:
    """Rows padded with ``fill`` to the longest."""
    n = max(len(r) for r in rows)
    return [list(r) + [fill] * (n - len(r)) for r in rows]


def predict_rows(model, features: dict[str, list], collate: Callable, logits: Callable, *,
                 batch_size: int = 64, progress: str | None = None) -> list:
    """``model``'s output for each row of ``features`` (tokenised columns), in order,
    computed in batches of similar lengths: ``logits(output)`` gives a batch's tensor,
    tokens on its last axis but one, and each row is cut to its own length."""
    import torch
    from tqdm.auto import tqdm

    model.eval()
    device = next(model.parameters()).device
    lengths = [len(ids) for ids in features["input_ids"]]
    out: list = [None] * len(lengths)
    batches = list(by_length(lengths, batch_size))
    with torch.inference_mode():
        for idx in tqdm(batches, desc=progress, unit="batch", disable=not progress,
                        dynamic_ncols=True):
            batch = collate([{k: features[k][i] for k in features} for i in idx])
            result = logits(model(**{k: v.to(device) for k, v in batch.items()}))
            for row, i in enumerate(idx):
                out[i] = result[row].narrow(-2, 0, lengths[i]).clone()
    return out
