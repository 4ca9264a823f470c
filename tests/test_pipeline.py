"""The quickstart: compare, the table, and every stage end to end (resumed)."""

from __future__ import annotations

import re

import pytest

from nasbert import RunDir
from nasbert.extract import save_subnet
from nasbert.pipeline import QuickstartConfig, Row, compare, quickstart, render

from conftest import quick_finetune, tiny_recipe_text


def test_table_shows_the_tasks_other_metrics():
    rows = [Row("teacher", "teacher", "teacher", "", 2_000_000, 10.0, 1.0, 0.84, 1.0,
                {"accuracy": 0.75}, 100.0),
            Row("searched 2x", "a", "searched", "2x", 1_000_000, 5.0, 2.0, 0.81, 0.81 / 0.84,
                {"accuracy": 0.70}, 87.25),
            Row("n-gram student", "ngram", "ngram", "", 100, 0.1, 100.0, 0.7, 0.7 / 0.84,
                {"accuracy": 0.6})]
    header, rule, *lines = render(rows, "mrpc", "f1").splitlines()
    assert header.endswith("| dev f1 | of teacher | dev accuracy | agreement with teacher |")
    assert rule.count("|") == header.count("|")
    assert lines[1] == "| searched 2x | 1.00M | 5.00 | 2.00x | 0.8100 | 96.4% | 0.7000 | 87.2 |"
    assert lines[2].endswith("| 0.6000 | - |")  # no encoder to compare


def test_compare_measures_and_tabulates_side_by_side(tiny_run, glue, protocol):
    run = RunDir(tiny_run)
    supernet = run.supernet()
    save_subnet(supernet, "E16|H16:M,F|H24:S3,I", run.subnet_dir("small"))
    save_subnet(supernet, "E32|H32:M,F|H32:M,F", run.subnet_dir("large"))
    rows = compare(run, "sst2", {"1x": {"searched": "small", "uniform": "large"}},
                   data_dir=glue, config=quick_finetune(), protocol=protocol, progress=False)
    assert [r.kind for r in rows] == ["teacher", "searched", "uniform"]
    assert rows[0].speedup == 1.0 and rows[0].share == 1.0
    for r in rows[1:]:
        assert r.latency_ms > 0 and r.speedup == pytest.approx(rows[0].latency_ms / r.latency_ms)
        assert r.share == pytest.approx(r.metric / rows[0].metric)
    assert rows[0].agreement == 100.0  # the teacher with itself
    assert all(-100 <= r.agreement < 100 for r in rows[1:])
    table = render(rows, "sst2", "accuracy")
    assert table.count("\n") == 4 and "searched 1x" in table


def test_quickstart_runs_every_stage_and_resumes(tiny_teacher, tiny_corpus, glue, tmp_path,
                                                 protocol, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_teacher, tiny_corpus, max_steps=20))
    from nasbert.compress.ngram import MiningConfig
    from nasbert.compress.ngram_distill import NgramStudentConfig

    ngram = NgramStudentConfig(unlabelled_epochs=1, epochs=1, hidden_size=16, mlp_sizes=(16,),
                               mining=MiningConfig(min_count=1))
    config = QuickstartConfig(recipe=str(recipe), task="sst2", data_dir=str(glue),
                              speedups=(1.0, 1e4), latency_samples=12, search_trials=20,
                              top_k=2, finetune=quick_finetune(), ngram=ngram,
                              reach=4.0)  # the tiny space's shapes lie far apart
    run = RunDir(tmp_path / "run")
    rows = quickstart(run, config, protocol=protocol, progress=True)
    out, err = capsys.readouterr()
    assert "skipped" in out and "10000x" in out  # none is 1e4 x faster: left out, said so
    assert "sst2 teacher" in err and "loss=" in err  # a bar per model, with its loss
    kinds = [r.kind for r in rows]
    assert kinds[0] == "teacher" and kinds.count("searched") == 1
    assert {"uniform", "teacher-first-k"} <= set(kinds)
    assert kinds[-1] == "ngram" and rows[-1].latency_ms > 0  # measured beside the others
    searched = next(r for r in rows if r.kind == "searched")
    assert searched.target == "1x" and run.subnet_dir(searched.model_id).is_dir()
    text = run.results.read_text()
    assert "searched 1x" in text and "wall time" in text
    assert re.search(r"- command: `nasbert quickstart`\n- date: \d{4}-\d\d-\d\dT", text)
    assert re.search(r"- versions: nasbert \d.*\n- commit: ", text)
    # a second call resumes: nothing is trained again
    again = quickstart(run, config, protocol=protocol, progress=True)
    out, err = capsys.readouterr()
    assert "already trained" in out and "sst2 teacher" not in err
    assert [(r.model_id, r.metric) for r in again] == [(r.model_id, r.metric) for r in rows]
    # and reports the latencies measured side by side the first time
    assert [r.latency_ms for r in again] == [r.latency_ms for r in rows]
