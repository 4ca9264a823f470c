"""The measured forms of a fine-tuned model: the one record type of ``deploy.json``
(``finetune/<task>/<variant>/``: float32 and int8, on PyTorch and ONNX Runtime, the
quantisation-aware int8, the n-gram student) and ``lengths.json`` (the length
configurations of a LengthDrop model). The stages that measure a form write it through
:class:`FormsRecord`; deployment (:mod:`~nasbert.compress.deploy`) reads it back the
same way, so no module parses another's JSON with defaults of its own.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

from nasbert.errors import ConfigError
from nasbert.io import atomic_write_text, read_record


@dataclasses.dataclass(frozen=True)
class MeasuredForm:
    """One form of a model as measured: its dev metrics (every dev split), its median
    latency side by side with the others under the stage's protocol, and the device id
    it was timed on (the protocol's fingerprint, its dtype included)."""

    precision: str  # float32 | int8
    metrics: dict  # dev split -> metric -> value
    ms: float
    device: str
    length_config: tuple[float, ...] | None = None  # per block; None: full length
    runtime: str = "pytorch"  # or "onnxruntime": the exported graph
    # length configurations only: the share of tokens kept and the held-out metrics the
    # length search ranked them by
    tokens_kept: float | None = None
    heldout: dict | None = None

    @property
    def full_length(self) -> bool:
        return self.length_config is None or all(r == 1 for r in self.length_config)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["length_config"] = list(self.length_config) if self.length_config else None
        return {k: v for k, v in out.items()
                if v is not None or k in ("length_config",)}

    @classmethod
    def from_dict(cls, data: Mapping) -> MeasuredForm:
        length = data.get("length_config")
        return cls(precision=str(data["precision"]), metrics=dict(data["metrics"]),
                   ms=float(data["ms"]), device=str(data["device"]),
                   length_config=tuple(float(r) for r in length) if length else None,
                   runtime=str(data.get("runtime", "pytorch")),
                   tokens_kept=data.get("tokens_kept"), heldout=data.get("heldout"))


@dataclasses.dataclass(frozen=True)
class FormsRecord:
    """What one stage measured of one model's forms on a task, with the key it was
    measured under (a different key measures again)."""

    key: str
    id: str  # the model id (a subnet's, or an n-gram student's)
    task: str
    protocol: dict
    candidates: list[MeasuredForm]
    kind: str = "transformer"  # or "ngram"
    quantisation_aware: bool = False
    plain_key: str | None = None  # quantisation-aware: the plain int8 form's record key
    int8_loss: float | None = None  # quantisation-aware: what plain int8 lost
    provenance: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"key": self.key, "id": self.id, "task": self.task, "protocol": self.protocol,
               "kind": self.kind, "candidates": [c.to_dict() for c in self.candidates]}
        if self.quantisation_aware:
            out.update(quantisation_aware=True, plain_key=self.plain_key,
                       int8_loss=self.int8_loss)
        return {**out, **self.provenance}

    @classmethod
    def from_dict(cls, data: Mapping, *, source: str = "deploy.json") -> FormsRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(key=str(data["key"]), id=str(data["id"]), task=str(data["task"]),
                       protocol=dict(data["protocol"]),
                       candidates=[MeasuredForm.from_dict(c) for c in data["candidates"]],
                       kind=str(data.get("kind", "transformer")),
                       quantisation_aware=bool(data.get("quantisation_aware", False)),
                       plain_key=data.get("plain_key"), int8_loss=data.get("int8_loss"),
                       provenance={k: v for k, v in data.items() if k not in known})
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError("is corrupt; delete it and run `nasbert deploy` again",
                              source=source) from None

    @classmethod
    def load(cls, path: str | Path) -> FormsRecord | None:
        """The record at ``path``, or None when there is none (or it is torn)."""
        data = read_record(path)
        return None if data is None else cls.from_dict(data, source=str(path))

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1))


@dataclasses.dataclass(frozen=True)
class TimedForm:
    """One form timed for its bound: the median and the high quantile of its rounds
    (every process's, rescaled against the teacher as profiled)."""

    ms: float
    ms_bound: float
    folder: str  # the fine-tuned model folder, relative to the run
    rounds: list[float]


@dataclasses.dataclass(frozen=True)
class LatencyBounds:
    """A task's ``finetune/<task>/latency.json``: every deployable form timed side by
    side in several fresh processes (:func:`~nasbert.compress.deploy.measure_bounds`),
    keyed by what the timing depends on."""

    key: str
    task: str
    device: str
    protocol: dict
    config: dict
    reference: dict | None
    forms: dict[str, TimedForm]
    provenance: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"key": self.key, "task": self.task, "device": self.device,
                "protocol": self.protocol, "config": self.config, "reference": self.reference,
                "forms": {f: dataclasses.asdict(t) for f, t in self.forms.items()},
                **self.provenance}

    @classmethod
    def from_dict(cls, data: Mapping, *, source: str = "latency.json") -> LatencyBounds:
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(key=str(data["key"]), task=str(data["task"]), device=str(data["device"]),
                       protocol=dict(data["protocol"]), config=dict(data["config"]),
                       reference=data.get("reference"),
                       forms={f: TimedForm(float(t["ms"]), float(t["ms_bound"]), str(t["folder"]),
                                           [float(x) for x in t["rounds"]])
                              for f, t in data["forms"].items()},
                       provenance={k: v for k, v in data.items() if k not in known})
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError("is corrupt; delete it and run `nasbert deploy` again",
                              source=source) from None

    @classmethod
    def load(cls, path: str | Path) -> LatencyBounds | None:
        """The record at ``path``, or None when there is none (or it is torn)."""
        data = read_record(path)
        return None if data is None else cls.from_dict(data, source=str(path))

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
