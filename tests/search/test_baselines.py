"""Hand-designed baselines: uniform stacks in the space and teacher prefixes, matched to
a target latency by measurement."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModel

from nasbert import ConfigError, NasBertModel, RunDir
from nasbert.extract import check_batch
from nasbert.latency.stage import load_predictor
from nasbert.search.baselines import (
    build_baselines,
    prefix_arch,
    save_teacher_prefix,
    uniform_archs,
)


def test_uniform_stacks_lie_in_the_default_space_too(minilm_prune_space):
    archs = uniform_archs(minilm_prune_space)
    assert len(archs) == 12  # 1..6 layers x 2 hidden sizes (blocks may be empty)
    assert str(archs["uniform-L3-H384"]) == "E384" + "|H384:M,F" * 3 + "|H384:I,I" * 3


def test_uniform_stacks_lie_in_the_space(minilm_space, tiny_space):
    archs = uniform_archs(minilm_space)
    assert len(archs) == 16  # 3..6 layers x 4 hidden sizes (every block needs a layer)
    assert str(archs["uniform-L4-H256"]) == "E256|H256:M,F,M,F|H256:M,F,I,I|H256:M,F,I,I"
    for arch in archs.values():
        minilm_space.validate(arch)
    assert set(uniform_archs(tiny_space)) == {"uniform-L1-H32", "uniform-L2-H32"}


def test_baselines_are_matched_by_measured_latency(tiny_run, protocol):
    run = RunDir(tiny_run)
    target = float(load_predictor(run, protocol).predict([run.space().parse(
        "E16|H16:M,F|H24:S3,I")])[0])
    chosen = build_baselines(run, {"1x": target}, protocol=protocol, progress=False)
    ids = chosen.groups["1x"]
    assert ids["uniform"] in ("uniform-L1-H32", "uniform-L2-H32")
    assert ids["teacher-first-k"] == "teacher-first-1"  # the only prefix of 2 layers
    # every model measured (side by side), the chosen nearest in ratio among its family
    assert set(chosen.latency_ms) >= {"teacher-first-1", "uniform-L1-H32", "uniform-L2-H32"}
    assert all(ms > 0 for ms in chosen.latency_ms.values())
    uniform = {k: v for k, v in chosen.latency_ms.items() if k.startswith("uniform-")}
    assert ids["uniform"] == min(uniform, key=lambda k: abs(math.log(uniform[k] / target)))
    # the prefix in nasbert form (the space expresses it): the kernels of the students
    prefix = AutoModel.from_pretrained(run.subnet_dir("teacher-first-1")).eval()
    assert type(prefix) is NasBertModel
    assert prefix.config.arch == str(prefix_arch(run.space(), 1))
    card = json.loads((run.subnet_dir("teacher-first-1") / "nasbert.json").read_text())
    assert card["arch"] == "teacher's first 1 of 2 layers" and card["teacher"]
    assert card["nasbert_arch"] == prefix.config.arch
    uniform = json.loads((run.subnet_dir(ids["uniform"]) / "nasbert.json").read_text())
    assert uniform["arch"] == str(uniform_archs(run.space())[ids["uniform"]])
    assert set(run.subnet_ids()) >= {ids["uniform"], "teacher-first-1"}


def test_a_prefix_in_nasbert_form_computes_what_the_truncated_teacher_does(
        tiny_run, tmp_path):
    run = RunDir(tiny_run)
    ours = AutoModel.from_pretrained(save_teacher_prefix(
        run.teacher_name(), 2, tmp_path / "ours", run.space())).eval()
    theirs = AutoModel.from_pretrained(save_teacher_prefix(
        run.teacher_name(), 2, tmp_path / "theirs")).eval()  # no space: truncated
    assert type(ours) is NasBertModel and type(theirs) is not NasBertModel
    assert theirs.config.num_hidden_layers == 2
    ids, mask = check_batch(run.space().dims.vocab_size)
    with torch.no_grad():
        want = theirs(ids, attention_mask=mask).last_hidden_state
        got = ours(ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert torch.allclose(got[real], want[real], atol=1e-5, rtol=0)


def test_a_prefix_needs_enough_layers(tiny_teacher, tmp_path):
    with pytest.raises(ConfigError, match="at least 3 layers"):
        save_teacher_prefix(str(tiny_teacher), 3, tmp_path / "prefix")
    assert not (tmp_path / "prefix").exists()


def test_a_fine_tuned_prefix_converts_in_place_to_the_same_classifier(tiny_run, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from nasbert import NasBertForSequenceClassification
    from nasbert.search.baselines import convert_to_nasbert

    run = RunDir(tiny_run)
    folder = save_teacher_prefix(run.teacher_name(), 2, tmp_path / "prefix")  # BERT form
    torch.manual_seed(0)
    bert = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3).eval()
    with torch.no_grad():  # a head as fine-tuning leaves it: nothing at its defaults
        for p in (bert.classifier.weight, bert.bert.pooler.dense.bias):
            p.normal_(0, 0.5)
    bert.save_pretrained(folder)
    (folder / "tokenizer.json").write_text("{}")
    ids, mask = check_batch(run.space().dims.vocab_size)
    with torch.no_grad():
        want = bert(ids, attention_mask=mask).logits
    assert convert_to_nasbert(folder, run.space())
    ours = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert type(ours) is NasBertForSequenceClassification and ours.config.num_labels == 3
    assert (folder / "tokenizer.json").read_text() == "{}"  # other files kept
    with torch.no_grad():
        got = ours(ids, attention_mask=mask).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert not convert_to_nasbert(folder, run.space())  # already nasbert: untouched
