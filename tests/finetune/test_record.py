"""The record of a fine-tuned folder: one type that every stage reads and writes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from nasbert.errors import ConfigError
from nasbert.finetune.config import FinetuneConfig
from nasbert.finetune.record import FinetunedRecord


def test_a_record_round_trips_and_reads_its_metrics_and_schedule(tmp_path):
    schedule = FinetuneConfig(lr=3e-5, epochs=2)
    record = FinetunedRecord("4x", "k1", "mrpc", dataclasses.asdict(schedule),
                             {"dev": {"f1": 0.8, "accuracy": 0.7}},
                             extra={"params": 1000, "history": [{"epoch": 1}]})
    data = record.to_dict()
    assert data["dev"] == {"f1": 0.8, "accuracy": 0.7} and data["params"] == 1000
    assert FinetunedRecord.from_dict(data) == record
    assert record.metric() == 0.8 and record.metric("accuracy") == 0.7  # MRPC's own: f1
    assert record.schedule() == schedule
    (tmp_path / "metrics.json").write_text(json.dumps(data))
    assert FinetunedRecord.load(tmp_path) == record
    assert FinetunedRecord.load(tmp_path, key="k1") == record
    assert FinetunedRecord.load(tmp_path, key="another") is None  # made under another key
    assert FinetunedRecord.load(tmp_path / "missing") is None
    (tmp_path / "metrics.json").write_text(json.dumps({"id": "x", "task": "mrpc"}))
    with pytest.raises(ConfigError, match="metrics.json.*not a fine-tuned model's record"):
        FinetunedRecord.load(tmp_path)
