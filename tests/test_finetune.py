"""Fine-tuning with distillation, sweeps on Ray Tune, baselines and the comparison, on a
tiny run (2-layer teacher, tiny space) and generated GLUE-format tasks."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoModel

from nasbert import ConfigError
from nasbert.baselines import build_baselines, measured_ms, uniform_archs
from nasbert.cli import main
from nasbert.data import load_task
from nasbert.finetune import (
    Encoded,
    FinetuneConfig,
    SweepConfig,
    finetune,
    finetune_student,
    finetune_teacher,
    load_tokenizer,
    predict,
    sweep,
)
from nasbert.latency import Protocol, fit, latency_dir, profile
from nasbert.pipeline import Row, compare, render
from nasbert.subnet import save_subnet
from nasbert.supernet import Supernet
from nasbert.train import load_recipe, run_space, train_supernet
from nasbert.train.loop import FINAL

from conftest import tiny_recipe_text, write_glue_task

PROTOCOL = Protocol(batch=1, seq=32, warmup=1, repeats=3)
ARCH = "E16|H16:M,F|H24:S3,I"
QUICK = FinetuneConfig(epochs=8, lr=3e-3, batch_size=16, teacher_epochs=8, teacher_lr=1e-3,
                       teacher_batch_size=16, max_seq_len=24, alpha=0.0, temperature=2.0)


@pytest.fixture(scope="module")
def run(tiny_teacher, tiny_corpus, tmp_path_factory):
    """A trained tiny run with a latency predictor and one searched-like subnet."""
    folder = tmp_path_factory.mktemp("finetune")
    recipe = folder / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_teacher, tiny_corpus, max_steps=20))
    run_dir = folder / "run"
    train_supernet(load_recipe(recipe), run_dir, progress=False)
    space = run_space(run_dir)
    profile(space, latency_dir(run_dir, PROTOCOL), PROTOCOL, samples=20, progress=False)
    fit(space, latency_dir(run_dir, PROTOCOL))
    save_subnet(Supernet.load(run_dir / FINAL), ARCH, run_dir / "subnets" / "small")
    return run_dir


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    for task in ("sst2", "stsb"):
        write_glue_task(root, task, train=192, dev=64)
    return root


def _gap(run_dir, task_dir, model, config) -> float:
    """Mean KL(teacher || student) over the training set, at temperature 1."""
    data = load_task("sst2", task_dir)
    tok = load_tokenizer(run_dir)
    dataset = Encoded(tok, data.split("train"), config.max_seq_len)
    stored = torch.load(run_dir / "finetune/sst2/teacher/train_logits.pt", weights_only=True)
    s = predict(model, dataset)
    return float(torch.nn.functional.kl_div(s.log_softmax(-1), stored["logits"].softmax(-1),
                                            reduction="batchmean"))


def test_distillation_lowers_the_students_gap_to_the_teacher(run, glue):
    from nasbert.finetune import _load_classifier

    data = load_task("sst2", glue)
    teacher_dir = finetune_teacher(run, data, QUICK, progress=False)
    teacher = json.loads((teacher_dir / "metrics.json").read_text())
    assert teacher["dev"]["accuracy"] > 0.8  # the rule is learnable: the teacher learnt it
    before = _gap(run, glue, _load_classifier(run / "subnets/small", data.spec, QUICK.seed),
                  QUICK)
    record = finetune_student(run, "small", data, QUICK, progress=False)  # alpha 0: KD only
    folder = run / "finetune/sst2/small"
    after = _gap(run, glue, _reload(folder / "model"), QUICK)  # what was saved
    assert after < 0.5 * before, (before, after)
    assert record["dev"]["accuracy"] > 0.7 and record["arch"] == ARCH
    assert record["train_examples"] == 192 and record["teacher_key"] == teacher["key"]
    assert (folder / "predictions_dev.tsv").read_text().count("\n") == 65
    # the same call again is a no-op returning the stored record
    again = finetune_student(run, "small", data, QUICK, progress=False)
    assert again["key"] == record["key"] and again["created"] == record["created"]


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
    assert (run / "finetune/sst2/small-seed1/model").is_dir()
    # another seed is another student: its own head, its own data order
    kept = json.loads((run / "finetune/sst2/small/metrics.json").read_text())
    def losses(record):
        return [h["loss"] for h in record["history"] if "loss" in h]

    assert kept["key"] == first["key"] and losses(other) != losses(first)
    # the teacher was not fine-tuned again
    assert json.loads((run / "finetune/sst2/teacher/metrics.json").read_text())["created"] \
        == teacher["created"]


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
    out = run / "finetune/sst2/small-task-loss"
    finetune_student(run, "small", data, plain_cfg, out_dir=out, progress=False)
    gap_plain = _gap(run, glue, _reload(out / "model"), QUICK)
    gap_kd = _gap(run, glue, _reload(run / "finetune/sst2/small/model"), QUICK)
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
    model = _reload(run / "finetune/stsb/small/model")
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    preds = (run / "finetune/stsb/small/predictions_dev.tsv").read_text().splitlines()[1:]
    assert any("." in p.split("\t")[1] for p in preds)  # scores, not classes
    stages = {h["stage"] for h in results["small"]["history"]}
    assert stages == {"hidden", "logits"}  # hidden-state distillation came first
    logits = torch.load(run / "finetune/stsb/teacher/train_logits.pt")["logits"]
    assert logits.shape == (192, 1)


def test_sweep_of_two_trials_on_ray_tune(run, glue):
    config = SweepConfig(trials=2, epochs=(1, 2), batch_size=(16,), num_cpus=2, seed=0)
    records = sweep(run, "sst2", data_dir=glue, models=["small"], base=QUICK, config=config,
                    progress=False)
    r = records["small"]
    stored = json.loads((run / "finetune/sst2/small/sweep.json").read_text())
    assert stored["best"] == r["best"] and len(stored["trials"]) == 2
    for t in stored["trials"]:
        assert t["error"] is None and 1 <= t["epochs_run"] <= t["config"]["epochs"]
        assert set(t["config"]) == {"lr", "epochs", "batch_size", "alpha", "temperature"}
        assert 0 <= t["best"] <= 1
    assert len({t["config"]["lr"] for t in stored["trials"]}) == 2  # two different proposals
    assert r["best"]["score"] == max(t["best"] for t in stored["trials"])


def test_uniform_stacks_lie_in_the_space(minilm_space, tiny_space):
    archs = uniform_archs(minilm_space)
    assert len(archs) == 16  # 3..6 layers x 4 hidden sizes (every block needs a layer)
    assert str(archs["uniform-L4-H256"]) == "E256|H256:M,F,M,F|H256:M,F,I,I|H256:M,F,I,I"
    for arch in archs.values():
        minilm_space.validate(arch)
    assert set(uniform_archs(tiny_space)) == {"uniform-L1-H32", "uniform-L2-H32"}


def test_baselines_are_matched_by_measured_latency_and_compared(run, glue):
    target = measured_ms(run / "subnets/small", PROTOCOL)
    assert json.loads((run / "subnets/small/latency.json").read_text())
    chosen = build_baselines(run, {"1x": target}, protocol=PROTOCOL, progress=False)
    ids = chosen["1x"]
    assert ids["uniform"] in ("uniform-L1-H32", "uniform-L2-H32")
    assert ids["teacher-first-k"] == "teacher-first-1"  # the only prefix of 2 layers
    prefix = AutoModel.from_pretrained(run / "subnets/teacher-first-1")
    assert prefix.config.num_hidden_layers == 1
    card = json.loads((run / "subnets/teacher-first-1/nasbert.json").read_text())
    assert card["arch"] == "teacher's first 1 of 2 layers" and card["teacher"]
    rows = compare(run, "sst2", {"1x": {"searched": "small", **ids}}, data_dir=glue,
                   config=QUICK, protocol=PROTOCOL, progress=False)
    assert [r.kind for r in rows] == ["teacher", "searched", "uniform", "teacher-first-k"]
    assert rows[0].speedup == 1.0 and rows[0].share == 1.0
    for r in rows[1:]:
        assert r.latency_ms > 0 and r.speedup == pytest.approx(rows[0].latency_ms / r.latency_ms)
        assert r.share == pytest.approx(r.metric / rows[0].metric)
    table = render(rows, "sst2", "accuracy")
    assert table.count("\n") == 5 and "searched 1x" in table


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
    (["--alpha", "2"], ["finetune.alpha", "must be in [0, 1]"]),
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


def test_table_shows_the_tasks_other_metrics():
    rows = [Row("teacher", "teacher", "teacher", "", 2_000_000, 10.0, 1.0, 0.84, 1.0,
                {"accuracy": 0.75}),
            Row("searched 2x", "a", "searched", "2x", 1_000_000, 5.0, 2.0, 0.81, 0.81 / 0.84,
                {"accuracy": 0.70})]
    header, rule, *lines = render(rows, "mrpc", "f1").splitlines()
    assert header.endswith("| dev f1 | of teacher | dev accuracy |")
    assert rule.count("|") == header.count("|")
    assert lines[1] == "| searched 2x | 1.00M | 5.00 | 2.00x | 0.8100 | 96.4% | 0.7000 |"


def test_quickstart_runs_every_stage_and_resumes(tiny_teacher, tiny_corpus, glue, tmp_path,
                                                 capsys):
    from nasbert.pipeline import QuickstartConfig, quickstart

    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_teacher, tiny_corpus, max_steps=20))
    config = QuickstartConfig(recipe=str(recipe), task="sst2", data_dir=str(glue),
                              speedups=(1.0, 1e4), latency_samples=12, search_trials=20,
                              top_k=2, finetune=QUICK)
    run_dir = tmp_path / "run"
    rows = quickstart(run_dir, config, protocol=PROTOCOL, progress=True)
    out = capsys.readouterr().out
    assert "skipped" in out and "10000x" in out  # none is 1e4 x faster: left out, said so
    kinds = [r.kind for r in rows]
    assert kinds[0] == "teacher" and kinds.count("searched") == 1
    assert {"uniform", "teacher-first-k"} <= set(kinds)
    searched = next(r for r in rows if r.kind == "searched")
    assert searched.target == "1x" and (run_dir / "subnets" / searched.model_id).is_dir()
    text = (run_dir / "results.md").read_text()
    assert "searched 1x" in text and "wall time" in text
    assert re.search(r"made by: `nasbert quickstart` \(\d{4}-\d\d-\d\dT.*nasbert \d", text)
    # a second call resumes: nothing is trained again
    again = quickstart(run_dir, config, protocol=PROTOCOL, progress=True)
    out = capsys.readouterr().out
    assert "already trained" in out and "fine-tuning the teacher" not in out
    assert [(r.model_id, r.metric) for r in again] == [(r.model_id, r.metric) for r in rows]
