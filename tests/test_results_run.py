"""The results run (scripts/results_run.py), an experiment outside the package that
calls nasbert's public API: every phase, resumed, and the supernet trained longer."""

from __future__ import annotations

import sys

import pytest

from nasbert import RunDir
from nasbert.extract import save_subnet

from conftest import ROOT, quick_finetune, tiny_recipe_text

sys.path.insert(0, str(ROOT / "scripts"))
from results_run import (  # noqa: E402 - the scripts folder is not a package
    ResultsConfig,
    build_results,
    longer_picks,
    longer_supernet,
)


@pytest.mark.slow  # about 70 s alone (20 fine-tunings); the quickstart test covers the stages
def test_results_run_builds_every_phase_and_resumes(_trained_tiny_run, tiny_teacher,
                                                    tiny_corpus, glue, tmp_path, protocol):
    import dataclasses
    import json
    import shutil

    from nasbert.finetune.augment import AugmentConfig
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
