"""The end to end pipeline: plan, compare, the table, and the quickstart (every stage,
resumed)."""

from __future__ import annotations

import re

import pytest

from nasbert import RunDir
from nasbert.extract import save_subnet
from nasbert.pipeline import QuickstartConfig, Row, compare, quickstart, render

from conftest import quick_finetune, tiny_recipe_text


def test_table_shows_the_tasks_other_metrics():
    rows = [Row("teacher", "teacher", "teacher", "", 2_000_000, 10.0, 1.0, 0.84, 1.0,
                {"accuracy": 0.75}),
            Row("searched 2x", "a", "searched", "2x", 1_000_000, 5.0, 2.0, 0.81, 0.81 / 0.84,
                {"accuracy": 0.70})]
    header, rule, *lines = render(rows, "mrpc", "f1").splitlines()
    assert header.endswith("| dev f1 | of teacher | dev accuracy |")
    assert rule.count("|") == header.count("|")
    assert lines[1] == "| searched 2x | 1.00M | 5.00 | 2.00x | 0.8100 | 96.4% | 0.7000 |"


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
    table = render(rows, "sst2", "accuracy")
    assert table.count("\n") == 4 and "searched 1x" in table


def test_plan_searches_under_its_fastest_baseline_and_leaves_out_a_speedup_without_one(
        tiny_run, protocol, capsys, tmp_path):
    import json
    import shutil

    from nasbert.pipeline import plan_models
    from nasbert.search.searchers import Budget

    run = RunDir(tiny_run)
    plan = plan_models(run, [1.0, 1e4], protocol, top_k=2, reach=4.0, progress=True)
    out = capsys.readouterr().out
    assert list(plan) == ["1x"]  # no hand-designed model is anywhere near 1e4 x faster
    assert "skipped       10000x" in out and "over 4x from" in out
    stored = json.loads((run.search / "plan.json").read_text())
    group = plan["1x"]
    assert set(group) == {"searched", "uniform", "teacher-first-k"}
    # the budget is the latency, as measured, of the fastest baseline within 4x of the
    # target that the search reaches (the next where it reaches none that fast): the
    # searched model has the room of what it is compared with, no more
    baseline = sorted(stored["measured_ms"][group[k]] for k in ("uniform", "teacher-first-k"))
    budget = stored["budgets_ms"]["1x"]
    assert any(budget == pytest.approx(ms, rel=1e-3) for ms in baseline)
    assert budget == pytest.approx(baseline[0], rel=1e-3) or "held to the next" in out
    assert group["searched"] == Budget(latency_ms=stored["budgets_ms"]["1x"]).name
    config = json.loads((run.subnet_dir(group["searched"]) / "config.json").read_text())
    assert config["provenance"]["budget"] == group["searched"]
    assert stored["measured_ms"][group["searched"]] > 0  # what the pick measured
    # asked again, the stored plan answers: nothing is searched or measured again
    assert plan_models(run, [1.0, 1e4], protocol, top_k=2, reach=4.0, progress=True) == plan
    assert "searching" not in capsys.readouterr().out
    # another run searched at this one's budgets (the supernet trained longer)
    other = RunDir(shutil.copytree(run.path, tmp_path / "other"))
    shutil.rmtree(other.search)
    given = plan_models(other, [1.0, 1e4], protocol, top_k=2, baselines=False,
                        budgets_ms=stored["budgets_ms"], progress=True)
    assert given == {"1x": {"searched": group["searched"]}}
    assert "10000x: no budget given" in capsys.readouterr().out
    with pytest.raises(ValueError, match="baselines=False"):
        plan_models(other, [1.0], protocol, budgets_ms=stored["budgets_ms"])


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


@pytest.mark.slow  # about 70 s alone (20 fine-tunings); the quickstart test covers the stages
def test_results_run_builds_every_phase_and_resumes(_trained_tiny_run, tiny_teacher,
                                                    tiny_corpus, glue, tmp_path, protocol):
    import dataclasses
    import json
    import shutil

    from nasbert.finetune.augment import AugmentConfig
    from nasbert.pipeline import ResultsConfig, build_results
    from nasbert.train import DistillConfig

    # the trained and profiled tiny run (its recipe again: supernet and latency are done)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_teacher, tiny_corpus, max_steps=20,
                                       checkpoint_every=10))
    shutil.copytree(_trained_tiny_run, tmp_path / "run")
    quick = dataclasses.replace(quick_finetune(), epochs=2, teacher_epochs=4)
    config = ResultsConfig(
        recipe=str(recipe), glue_dir=str(glue), tasks=("sst2",), speedups=(1.0,),
        latency_samples=30, top_k=2, seeds=(0, 1), ablation_tasks=("sst2",),
        ablation_group="1x", augment=AugmentConfig(per_example=1),
        distill=DistillConfig(tokens=4 * 8 * 32, batch_size=8, dev_batches=1),
        schedules={"sst2": quick}, longer=1.5)
    run = RunDir(tmp_path / "run")
    out = build_results(run, config, protocol=protocol, progress=False)
    group = out["plan"]["1x"]
    assert set(group) == {"searched", "uniform", "teacher-first-k"}
    assert set(out["latency_ms"]) == {"teacher", *group.values()}
    # stage one for every model of the run, and fine-tuning of each (the estimate study)
    for model_id in run.subnet_ids():
        assert (run.distilled_dir(model_id) / "stage_one.json").is_file(), model_id
        record = json.loads((run.finetune_dir("sst2", model_id) / "metrics.json").read_text())
        assert record["stage_one"] is True
    folders = {p.name for p in run.finetune_dir("sst2").iterdir()}
    for kind, model_id in group.items():
        ablation = {f"{model_id}-extracted", f"{model_id}-extracted-aug", f"{model_id}-aug"}
        assert ablation <= folders, (ablation, folders)
        assert (f"{model_id}-seed1" in folders) == (kind != "teacher-first-k")
    # the supernet trained longer, searched again; a changed pick is fine-tuned too
    study = run.study("supernet-30-steps")
    assert json.loads(study.summary.read_text())["steps"] == 30
    assert (study.search / "plan.json").is_file()
    stages = json.loads((run.path / "stages.json").read_text())
    assert {"supernet", "latency", "search and baselines", "stage one",
            "fine-tuning sst2", "supernet trained longer"} <= set(stages)
    # resumed: nothing is trained again, and the figures are the same
    again = build_results(run, config, protocol=protocol, progress=False)
    assert again["latency_ms"] == out["latency_ms"] and again["plan"] == out["plan"]
    after = json.loads((run.path / "stages.json").read_text())
    spent = after["fine-tuning sst2"] - stages["fine-tuning sst2"]
    assert spent < 0.25 * stages["fine-tuning sst2"], (spent, stages)


def test_supernet_trained_longer_resumes_in_a_study_and_is_searched_again(
        _trained_tiny_run, tmp_path, protocol, capsys):
    import json
    import shutil

    from nasbert.errors import ConfigError
    from nasbert.pipeline import longer_picks, longer_supernet

    run = RunDir(shutil.copytree(_trained_tiny_run, tmp_path / "run"))
    with pytest.raises(ConfigError, match="not longer than the run's 20"):
        longer_supernet(run, 20, progress=False)
    # what a kill can leave: a set-up cut short, an empty study
    stale = run.studies / ".supernet-30-steps.cut"
    stale.mkdir(parents=True)
    run.study("supernet-30-steps").path.mkdir()
    study = longer_supernet(run, 30, progress=True)
    out = capsys.readouterr().out
    assert "resuming from step 20" in out  # from the run's last checkpoint, not from scratch
    assert not stale.exists()
    assert study.path == run.path / "studies" / "supernet-30-steps"
    assert json.loads(study.summary.read_text())["steps"] == 30
    assert json.loads(run.summary.read_text())["steps"] == 20  # the run is left as it was
    assert study.recipe().train.max_steps == 30
    longer_supernet(run, 30, progress=True)
    assert "already trained for 30 steps" in capsys.readouterr().out

    def arch(folder):
        return json.loads((folder / "nasbert.json").read_text())["arch"]

    # the run's pick, as a plan names it: once the study's own architecture, once another
    supernet = run.supernet()
    save_subnet(supernet, "E16|H16:I,I|H24:I,I", run.subnet_dir("other"))
    picks = longer_picks(run, study, {"1x": {"searched": "other"}}, protocol,
                         speedups=(1.0,), top_k=2, progress=False)
    theirs = json.loads((study.search / "plan.json").read_text())["plan"]["1x"]["searched"]
    assert arch(study.subnet_dir(theirs)) != "E16|H16:I,I|H24:I,I"
    assert picks == {"1x": f"{theirs}-supernet-30-steps"}  # copied into the run
    assert arch(run.subnet_dir(picks["1x"])) == arch(study.subnet_dir(theirs))
    assert (study.latency / run.latency_dir(protocol).name).is_dir()  # the run's tables
    save_subnet(supernet, arch(study.subnet_dir(theirs)), run.subnet_dir("same"))
    again = longer_picks(run, study, {"1x": {"searched": "same"}}, protocol,
                         speedups=(1.0,), top_k=2, progress=False)
    assert again == {"1x": "same"}  # the same architecture: the run's own model
