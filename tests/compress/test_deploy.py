"""The deployable family of a task and the joint query: float32 and int8 of each
fine-tuned student, measured, chosen by budget, exported so that it loads as chosen."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from nasbert import ConfigError, RunDir
from nasbert.cli import main
from nasbert.compress.deploy import (
    RUNTIMES,
    BoundConfig,
    _form,
    choose,
    deployment_candidates,
    export,
    measure_bounds,
    onnx_graph,
    prepare_deployment,
)
from nasbert.data.tasks import load_task
from nasbert.quantize import is_quantized

from conftest import DEPLOY_ARCHS as ARCHS

BOUNDS = BoundConfig(processes=2, rounds=3)  # the default's 3 x 9, cut for tiny models


@pytest.fixture(scope="module")
def run(finetuned_run, glue, protocol, tmp_path_factory):
    """A copy of the fine-tuned run without the LengthDrop models that
    ``test_length_training.py`` adds to the shared one when it runs first (the order
    pytest-xdist hands modules out in): these tests read the plain family."""
    run = RunDir(shutil.copytree(finetuned_run.path, tmp_path_factory.mktemp("own") / "run",
                                 ignore=shutil.ignore_patterns("*-lat")))
    prepare_deployment(run, load_task("sst2", glue), protocol=protocol, bounds=BOUNDS,
                       progress=False)
    return run


def test_each_student_is_measured_in_both_precisions(run, glue, protocol):
    found = deployment_candidates(run, "sst2", protocol)
    # both students are NAS-BERT models: each runs on PyTorch and as its ONNX graph
    assert sorted((c.model_id, c.precision, c.runtime) for c in found) == sorted(
        (m, p, r) for m in ARCHS for p in ("float32", "int8") for r in RUNTIMES)
    for c in found:
        assert c.ms > 0 and 0 <= c.metric <= 1 and c.length_config is None
        assert ("int8" in c.device) == (c.precision == "int8")
    fp32 = {c.model_id: c for c in found if c.precision == "float32" and c.runtime == "pytorch"}
    for model_id, c in fp32.items():  # the float32 figures are the fine-tuning's own
        record = json.loads((run.finetune_dir("sst2", model_id) / "metrics.json").read_text())
        assert c.metric == record["dev"]["accuracy"]
    # measured once: a second call with the same inputs keeps the stored figures
    before = [(run.finetune_dir("sst2") / f).read_text() for f in ("big/deploy.json",
                                                                  "latency.json")]
    prepare_deployment(run, load_task("sst2", glue), protocol=protocol, bounds=BOUNDS,
                       progress=False)
    assert [(run.finetune_dir("sst2") / f).read_text()
            for f in ("big/deploy.json", "latency.json")] == before


def test_every_form_is_bounded_over_rounds_in_several_processes(run, protocol):
    record = json.loads((run.finetune_dir("sst2") / "latency.json").read_text())
    found = deployment_candidates(run, "sst2", protocol)
    assert len(record["forms"]) == len(found) == 2 * len(RUNTIMES) * len(ARCHS)
    for c in found:  # the median and the 90th percentile of 2 processes x 3 rounds
        rounds = record["forms"][_form(c)]["rounds"]
        assert len(rounds) == BOUNDS.processes * BOUNDS.rounds and min(rounds) > 0
        assert c.ms == pytest.approx(float(np.median(rounds)), rel=1e-3)
        assert c.ms_bound == pytest.approx(float(np.quantile(rounds, 0.9)), rel=1e-3)
        assert c.ms <= c.ms_bound <= max(rounds) * 1.001
    # the stage's own figure stays in deploy.json; a form the bounds have not seen
    # (measured after them) is bounded by that figure
    stored = json.loads((run.finetune_dir("sst2", "big") / "deploy.json").read_text())
    assert {r["precision"]: r["ms"] for r in stored["candidates"]}.keys() == {"float32", "int8"}
    # the same forms, protocol and device: not measured again
    assert measure_bounds(run, "sst2", protocol, BOUNDS, progress=False).to_dict() == record
    # a student fine-tuned again under its old id (another record key): timed again
    path = run.finetune_dir("sst2", "big") / "deploy.json"
    text = path.read_text()
    try:
        path.write_text(json.dumps({**json.loads(text), "key": "fine-tuned again"}))
        again = measure_bounds(run, "sst2", protocol, BOUNDS, progress=False).to_dict()
        assert again["key"] != record["key"] and again["created"] != record["created"]
    finally:
        path.write_text(text)
    with pytest.raises(ConfigError, match="quantile"):
        BoundConfig(quantile=0.2)


def test_choose_takes_the_most_accurate_within_the_budget(run, protocol):
    found = deployment_candidates(run, "sst2", protocol)
    slowest = max(c.ms_bound for c in found)
    best = choose(run, "sst2", slowest * 1.01, protocol)
    assert best.metric == max(c.metric for c in found)
    for budget in sorted({c.ms_bound for c in found}):  # each bound, exactly: it fits
        picked = choose(run, "sst2", budget, protocol)
        fits = [c for c in found if c.ms_bound <= budget]
        assert picked.ms_bound <= budget and picked.metric == max(c.metric for c in fits)
    # a budget between a form's median and its bound: the answer fits by its bound
    for c in found:
        between = (c.ms + c.ms_bound) / 2
        if any(d.ms_bound <= between for d in found):
            assert choose(run, "sst2", between, protocol).ms_bound <= between
        else:
            with pytest.raises(ConfigError, match="impossible"):
                choose(run, "sst2", between, protocol)
    fastest = min(found, key=lambda c: c.ms_bound)
    with pytest.raises(ConfigError, match=f"latency bound is {fastest.ms_bound:.2f}"):
        choose(run, "sst2", fastest.ms_bound * 0.5, protocol)


def test_an_exported_choice_loads_as_chosen(run, protocol, tmp_path):
    int8 = next(c for c in deployment_candidates(run, "sst2", protocol)
                if c.model_id == "big" and c.precision == "int8" and c.runtime == "pytorch")
    written = export(run, int8, tmp_path / "out", onnx=False)  # int8 ONNX: test_quantize
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert is_quantized(loaded) and loaded.config.precision == "int8"
    assert "onnx" not in written
    deployment = json.loads((tmp_path / "out" / "deployment.json").read_text())
    assert deployment["model_id"] == "big" and deployment["ms"] == int8.ms
    ids = torch.tensor([[2, 5, 7, 9, 3]])
    source = AutoModelForSequenceClassification.from_pretrained(
        run.finetune_dir("sst2", "big") / "model")
    from nasbert.quantize import quantize

    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, quantize(source)(ids).logits)


def test_onnx_runtime_forms_are_the_exported_graphs_evaluated_and_exported(run, glue,
                                                                           protocol, tmp_path):
    from nasbert.export import OnnxEncoder

    found = deployment_candidates(run, "sst2", protocol)
    by = {(c.model_id, c.precision, c.runtime): c for c in found}
    ids = torch.tensor([[2, 5, 7, 9, 3, 4], [2, 8, 6, 3, 0, 0]])
    mask = (ids > 0).long()
    for m in ARCHS:
        plain, graph = by[(m, "float32", "pytorch")], by[(m, "float32", "onnxruntime")]
        # the float32 graph computes what PyTorch does: on dev, the same metric
        assert graph.metric == pytest.approx(plain.metric, abs=0.01)
        encoder = AutoModelForSequenceClassification.from_pretrained(
            run.path / plain.folder / "model").nasbert.eval()
        with torch.no_grad():
            want = encoder(ids, attention_mask=mask).last_hidden_state
        got = OnnxEncoder(onnx_graph(run, graph))(ids, attention_mask=mask).last_hidden_state
        real = mask.bool()
        assert (got[real] - want[real]).abs().max() < 1e-4
        assert onnx_graph(run, by[(m, "int8", "onnxruntime")]).is_file()
    # an ONNX Runtime form exports as the graph it was timed as, byte for byte
    c = by[("big", "int8", "onnxruntime")]
    assert c.describe() == "big (int8, full length, ONNX Runtime)"
    written = export(run, c, tmp_path / "out")
    assert written["onnx"] == str(tmp_path / "out" / "model.int8.onnx")
    assert (tmp_path / "out" / "model.int8.onnx").read_bytes() == onnx_graph(run, c).read_bytes()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["runtime"] == "onnxruntime" and config["precision"] == "int8"
    with pytest.raises(ConfigError, match="must include pytorch"):
        prepare_deployment(run, load_task("sst2", glue), protocol=protocol,
                           runtimes=("onnxruntime",), progress=False)


def test_a_length_configuration_is_exported_in_the_config(run, protocol, tmp_path):
    from nasbert.compress.deploy import Deployable

    fp32 = next(c for c in deployment_candidates(run, "sst2", protocol)
                if c.model_id == "big" and c.precision == "float32" and c.runtime == "pytorch")
    chosen = Deployable(**{**fp32.__dict__, "length_config": (1.0, 0.5)})
    written = export(run, chosen, tmp_path / "out")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    assert loaded.config.length_config == [1.0, 0.5] and not is_quantized(loaded)
    assert written["onnx"].endswith("model.onnx")  # traced: the kept length is from shapes
    ids = torch.tensor([[2, 5, 7, 9, 3, 4, 6, 8]])
    with torch.no_grad():
        out = loaded.nasbert(ids).last_hidden_state
    assert out.shape[1] == 4


def test_cli_deploy_then_query_and_a_task_not_fine_tuned(run, glue, capsys, tmp_path):
    quick = ["--timing-repeats", "3", "--timing-warmup", "1", "--timing-seq", "32", "--quiet",
             "--bound-processes", "2", "--bound-rounds", "3"]  # the fixture's protocol
    # PyTorch forms only (the ONNX Runtime ones: the fixture's and the test above)
    assert main(["deploy", str(run), "--task", "sst2", "--data-dir", str(glue), *quick,
                 "--quantisation-aware", "--qat-threshold", "0.005", "--no-onnxruntime"]) == 0
    table = capsys.readouterr().out
    assert "big (int8, full length)" in table and "small (float32, full length)" in table
    assert "ONNX Runtime" not in table
    budget = 1e6  # anything fits: the most accurate of all
    assert main(["query", str(run), "--task", "sst2", "--latency-ms", str(budget),
                 "--timing-seq", "32", "--timing-repeats", "3", "--export", str(tmp_path / "q")]
                ) == 0
    out = capsys.readouterr().out
    assert "precision" in out and "x the float32 teacher" in out and "wrote" in out
    assert "bound " in out and "runtime " in out
    assert (tmp_path / "q" / "config.json").is_file()
    assert main(["query", str(run), "--task", "sst2", "--latency-ms", str(budget), "1e5",
                 "--timing-seq", "32", "--timing-repeats", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # one document, nothing else on stdout
    assert doc["task"] == "sst2" and doc["teacher_ms"] > 0 and doc["exported"] is None
    assert [a["budget"]["latency_ms"] for a in doc["answers"]] == [budget, 1e5]
    assert all(a["ms_bound"] <= a["budget"]["latency_ms"] for a in doc["answers"])
    assert main(["query", str(run), "--task", "cola", "--latency-ms", "5"]) == 2
    err = capsys.readouterr().err
    assert f"nasbert finetune {run} --task cola" in err and len(err.strip().splitlines()) == 1
    assert main(["deploy", str(run), "--task", "sst2", "--data-dir", str(glue), *quick,
                 "--quantisation-aware", "--qat-threshold", "-0.01"]) == 2
    err = capsys.readouterr().err
    assert "threshold" in err and len(err.strip().splitlines()) == 1
    before = (run.finetune_dir("sst2") / "latency.json").read_text()
    assert main(["deploy", str(run), "--task", "sst2", "--data-dir", str(glue), *quick,
                 "--bound-rounds", "0"]) == 2
    err = capsys.readouterr().err
    assert "rounds" in err and len(err.strip().splitlines()) == 1
    assert (run.finetune_dir("sst2") / "latency.json").read_text() == before


def test_int8_that_loses_is_fine_tuned_quantisation_aware(run, glue, protocol):
    from nasbert.compress.qat import QatConfig, qat_dir, train_quantization_aware

    data = load_task("sst2", glue)
    found = prepare_deployment(run, data, protocol=protocol, qat=QatConfig(threshold=0.0),
                               bounds=BOUNDS, runtimes=("pytorch",), progress=False)
    by = {(c.model_id, c.precision, c.quantisation_aware): c for c in found
          if c.runtime == "pytorch"}
    for m in ARCHS:  # trained exactly where int8 lost something
        lost = by[(m, "float32", False)].metric - by[(m, "int8", False)].metric
        assert ((m, "int8", True) in by) == (lost > 0), (m, lost)
    # every model (threshold None): offered beside the plain int8 form, at its latency
    found = prepare_deployment(run, data, protocol=protocol, qat=QatConfig(threshold=None),
                               bounds=BOUNDS, runtimes=("pytorch",), progress=False)
    by = {(c.model_id, c.precision, c.quantisation_aware): c for c in found
          if c.runtime == "pytorch"}
    for m in ARCHS:
        aware = by[(m, "int8", True)]
        # the plain int8 form's kernels on its shapes: its median and bound
        plain = by[(m, "int8", False)]
        assert (aware.ms, aware.ms_bound) == (plain.ms, plain.ms_bound)
        assert aware.folder.endswith("-qat")
        assert "int8 quantisation-aware" in aware.describe()
    # the record is the int8 model's: loading the weights and quantising them gives its
    # predictions; the weights moved from the student's
    record = train_quantization_aware(run, data, "small", QatConfig(epochs=1), progress=False)
    folder = qat_dir(run, "sst2", "small")
    assert record["precision"] == "int8" and 0 <= record["dev"]["accuracy"] <= 1
    from nasbert.families.sentence import evaluate, load_classifier
    from nasbert.finetune.config import FinetuneConfig
    from nasbert.quantize import quantize
    from nasbert.schema import parse

    schedule = parse(FinetuneConfig, json.loads(
        (run.finetune_dir("sst2", "small") / "metrics.json").read_text())["config"], source="t")
    model = quantize(load_classifier(folder / "model", data.spec, 0))
    metrics, _ = evaluate(model, run.tokenizer(), data, schedule)
    assert metrics["dev"] == record["dev"]
    source = load_classifier(run.finetune_dir("sst2", "small") / "model", data.spec, 0)
    trained = load_classifier(folder / "model", data.spec, 0)
    assert any(not torch.equal(a, b) for a, b in zip(source.state_dict().values(),
                                                     trained.state_dict().values()))
