"""Question answering and named entities through the one fine-tuning stage (the family
seam, nasbert.families): the teacher fine-tuned with its head, its outputs cached per
window or sentence, a student distilled from them, each scored by its family's own
post-processing and metric after every epoch and at the end; a re-run is a no-op, and a
schedule the family cannot train is refused."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from conftest import DEPLOY_ARCHS, WORDS, quick_finetune

FILLER = [w for w in WORDS if w not in ("city", "he", "she", "market")]


def _squad(folder, n_train: int = 96, n_dev: int = 24) -> None:
    """Questions whose answer is the word after "city", early in a short context."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.json", n_train), ("dev.json", n_dev)):
        paragraphs = []
        for i in range(n):
            before = " ".join(rng.choices(FILLER, k=rng.randint(1, 2)))
            answer = rng.choice(FILLER)
            context = f"{before} city {answer} {' '.join(rng.choices(FILLER, k=6))} ."
            start = len(before) + len(" city ")
            paragraphs.append({"context": context, "qas": [{
                "id": f"{name[:3]}{i}", "question": "which city ?",
                "answers": [{"text": answer, "answer_start": start}]}]})
        (folder / name).write_text(json.dumps({"data": [{"title": "t",
                                                         "paragraphs": paragraphs}]}))


def _conll(folder, n_train: int = 96, n_dev: int = 24) -> None:
    """Sentences whose entities are "he" / "she" (PER) and "city" / "market" (LOC)."""
    rng = random.Random(1)
    folder.mkdir(parents=True, exist_ok=True)
    tags = {"he": "B-PER", "she": "B-PER", "city": "B-LOC", "market": "B-LOC"}
    for name, n in (("train.txt", n_train), ("valid.txt", n_dev)):
        lines = ["-DOCSTART- O", ""]
        for _ in range(n):
            words = rng.choices(FILLER, k=rng.randint(4, 10))
            for _ in range(2):
                words.insert(rng.randrange(len(words)), rng.choice(list(tags)))
            lines += [f"{w} {tags.get(w, 'O')}" for w in words] + [""]
        (folder / name).write_text("\n".join(lines))


@pytest.fixture(scope="module")
def run(tiny_run):
    from nasbert import RunDir
    from nasbert.extract import save_subnet

    run = RunDir(tiny_run)
    save_subnet(run.supernet(), DEPLOY_ARCHS["small"], run.subnet_dir("small"))
    return run


def _schedule():
    return dataclasses.replace(quick_finetune(), max_seq_len=64, epochs=4, teacher_epochs=12,
                               alpha=0.5)


@pytest.mark.parametrize("task, files, metrics", [
    ("squad", _squad, {"f1", "exact_match"}),
    ("conll2003", _conll, {"f1", "precision", "recall"})])
def test_a_family_fine_tunes_the_teacher_and_distils_a_student(run, tmp_path, task, files,
                                                               metrics):
    import torch

    from nasbert.families import family_of
    from nasbert.finetune.record import FinetunedRecord
    from nasbert.finetune.stage import finetune

    files(tmp_path / task)
    config = _schedule()
    family = family_of(task)
    data = family.load(task, tmp_path / task)
    untrained = family.model(run.teacher_name(), data, config, 0)
    before = family.evaluate(untrained, run.tokenizer(), data, config)[0]["dev"]["f1"]
    results = finetune(run, task, data_dir=tmp_path / task, models=["small"], config=config,
                       progress=False)
    teacher, student = results["teacher"], results["small"]
    for record in (teacher, student):
        assert set(record["dev"]) == metrics
        assert all(0 <= v <= 1 for v in record["dev"].values())
        assert record["task"] == task
    assert teacher["dev"]["f1"] > before + 0.2, (before, teacher["dev"])  # learnt
    # what was saved is what was scored: the student reloaded through its family
    folder = run.finetune_dir(task, "small")
    again = family.evaluate(family.model(folder / "model", data, config, 1), run.tokenizer(),
                            data, config)[0]["dev"]
    assert again == pytest.approx(student["dev"], abs=1e-6)
    # the student's history: the family's metric after every epoch, distilled
    evals = [h for h in student["history"] if "eval_f1" in h]
    assert len(evals) == config.epochs
    assert FinetunedRecord.load(run.finetune_dir(task, "small")).metric() == student["dev"]["f1"]
    cached = torch.load(run.finetune_dir(task, "teacher") / "train_logits.pt",
                        weights_only=True)["logits"]
    assert isinstance(cached, list) and len(cached) >= 96  # one per window or sentence
    assert cached[0].shape[0] == (2 if task == "squad" else len(cached[0]))
    # done: nothing runs again
    again = finetune(run, task, data_dir=tmp_path / task, models=["small"], config=config,
                     progress=False)
    assert again["small"]["key"] == student["key"] and again["small"]["seconds"] == \
        student["seconds"]


@pytest.mark.parametrize("task", ["squad", "conll2003"])
def test_a_schedule_the_family_cannot_train_is_refused(run, tmp_path, task):
    from nasbert import ConfigError
    from nasbert.finetune.stage import finetune

    (_squad if task == "squad" else _conll)(tmp_path / task)
    root = run.finetune_dir(task, "teacher").parent.parent
    before = sorted(root.rglob("*")) if root.is_dir() else []
    bi = dataclasses.replace(_schedule(), formulation="bi")
    with pytest.raises(ConfigError, match="formulation"):
        finetune(run, task, data_dir=tmp_path / task, models=["small"], config=bi,
                 progress=False)
    with pytest.raises(ConfigError, match="fold"):
        finetune(run, task, data_dir=tmp_path / task, models=["small"],
                 config=dataclasses.replace(_schedule(), fold=1), progress=False)
    assert (sorted(root.rglob("*")) if root.is_dir() else []) == before  # nothing written


@pytest.mark.slow  # fine-tunes again through the command line (the API test above ran it)
def test_the_cli_fine_tunes_a_family_s_task_and_refuses_what_it_cannot(run, tmp_path, capsys):
    from nasbert.cli import main

    _conll(tmp_path / "conll")
    args = ["finetune", str(run.path), "--task", "conll2003", "--data-dir",
            str(tmp_path / "conll"), "--subnet", "small", "--max-seq-len", "64", "--epochs",
            "1", "--teacher-epochs", "1", "--lr", "3e-3", "--teacher-lr", "1e-3", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "dev f1  dev precision  dev recall" in out and "finetune/conll2003/small" in out
    assert main([*args[:-1], "--formulation", "bi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "leave --formulation and augment out" in err[0]


@pytest.mark.slow  # clean processes time every form: about two minutes for both families
@pytest.mark.parametrize("task, files", [("squad", _squad), ("conll2003", _conll)])
def test_a_family_s_students_deploy_in_float32_and_int8_on_both_runtimes(run, tmp_path,
                                                                        protocol, task, files):
    """Each form scored by the family's own metric: the exported ONNX graph under the
    student's head scores what the PyTorch model scores, int8 forms are measured too;
    length-adaptive forms (LengthDrop with drop-and-restore, then the search on held-out
    training examples) beside them."""
    from nasbert.compress.deploy import choose, prepare_deployment
    from nasbert.compress.length import LengthDropConfig, LengthSearchConfig, lat_dir
    from nasbert.families import family_of
    from nasbert.finetune.stage import finetune

    files(tmp_path / task)
    finetune(run, task, data_dir=tmp_path / task, models=["small"], config=_schedule(),
             progress=False)
    data = family_of(task).load(task, tmp_path / task)
    rows = prepare_deployment(run, data, models=["small"], protocol=protocol, bounds=None,
                              lengths=LengthSearchConfig(trials=4, rounds=1, keep=2),
                              drop=LengthDropConfig(epochs=1, lr=1e-3), progress=False)
    lat = lat_dir(run, task, "small")
    forms = {(c.precision, c.runtime): c for c in rows
             if c.folder != str(lat.relative_to(run.path))}
    assert set(forms) == {(p, r) for p in ("float32", "int8")
                          for r in ("pytorch", "onnxruntime")}
    assert all(0 <= c.metric <= 1 and c.ms > 0 for c in rows)
    # the LengthDrop model's candidates, each scored by the family on held-out training
    # examples (off dev); the search tried shorter configurations, scored the same way
    # (whether one is on the Pareto front depends on timing a tiny model)
    record = json.loads((lat / "lengths.json").read_text())
    assert {c["precision"] for c in record["candidates"]} == {"float32", "int8"}
    assert all(0 <= c["heldout"]["f1"] <= 1 for c in record["candidates"])
    import optuna

    study = optuna.load_study(study_name=None, storage=f"sqlite:///{lat / 'lengths.db'}")
    tried = [t for t in study.trials if min(t.user_attrs["length_config"]) < 1]
    assert tried and all(0 <= t.values[0] <= 1 for t in tried)
    assert forms[("float32", "onnxruntime")].metric == pytest.approx(
        forms[("float32", "pytorch")].metric, abs=0.05)
    # the query answers from them: within a generous budget, the most accurate form
    answer = choose(run, task, max(c.ms for c in rows) * 2, protocol)
    assert answer.metric == max(c.metric for c in rows)


@pytest.mark.slow  # Ray and two trials: about a minute
def test_a_sweep_tunes_a_family_s_student_on_its_own_metric(run, tmp_path):
    from nasbert.finetune.config import SweepConfig
    from nasbert.finetune.sweep import sweep

    _conll(tmp_path / "conll")
    config = SweepConfig(trials=2, epochs=(1, 2), batch_size=(16,), num_cpus=2, seed=0)
    records = sweep(run, "conll2003", data_dir=tmp_path / "conll", models=["small"],
                    base=_schedule(), config=config, progress=False)
    trials = records["small"]["trials"]
    assert len(trials) == 2 and all(t["error"] is None for t in trials)
    assert all(0 <= t["best"] <= 1 for t in trials)  # entity F1, reported each epoch
    assert records["small"]["metric"] == "f1"
