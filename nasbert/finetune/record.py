"""The record of a fine-tuned folder (``finetune/<task>/<variant>/metrics.json``): what
the fine-tuning stage wrote of the teacher and each student, and what the stages after it
(quantisation-aware and length-adaptive training, n-gram students, deployment) write of
theirs. It is one type, read and written here alone, so no stage parses another's JSON.

>>> record = FinetunedRecord.load(run.finetune_dir("sst2", "latency-8ms"))  # doctest: +SKIP
>>> record.metric("accuracy"), record.schedule()                           # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from nasbert.errors import ConfigError
from nasbert.families import spec_of
from nasbert.io import cached_record, read_record

RECORD = "metrics.json"


@dataclasses.dataclass(frozen=True)
class FinetunedRecord:
    """One fine-tuned model's record: its id, the key it was made under (what it depends
    on: a different key makes it again), its task, the configuration that made it, its
    metrics on every dev split of the task, and what else its stage recorded (``extra``:
    data source, parameters, history, provenance, ...)."""

    id: str
    key: str
    task: str
    config: dict  # the schedule (FinetuneConfig) or the stage's own configuration
    metrics: dict[str, dict[str, float]]  # dev split -> metric -> value
    extra: dict = dataclasses.field(default_factory=dict)

    def metric(self, name: str | None = None, split: str | None = None) -> float:
        """A metric (default: the task's own) on a dev split (default: its first)."""
        spec = spec_of(self.task)
        return self.metrics[split or spec.dev_splits[0]][name or spec.metric]

    def schedule(self, source: str = RECORD):
        """The fine-tuning schedule the record was made with, parsed and checked."""
        from nasbert.finetune.config import FinetuneConfig
        from nasbert.schema import parse

        return parse(FinetuneConfig, self.config, source=source)

    def to_dict(self) -> dict:
        return {"id": self.id, "key": self.key, "task": self.task, "config": self.config,
                **self.metrics, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping, *, source: str = RECORD) -> FinetunedRecord:
        try:
            splits = spec_of(str(data["task"])).dev_splits
            own = {"id", "key", "task", "config", *splits}
            return cls(id=str(data["id"]), key=str(data["key"]), task=str(data["task"]),
                       config=dict(data["config"]),
                       metrics={s: dict(data[s]) for s in splits if s in data},
                       extra={k: v for k, v in data.items() if k not in own})
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError("is not a fine-tuned model's record; fine-tune it again",
                              source=source) from None

    @classmethod
    def load(cls, folder: str | Path, key: str | None = None) -> FinetunedRecord | None:
        """The record in ``folder`` (with ``key``: only when made under it), or None."""
        path = Path(folder) / RECORD
        data = cached_record(path, key) if key is not None else read_record(path)
        return None if data is None else cls.from_dict(data, source=str(path))
