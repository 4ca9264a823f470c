"""The plan of a comparison: baselines first, the search under the fastest's measured
latency, kept in a typed record (search/plan.json)."""

from __future__ import annotations

import json
import shutil

import pytest

from nasbert.errors import ConfigError
from nasbert.run import RunDir
from nasbert.search.plan import Plan, plan_ids, plan_models, speedup_name
from nasbert.search.searchers import Budget


def test_a_plan_round_trips_through_its_file_and_a_torn_one_is_one_clear_error(tmp_path):
    run = RunDir(tmp_path / "run")
    assert Plan.load(run) is None
    plan = Plan(request={"speedups": [2.0]}, teacher_ms=10.0, budgets_ms={"2x": 5.2},
                measured_ms={"u": 5.2, "latency-5.2ms": 4.9}, notes=["4x: none"],
                groups={"2x": {"searched": "latency-5.2ms", "uniform": "u"}})
    plan.save(run)
    assert json.loads(Plan.path(run).read_text())["plan"] == plan.groups  # the file's key
    assert Plan.load(run) == plan
    assert plan.ids() == ["latency-5.2ms", "u"] and speedup_name(2.0) == "2x"
    assert plan_ids({"a": {"x": "1", "y": "2"}, "b": {"x": "1"}}) == ["1", "2"]
    Plan.path(run).write_text('{"request": {}')
    with pytest.raises(ConfigError, match="plan.json.*is corrupt"):
        Plan.load(run)


def test_plan_searches_under_its_fastest_baseline_and_leaves_out_a_speedup_without_one(
        tiny_run, protocol, capsys, tmp_path):
    run = RunDir(tiny_run)
    plan = plan_models(run, [1.0, 1e4], protocol, top_k=2, reach=4.0, progress=True)
    out = capsys.readouterr().out
    assert list(plan) == ["1x"]  # no hand-designed model is anywhere near 1e4 x faster
    assert "skipped       10000x" in out and "over 4x from" in out
    stored = Plan.load(run)
    assert stored.groups == plan and stored.ids() == plan_ids(plan)
    group = plan["1x"]
    assert set(group) == {"searched", "uniform", "teacher-first-k"}
    # the budget is the latency, as measured, of the fastest baseline within 4x of the
    # target that the search reaches (the next where it reaches none that fast): the
    # searched model has the room of what it is compared with, no more
    baseline = sorted(stored.measured_ms[group[k]] for k in ("uniform", "teacher-first-k"))
    budget = stored.budgets_ms["1x"]
    assert any(budget == pytest.approx(ms, rel=1e-3) for ms in baseline)
    assert budget == pytest.approx(baseline[0], rel=1e-3) or "held to the next" in out
    assert group["searched"] == Budget(latency_ms=stored.budgets_ms["1x"]).name
    config = json.loads((run.subnet_dir(group["searched"]) / "config.json").read_text())
    assert config["provenance"]["budget"] == group["searched"]
    assert stored.measured_ms[group["searched"]] > 0  # what the pick measured
    # asked again, the stored plan answers: nothing is searched or measured again
    assert plan_models(run, [1.0, 1e4], protocol, top_k=2, reach=4.0, progress=True) == plan
    assert "searching" not in capsys.readouterr().out
    # another run searched at this one's budgets (the supernet trained longer)
    other = RunDir(shutil.copytree(run.path, tmp_path / "other"))
    shutil.rmtree(other.search)
    # a tenth over the stored budgets: their search measures its candidates again, and a
    # busy machine (the suite on two workers) measured the same model 7 % slower
    budgets = {k: 1.1 * v for k, v in stored.budgets_ms.items()}
    given = plan_models(other, [1.0, 1e4], protocol, top_k=2, baselines=False,
                        budgets_ms=budgets, progress=True)
    assert list(given) == ["1x"] and list(given["1x"]) == ["searched"]
    assert Plan.load(other).budgets_ms == {"1x": pytest.approx(budgets["1x"], abs=1e-3)}
    assert "10000x: no budget given" in capsys.readouterr().out
    with pytest.raises(ValueError, match="baselines=False"):
        plan_models(other, [1.0], protocol, budgets_ms=stored.budgets_ms)
