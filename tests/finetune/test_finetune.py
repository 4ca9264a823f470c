"""Fine-tuning with distillation, sweeps on Ray Tune, baselines and the comparison, on a
tiny run (2-layer teacher, tiny space) and generated GLUE-format tasks."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from nasbert import ConfigError, RunDir
from nasbert.cli import main
from nasbert.data.tasks import load_task
from nasbert.extract import save_subnet
from nasbert.families.sentence import Encoded, load_classifier, predict
from nasbert.finetune.config import SweepConfig
from nasbert.finetune.stage import finetune, finetune_student, finetune_teacher
from nasbert.finetune.sweep import sweep

from conftest import quick_finetune

ARCH = "E16|H16:M,F|H24:S3,I"
QUICK = quick_finetune()


@pytest.fixture(scope="module")
def run(tiny_run):
    """The tiny trained run with one searched-like subnet."""
    run = RunDir(tiny_run)
    save_subnet(run.supernet(), ARCH, run.subnet_dir("small"))
    return run


def _gap(run_dir, task_dir, model, config) -> float:
    """Mean KL(teacher || student) over the training set, at temperature 1."""
    data = load_task("sst2", task_dir)
    tok = RunDir(run_dir).tokenizer()
    dataset = Encoded(tok, data.split("train"), config.max_seq_len)
    stored = torch.load(RunDir(run_dir).finetune_dir("sst2", "teacher") / "train_logits.pt",
                        weights_only=True)
    s = predict(model, dataset)
    return float(torch.nn.functional.kl_div(s.log_softmax(-1), stored["logits"].softmax(-1),
                                            reduction="batchmean"))


def test_distillation_lowers_the_students_gap_to_the_teacher(run, glue):
    data = load_task("sst2", glue)
    teacher_dir = finetune_teacher(run, data, QUICK, progress=False)
    teacher = json.loads((teacher_dir / "metrics.json").read_text())
    assert teacher["dev"]["accuracy"] > 0.8  # the rule is learnable: the teacher learnt it
    before = _gap(run, glue, load_classifier(run.subnet_dir("small"), data.spec, QUICK.seed),
                  QUICK)
    record = finetune_student(run, "small", data, QUICK, progress=False)  # alpha 0: KD only
    folder = run.finetune_dir("sst2", "small")
    after = _gap(run, glue, _reload(folder / "model"), QUICK)  # what was saved
    assert after < 0.5 * before, (before, after)
    assert record["dev"]["accuracy"] > 0.7 and record["arch"] == ARCH
    assert record["train_examples"] == 192 and record["teacher_key"] == teacher["key"]
    assert (folder / "predictions_dev.tsv").read_text().count("\n") == 65
    # the same call again is a no-op returning the stored record
    again = finetune_student(run, "small", data, QUICK, progress=False)
    assert again["key"] == record["key"] and again["created"] == record["created"]


def test_a_killed_fine_tuning_resumes_from_its_checkpoint(run, glue, tmp_path):
    """Stopped after its first epoch (as a kill would), the student resumes from the
    Trainer's checkpoint: the first epoch as it was, the remaining steps only, a model
    as good. (Not bit for bit: after resuming, Trainer draws the later epochs' data
    order anew; measured here, the losses logged after the resumed step differ.)"""
    data = load_task("sst2", glue)
    finetune_teacher(run, data, QUICK, progress=False)
    whole = finetune_student(run, "small", data, QUICK, out_dir=tmp_path / "whole",
                             progress=False)

    def stop(metrics):
        raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        finetune_student(run, "small", data, QUICK, out_dir=cut, on_epoch=stop,
                         progress=False, checkpoint_seconds=0)
    work = tmp_path / ".cut.work"
    saved = sorted((work / "logits").glob("checkpoint-*"))
    assert saved and not cut.exists()
    broken = work / "logits" / "checkpoint-99999"  # a later save cut off by a kill
    shutil.copytree(saved[-1], broken)
    (broken / "trainer_state.json").unlink()  # Trainer writes it last
    resumed = finetune_student(run, "small", data, QUICK, out_dir=cut, progress=False,
                               checkpoint_seconds=0)
    steps = whole["history"][-1]["step"]
    # saved at the first epoch's last step, before the evaluation that stopped it
    assert [h["resumed_from"] for h in resumed["history"] if "resumed_from" in h] == [
        steps // int(QUICK.epochs)]
    # the seconds trained before the kill count in the record's
    before = [h["seconds_before"] for h in resumed["history"] if "seconds_before" in h]
    assert len(before) == 1 and 0 < before[0] <= resumed["seconds"]

    def first_epoch(record):
        return [h["loss"] for h in record["history"] if "loss" in h and h["epoch"] <= 1]
    assert first_epoch(resumed) == first_epoch(whole) and len(first_epoch(whole)) >= 2
    assert max(h.get("step", 0) for h in resumed["history"]) == steps
    assert resumed["dev"]["accuracy"] >= whole["dev"]["accuracy"] - 0.05
    assert not work.exists()  # removed once the result is written


def test_a_checkpoint_cut_off_mid_save_is_passed_over(tmp_path):
    from nasbert.finetune.distill import _last_complete_checkpoint

    assert _last_complete_checkpoint(tmp_path / "nothing") is None
    for step, state in ((8, "{}"), (10, "{}"), (12, '{"glob'), (14, None)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert _last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-8"]


def test_a_student_repeats_over_seeds_against_the_same_teacher(run, glue):
    import dataclasses

    data = load_task("sst2", glue)
    teacher = json.loads((finetune_teacher(run, data, QUICK, progress=False) / "metrics.json")
                         .read_text())
    first = finetune_student(run, "small", data, QUICK, progress=False)
    other = finetune_student(run, "small", data, dataclasses.replace(QUICK, student_seed=1),
                             progress=False)
    assert other["teacher_key"] == teacher["key"] and other["key"] != first["key"]
    assert other["config"]["student_seed"] == 1
    assert (run.finetune_dir("sst2", "small-seed1") / "model").is_dir()
    # another seed is another student: its own head, its own data order
    kept = json.loads((run.finetune_dir("sst2", "small") / "metrics.json").read_text())
    def losses(record):
        return [h["loss"] for h in record["history"] if "loss" in h]

    assert kept["key"] == first["key"] and losses(other) != losses(first)
    # the teacher was not fine-tuned again
    stored = json.loads((run.finetune_dir("sst2", "teacher") / "metrics.json").read_text())
    assert stored["created"] == teacher["created"]


def _reload(path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path)


def test_task_loss_alone_does_not_track_the_teacher_as_closely(run, glue):
    """alpha 1 ignores the teacher: its gap stays above the distilled student's."""
    import dataclasses

    data = load_task("sst2", glue)
    finetune_teacher(run, data, QUICK, progress=False)
    distilled = finetune_student(run, "small", data, QUICK, progress=False)
    plain_cfg = dataclasses.replace(QUICK, alpha=1.0)
    out = run.finetune_dir("sst2", "small-task-loss")
    finetune_student(run, "small", data, plain_cfg, out_dir=out, progress=False)
    gap_plain = _gap(run, glue, _reload(out / "model"), QUICK)
    gap_kd = _gap(run, glue, _reload(run.finetune_dir("sst2", "small") / "model"), QUICK)
    assert gap_kd < gap_plain, (gap_kd, gap_plain)
    assert distilled["config"]["alpha"] == 0.0


def test_stsb_is_regression_end_to_end(run, glue):
    import dataclasses

    cfg = dataclasses.replace(QUICK, alpha=0.5, hidden_epochs=1, teacher_epochs=16)
    results = finetune(run, "stsb", data_dir=glue, models=["small"], config=cfg,
                       progress=False)
    for key in ("teacher", "small"):
        assert set(results[key]["dev"]) == {"pearson", "spearman"}
        assert all(-1 <= v <= 1 for v in results[key]["dev"].values())
    assert results["teacher"]["dev"]["pearson"] > 0.5
    model = _reload(run.finetune_dir("stsb", "small") / "model")
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    preds = (run.finetune_dir("stsb", "small") / "predictions_dev.tsv").read_text()
    preds = preds.splitlines()[1:]
    assert any("." in p.split("\t")[1] for p in preds)  # scores, not classes
    stages = {h["stage"] for h in results["small"]["history"]}
    assert stages == {"hidden", "logits"}  # hidden-state distillation came first
    logits = torch.load(run.finetune_dir("stsb", "teacher") / "train_logits.pt")["logits"]
    assert logits.shape == (192, 1)
    # learnt on labels scaled to [0, 1] (regression_labels "unit"), predicted on theirs
    top = max(load_task("stsb", glue).split("train").labels)
    assert model.config.label_scale == pytest.approx(top) and float(logits.max()) < 1.5
    teacher_preds = (run.finetune_dir("stsb", "teacher") / "predictions_dev.tsv").read_text()
    assert max(float(line.split("\t")[1]) for line in teacher_preds.splitlines()[1:]) > 2.0


def test_sweep_of_two_trials_on_ray_tune(run, glue):
    config = SweepConfig(trials=2, epochs=(1, 2), batch_size=(16,), num_cpus=2, seed=0)
    records = sweep(run, "sst2", data_dir=glue, models=["small"], base=QUICK, config=config,
                    progress=False)
    r = records["small"]
    stored = json.loads((run.finetune_dir("sst2", "small") / "sweep.json").read_text())
    assert stored["best"] == r["best"] and len(stored["trials"]) == 2
    for t in stored["trials"]:
        assert t["error"] is None and 1 <= t["epochs_run"] <= t["config"]["epochs"]
        assert set(t["config"]) == {"lr", "epochs", "batch_size", "alpha", "temperature"}
        assert 0 <= t["best"] <= 1
    assert len({t["config"]["lr"] for t in stored["trials"]}) == 2  # two different proposals
    assert r["best"]["score"] == max(t["best"] for t in stored["trials"])


def test_finetune_cli(run, glue, capsys):
    assert main(["finetune", str(run), "--task", "sst2", "--data-dir", str(glue / "SST-2"),
                 "--subnet", "small", "--epochs", "8", "--lr", "3e-3", "--batch-size", "16",
                 "--teacher-epochs", "8", "--teacher-lr", "1e-3", "--teacher-batch-size", "16",
                 "--max-seq-len", "24",
                 "--alpha", "0", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "teacher" in out and "small" in out and "dev accuracy" in out


@pytest.mark.parametrize("args,words", [
    (["--subnet", "nope"], ["subnets/nope", "is not a model folder", "small"]),
    (["--alpha", "2"], ["nasbert finetune: alpha: must be in [0, 1]"]),
])
def test_finetune_bad_input(run, glue, args, words, capsys):
    assert main(["finetune", str(run), "--task", "sst2", "--data-dir", str(glue),
                 *args]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err


def test_student_needs_its_teacher_first(run, glue, tmp_path):
    data = load_task("sst2", glue)
    import dataclasses

    with pytest.raises(ConfigError, match="no teacher fine-tuned with this data"):
        finetune_student(run, "small", data, dataclasses.replace(QUICK, teacher_epochs=1),
                         progress=False)


