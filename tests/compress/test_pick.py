"""Choosing a deployment form is a pure function of the measured forms: tested here on
forms made up, with no run and nothing measured."""

from __future__ import annotations

import pytest

from nasbert.compress.deploy import Deployable, pick
from nasbert.errors import ConfigError


def form(model_id: str, metric: float, ms: float, bound: float | None = None,
         **kw) -> Deployable:
    return Deployable(model_id, f"finetune/sst2/{model_id}", kw.pop("precision", "float32"),
                      None, metric, {"validation": {"accuracy": metric}}, ms, "cpu",
                      ms_bound=bound, **kw)


def test_the_most_accurate_form_whose_bound_fits_is_picked():
    forms = [form("a", 0.90, 10.0, 12.0), form("b", 0.85, 5.0, 5.5),
             form("c", 0.80, 2.0, 2.2, kind="ngram", precision="int8")]
    assert pick(forms, 100).model_id == "a"
    assert pick(forms, 12.0).model_id == "a"  # a bound exactly at the budget fits
    # between a's median and its bound: judged by the bound, so not a
    assert pick(forms, 11.0).model_id == "b"
    assert pick(forms, 5.4).model_id == "c"
    with pytest.raises(ConfigError, match=r"latency bound is 2\.20 ms \(c \(an n-gram"):
        pick(forms, 2.0)
    with pytest.raises(ValueError):
        pick([], 10.0)


def test_ties_in_metric_go_to_the_lower_bound_then_the_lower_median():
    forms = [form("slow", 0.9, 4.0, 6.0), form("fast", 0.9, 4.5, 5.0),
             form("same-bound", 0.9, 4.2, 5.0)]
    assert pick(forms, 10).model_id == "same-bound"
    # with no bound measured, the median is the bound
    assert form("x", 0.5, 3.0).ms_bound == 3.0


def test_the_measured_forms_round_trip_through_their_records(tmp_path):
    from nasbert.compress.forms import FormsRecord, LatencyBounds, MeasuredForm, TimedForm

    rows = [MeasuredForm("float32", {"dev": {"accuracy": 0.9}}, 3.5, "cpu-a"),
            MeasuredForm("int8", {"dev": {"accuracy": 0.8}}, 2.0, "cpu-a-int8",
                         length_config=(0.5, 1.0), tokens_kept=0.75, heldout={"accuracy": 0.7})]
    record = FormsRecord("k", "4x", "sst2", {"batch": 1}, rows, quantisation_aware=True,
                         plain_key="p", int8_loss=0.1, provenance={"created": "today"})
    record.save(tmp_path / "deploy.json")
    assert FormsRecord.load(tmp_path / "deploy.json") == record
    assert rows[0].full_length and not rows[1].full_length
    bounds = LatencyBounds("k", "sst2", "cpu-a", {}, {"rounds": 2}, None,
                           {"4x float32 full": TimedForm(3.0, 3.4, "finetune/sst2/4x", [3.0, 3.4])})
    bounds.save(tmp_path / "latency.json")
    assert LatencyBounds.load(tmp_path / "latency.json") == bounds
    assert FormsRecord.load(tmp_path / "missing.json") is None
    (tmp_path / "torn.json").write_text('{"key": ')
    assert FormsRecord.load(tmp_path / "torn.json") is None  # measured again
    (tmp_path / "wrong.json").write_text('{"key": "k"}')
    with pytest.raises(ConfigError, match="wrong.json.*is corrupt"):
        FormsRecord.load(tmp_path / "wrong.json")
