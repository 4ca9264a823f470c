"""Teacher families (nasbert.hf.teachers): each supported family is read exactly, in the
supernet and in an extracted model; the rest are refused before any work."""

from __future__ import annotations

import json

import pytest
import torch

from nasbert.errors import ConfigError
from nasbert.hf.teachers import check_batch, family_of
from nasbert.supernet import Supernet
from nasbert.teacher import Teacher
from nasbert.train.inherit import check_teacher_path, inherit, teacher_path

from conftest import TEACHER_FAMILIES, tiny_recipe_text, write_family_teacher


@pytest.fixture(scope="module", params=TEACHER_FAMILIES)
def family_teacher(request, tmp_path_factory):
    return request.param, write_family_teacher(tmp_path_factory.mktemp(request.param),
                                               request.param)


def _original(folder):
    from transformers import AutoModel

    return AutoModel.from_pretrained(folder).eval()


def test_the_teacher_path_and_an_extracted_model_equal_the_teacher(family_teacher, tiny_space,
                                                                   tmp_path):
    from nasbert.importance import score
    from nasbert.model import NasBertModel

    family, folder = family_teacher
    teacher = Teacher.load(str(folder), tiny_space)
    assert teacher.describe()["model_type"] == family
    space = teacher.fitted_space(tiny_space)
    net = Supernet(space, dropout=0.0, attention_dropout=0.0,
                   layer_norm_eps=teacher.config.layer_norm_eps).eval()
    ids, mask = check_batch(_original(folder).config, rows=3, length=20)
    # inherited through an importance permutation, as a run does
    importance = score(teacher.model, [(ids, torch.ones_like(ids))], criterion="magnitude")
    done = inherit(net, teacher, importance)
    assert done == ["embeddings", "block 0", "block 1"]
    record = check_teacher_path(net, teacher, ids, initialised=done)
    assert record["max_abs_diff"] <= 1e-5, record
    # against the teacher as transformers runs it, in its own family's conventions
    # (RoBERTa's position offset, ELECTRA's projection, DistilBERT's names)
    original = _original(folder)
    arch = teacher_path(space, teacher.model.config.embedding_size
                        if family == "electra" else 32)
    with torch.no_grad():
        want = original(input_ids=ids, attention_mask=mask).last_hidden_state
        got = net(ids, mask, arch=arch).last_hidden_state
        real = mask.bool()
        assert (want[real] - got[real]).abs().max() <= 1e-5
        # an extracted teacher-shaped model, saved and loaded, computes the same
        net.extract(arch).save_pretrained(tmp_path / "student")
        student = NasBertModel.from_pretrained(tmp_path / "student").eval()
        out = student(input_ids=ids, attention_mask=mask).last_hidden_state
        assert (want[real] - out[real]).abs().max() <= 1e-5


def test_a_wrong_weight_map_is_caught_by_the_check(tiny_space, tmp_path):
    """The check fails when the path is not the teacher: a RoBERTa teacher whose position
    offset is ignored (the mistake nasbert used to make) is off by far more than 1e-4."""
    folder = write_family_teacher(tmp_path / "roberta", "roberta")
    teacher = Teacher.load(str(folder), tiny_space)
    space = teacher.fitted_space(tiny_space)
    net = Supernet(space, dropout=0.0, attention_dropout=0.0,
                   layer_norm_eps=teacher.config.layer_norm_eps)
    done = inherit(net, teacher, None)
    ids, _ = check_batch(teacher.config, length=20)
    table = net.embeddings.position_embeddings.weight
    with torch.no_grad():  # what reading the table from row 0 would have given
        table.copy_(torch.roll(table, 2, dims=0))
    with pytest.raises(ConfigError, match="differs from the teacher by .* fit the space"):
        check_teacher_path(net, teacher, ids, initialised=done)


@pytest.mark.parametrize("kind", ["albert", "deberta-v2", "gpt2", "relu"])
def test_unsupported_families_are_refused_naming_the_supported(kind):
    from transformers import AlbertConfig, BertConfig, DebertaV2Config, GPT2Config

    config = {"albert": AlbertConfig, "deberta-v2": DebertaV2Config, "gpt2": GPT2Config,
              "relu": lambda: BertConfig(hidden_act="relu")}[kind]()
    with pytest.raises(ConfigError) as e:
        family_of(config)
    assert "BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT" in str(e.value) or "GELU" in str(e.value)


def test_the_cli_refuses_an_unsupported_teacher_before_any_work(tiny_corpus, tmp_path,
                                                                capsys):
    from transformers import AlbertConfig, AlbertModel

    from nasbert.cli import main

    folder = tmp_path / "albert"
    AlbertModel(AlbertConfig(vocab_size=64, embedding_size=16, hidden_size=32,
                             num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=128)).save_pretrained(folder)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(folder, tiny_corpus))
    run = tmp_path / "run"
    capsys.readouterr()  # what saving the teacher printed
    # in this process: the same main() the console script runs
    assert main(["train-supernet", str(run), "--recipe", str(recipe)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "'albert' model (layers shared across depth)" in lines[0]
    assert "DistilBERT" in lines[0]
    assert not run.exists()


def test_a_teacher_the_space_cannot_hold_fails_at_the_check(tiny_corpus, tmp_path):
    """A BERT teacher whose feed-forward (64) is not the space's (128): its blocks cannot
    be inherited, and the run stops before training with one line (the summary of a run
    that passes records the check: see the end-to-end tests)."""
    from nasbert import RunDir
    from nasbert.recipe import load_recipe
    from nasbert.train import train_supernet

    folder = write_family_teacher(tmp_path / "narrow", "bert", intermediate_size=64)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(folder, tiny_corpus, max_steps=4))
    with pytest.raises(ConfigError,
                       match="differs from the teacher by .*inherited: embeddings, basis 0"):
        train_supernet(load_recipe(recipe), tmp_path / "run", progress=False)
    # on Ray's workers too: checked in this process before any worker starts
    recipe.write_text(tiny_recipe_text(folder, tiny_corpus, max_steps=4)
                      + "scaling:\n  workers: 2\n")
    with pytest.raises(ConfigError, match="differs from the teacher by"):
        train_supernet(load_recipe(recipe), tmp_path / "ray", progress=False)
    assert not RunDir(tmp_path / "ray").ray_storage.exists()
    # train.init: random skips the check, and says so in the summary
    recipe.write_text(tiny_recipe_text(folder, tiny_corpus, max_steps=4, init="random"))
    summary = train_supernet(load_recipe(recipe), tmp_path / "run2", progress=False)
    assert summary["teacher_path_check"] == {"skipped": "train.init is random"}


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in TEACHER_FAMILIES if f != "bert"])
def test_every_family_runs_the_quickstart_end_to_end(family, tiny_corpus, glue, tmp_path,
                                                     protocol):
    """Supernet (checked against the teacher), search, baselines, fine-tuning of the
    teacher (its own family's classifier) and the students, with the family's tokenizer."""
    from transformers import AutoTokenizer

    from nasbert import RunDir
    from nasbert.pipeline import QuickstartConfig, quickstart

    from conftest import quick_finetune

    folder = write_family_teacher(tmp_path / family, family)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(folder, tiny_corpus, max_steps=20))
    # speedup 0.2: any path fits; at this size the teachers' own implementations differ
    # in overhead more than the paths do (a busy machine makes it worse)
    config = QuickstartConfig(recipe=str(recipe), task="sst2", data_dir=str(glue),
                              speedups=(0.2,), latency_samples=12, search_trials=20, top_k=2,
                              finetune=quick_finetune(), ngram=None, reach=100.0)
    run = RunDir(tmp_path / "run")
    rows = quickstart(run, config, protocol=protocol, progress=False)
    summary = json.loads(run.summary.read_text())
    assert summary["teacher_path_check"]["max_abs_diff"] <= 1e-4
    assert summary["teacher"]["model_type"] == family
    kinds = [r.kind for r in rows]
    assert kinds[0] == "teacher" and "searched" in kinds and "teacher-first-k" in kinds
    assert all(0.0 <= r.metric <= 1.0 for r in rows)
    # the fine-tuned student is delivered with the teacher's own tokenizer beside it
    searched = next(r for r in rows if r.kind == "searched")
    assert searched.target == "0.2x"
    delivered = run.finetune_dir("sst2", searched.model_id) / "model"
    theirs, ours = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(delivered)
    assert type(ours) is type(theirs) and ours.get_vocab() == theirs.get_vocab()
    text = "the small model is fast"
    assert ours(text)["input_ids"] == theirs(text)["input_ids"]
    # and its encoder exports to sentence-transformers, with the same embeddings
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from transformers import AutoModel

    from nasbert.embed import encode, export_sentence_transformers
    from nasbert.pooling import Pooling

    pooling = Pooling("mean", True, 32)
    student = run.subnet_dir(searched.model_id)
    out = export_sentence_transformers(student, tmp_path / "st", teacher=str(folder),
                                       pooling=pooling)
    texts = ["the small model is fast", "a teacher and its student", "news . sport"]
    exported = sentence_transformers.SentenceTransformer(str(out), device="cpu").encode(
        texts, convert_to_tensor=True)
    direct = encode(AutoModel.from_pretrained(str(student)), theirs, texts, pooling)
    assert (exported - direct).abs().max().item() < 1e-5


@pytest.mark.parametrize("family", TEACHER_FAMILIES)
def test_the_teacher_first_k_baseline_is_a_nasbert_model_of_the_teacher(family, tiny_space,
                                                                         tmp_path):
    from nasbert.model import NasBertModel
    from nasbert.search.baselines import save_teacher_prefix

    folder = write_family_teacher(tmp_path / family, family)
    space = Teacher.load(str(folder), tiny_space).fitted_space(tiny_space)
    out = save_teacher_prefix(str(folder), 1, tmp_path / "first-1", space)
    info = json.loads((out / "nasbert.json").read_text())
    assert info["nasbert_arch"].endswith("|H32:I,I")  # one layer, in nasbert form
    model = NasBertModel.from_pretrained(out).eval()
    original = _original(folder)
    ids, mask = check_batch(original.config, length=16)
    with torch.no_grad():  # the teacher's embeddings and first layer, as it runs them
        want = original(input_ids=ids, attention_mask=mask,
                        output_hidden_states=True).hidden_states[1]
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert (want[real] - got[real]).abs().max() <= 1e-5
