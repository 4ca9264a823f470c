"""Downstream tasks: GLUE-format loaders, the embedded tweets, metrics, bad input."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from nasbert import ConfigError
from nasbert.cli import main
from nasbert.data.metrics import compute_metrics
from nasbert.data.tasks import TASKS, load_task, task_spec

from conftest import GLUE_TASKS, write_glue_task


@pytest.mark.parametrize("task", GLUE_TASKS)
def test_each_glue_task_reads_its_layout_and_scores_perfect_predictions(task, tmp_path):
    folder = write_glue_task(tmp_path, task, train=40, dev=20)
    spec = task_spec(task)
    for where in (folder, tmp_path):  # the task folder, or the GLUE root holding it
        data = load_task(task, where)
        assert set(data.splits) == {"train", *spec.dev_splits}
        assert len(data.split("train")) == 40
        assert all(len(data.split(s)) == 20 for s in spec.dev_splits)
    dev = data.split(spec.dev_splits[0])
    assert all(len(t) == len(spec.columns) and all(isinstance(x, str) and x for x in t)
               for t in dev.texts)
    if spec.is_regression:
        assert all(isinstance(y, float) for y in dev.labels)
    else:
        assert set(dev.labels) <= set(range(spec.num_labels))
        # the rule of the fixture: 'good' first means class 1, 'bad' class 2
        for (a, *_), y in zip(dev.texts, dev.labels):
            assert (a.startswith("good ") == (y == 1)) and (a.startswith("bad ") == (y == 2))
    metrics = compute_metrics(spec, dev.labels, dev.labels)
    assert set(metrics) == set(spec.metrics)
    assert all(v == pytest.approx(1.0) for v in metrics.values())


def test_metrics_match_hand_computed_values():
    # predictions 1,1,0,0 against gold 1,0,0,0: TP 1, FP 1, TN 2, FN 0
    pred, gold = [1, 1, 0, 0], [1, 0, 0, 0]
    assert compute_metrics(task_spec("cola"), pred, gold)["matthews"] == pytest.approx(
        (1 * 2 - 1 * 0) / math.sqrt(2 * 1 * 3 * 2))
    mrpc = compute_metrics(task_spec("mrpc"), pred, gold)
    assert mrpc == pytest.approx({"f1": 2 * 0.5 * 1 / 1.5, "accuracy": 0.75})
    stsb = compute_metrics(task_spec("stsb"), [1.0, 2.0, 4.0], [1.0, 3.0, 2.0])
    assert stsb["spearman"] == pytest.approx(0.5)
    assert stsb["pearson"] == pytest.approx(3 / math.sqrt(84))  # cov 1, var 42/9 and 2
    assert compute_metrics(task_spec("tweets"), [0, 1, 2, 2], [0, 1, 2, 1]) == pytest.approx(
        {"accuracy": 0.75, "macro_f1": (1 + 2 / 3 + 2 / 3) / 3})


def test_mnli_skips_rows_without_a_gold_label(tmp_path):
    folder = write_glue_task(tmp_path, "mnli", train=10, dev=5)
    path = folder / "dev_matched.tsv"
    lines = path.read_text().splitlines()
    fields = lines[1].split("\t")
    fields[-1] = "-"
    path.write_text("\n".join([lines[0], "\t".join(fields), *lines[2:]]) + "\n")
    assert len(load_task("mnli", folder).split("dev_matched")) == 4


def test_tweets_split_is_seeded_and_stratified():
    data = load_task("tweets")
    train, dev = data.split("train"), data.split("dev")
    assert len(train) + len(dev) == 38158 and 0.09 < len(dev) / (len(train) + len(dev)) < 0.11
    tc, dc = Counter(train.labels), Counter(dev.labels)
    assert set(tc) == set(dc) == {0, 1, 2}
    for c in tc:  # each class keeps its share in dev
        assert abs(dc[c] / len(dev) - tc[c] / len(train)) < 0.002
    again = load_task("tweets")
    assert again.split("dev").texts == dev.texts and again.split("dev").labels == dev.labels
    other = load_task("tweets", seed=1)
    assert other.split("dev").texts != dev.texts


def test_a_cached_teacher_depends_on_the_datas_contents_not_its_path(tmp_path, monkeypatch):
    from nasbert.finetune.config import FinetuneConfig

    folder = write_glue_task(tmp_path, "sst2", train=40, dev=20)
    config = FinetuneConfig()
    key = config.teacher_key(load_task("sst2", folder))
    monkeypatch.chdir(tmp_path)
    assert config.teacher_key(load_task("sst2", "SST-2")) == key  # spelt another way
    train = folder / "train.tsv"
    text = train.read_text()
    train.write_text(text.replace("good", "goad", 1))  # same size, other contents
    assert train.stat().st_size == len(text.encode())
    assert config.teacher_key(load_task("sst2", folder)) != key


def test_all_glue_tasks_are_known():
    assert set(GLUE_TASKS) | {"tweets"} == set(TASKS)
    assert task_spec("SST-2").name == "sst2" and task_spec("sts-b").is_regression
    assert task_spec("mnli").dev_splits == ("dev_matched", "dev_mismatched")


def test_hub_unreachable_points_to_data_dir(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConfigError, match="nyu-mll/glue/rte.*--data-dir"):
        load_task("rte")


def _break(folder, task, how):
    path = folder / ("dev_matched.tsv" if task == "mnli" else "dev.tsv")
    if how == "missing split":
        path.unlink()
    elif how == "columns":
        lines = path.read_text(encoding="utf-8").splitlines()
        path.write_text("\n".join(["a\tb\tc"] + lines[1:]) + "\n")
    elif how == "label":
        lines = path.read_text(encoding="utf-8").splitlines()
        fields = lines[2].split("\t")
        fields[1 if task == "cola" else -1] = "7"
        path.write_text("\n".join([*lines[:2], "\t".join(fields), *lines[3:]]) + "\n")
    return path


@pytest.mark.parametrize("task,how,words", [
    ("sst2", "missing split", ["dev.tsv", "is missing", "train.tsv, dev.tsv"]),
    ("mnli", "missing split", ["dev_matched.tsv", "is missing"]),
    ("sst2", "columns", ["dev.tsv", "no column 'sentence'", "header: a, b, c"]),
    ("mrpc", "columns", ["dev.tsv", "no column '#1 String'"]),
    ("sst2", "label", ["dev.tsv:3", "label '7' is not one of 0, 1"]),
    ("cola", "label", ["dev.tsv:3", "label '7'"]),
    ("rte", "label", ["dev.tsv:3", "not one of entailment, not_entailment"]),
    ("stsb", "columns", ["no column"]),
])
def test_bad_task_files_are_one_line_exit_2(task, how, words, tmp_path, capsys):
    folder = write_glue_task(tmp_path, task, train=8, dev=8)
    _break(folder, task, how)
    (tmp_path / "run").mkdir()
    assert main(["finetune", str(tmp_path / "run"), "--task", task,
                 "--data-dir", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("nasbert: error:")
    for w in words:
        assert w in err


@pytest.mark.parametrize("args,words", [
    (["--task", "nonsense"], ["task 'nonsense'", "is not a known task", "sst2"]),
    (["--task", "sst2", "--data-dir", "/nonexistent/glue"], ["/nonexistent/glue",
                                                            "does not exist"]),
])
def test_unknown_task_and_missing_folder(args, words, tmp_path, capsys):
    assert main(["finetune", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err


def test_real_glue_folders_load(shared_data):
    for task, n_train, n_dev in (("sst2", 67349, 872), ("cola", 8551, 1043),
                                 ("mrpc", 3668, 408)):
        data = load_task(task, shared_data / "glue")
        assert (len(data.split("train")), len(data.split("dev"))) == (n_train, n_dev)
    mrpc = load_task("mrpc", shared_data / "glue")
    assert Counter(mrpc.split("dev").labels) == {1: 279, 0: 129}  # GLUE's MRPC dev
