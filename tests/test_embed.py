"""Zero-shot sentence-embedding quality: pooled as the teacher pools, scored on pairs."""

from __future__ import annotations

import json
import random

import pytest

from nasbert.embed import read_pairs, sts_score
from nasbert.errors import ConfigError
from nasbert.pooling import Pooling

from conftest import WORDS


def test_pooling_is_read_from_a_sentence_transformers_folder(tmp_path):
    assert Pooling.of(tmp_path) == Pooling()  # a plain folder: the mean
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    (tmp_path / "modules.json").write_text(json.dumps(
        [{"path": "", "type": "sentence_transformers.models.Transformer"},
         {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
         {"path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 64}')
    assert Pooling.of(tmp_path) == Pooling("cls", True, 64)
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}))
    with pytest.raises(ConfigError, match="exactly one"):
        Pooling.of(tmp_path)


def test_pairs_are_read_by_their_header_and_a_missing_column_is_named(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("id\tsentence1\tsentence2\tscore\n0\ta cat\ta dog\t2.5\n1\tx\ty\t\n"
                    '2\t"quoted\tz\t4\n')
    pairs, scores = read_pairs(path)
    assert pairs == [("a cat", "a dog"), ('"quoted', "z")] and scores == [2.5, 4.0]
    with pytest.raises(ConfigError, match="no column 'label'"):
        read_pairs(path, ("sentence1", "sentence2", "label"))
    with pytest.raises(ConfigError, match="is missing"):
        read_pairs(tmp_path / "none.tsv")


def test_the_packaged_teacher_scores_sts_b_pairs_and_a_random_encoder_does_not(
        tmp_path, shared_data):
    """The real teacher, pooled as its folder says, on 200 STS-B training pairs; the same
    architecture with fresh weights scores far below it."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from nasbert.teacher import resolve

    teacher = resolve("minilm-l6")
    pairs, scores = read_pairs(shared_data / "glue" / "STS-B" / "train.tsv")
    pairs, scores = pairs[:200], scores[:200]
    pooling = Pooling.of(teacher)
    assert pooling == Pooling("mean", True, 256)
    good = sts_score(teacher, pairs, scores, pooling=pooling)
    assert good["pairs"] == 200 and good["spearman"] > 70
    random = tmp_path / "random"
    AutoModel.from_config(AutoConfig.from_pretrained(teacher)).save_pretrained(random)
    bad = sts_score(random, pairs, scores, pooling=pooling,
                    tokenizer=AutoTokenizer.from_pretrained(teacher))
    assert bad["spearman"] < good["spearman"] - 20


def test_embed_eval_scores_a_run_s_encoders_and_one_folder(tiny_run, tmp_path, capsys):
    """The command on the tiny run: the teacher and every subnet, STS Spearman and
    Pearson and paraphrase recall@1, as one JSON document; one model folder alone; a
    file without the columns is one line and exit 2."""
    from nasbert.cli import main
    from nasbert.extract import save_subnet
    from nasbert.run import RunDir

    from conftest import write_glue_task

    run = RunDir(tiny_run)
    save_subnet(run.supernet(), "E16|H16:M,F|H24:S3,I", run.subnet_dir("small"))
    sts = write_glue_task(tmp_path, "stsb", train=40, dev=8) / "train.tsv"
    mrpc = write_glue_task(tmp_path, "mrpc", train=8, dev=40) / "dev.tsv"
    assert main(["embed-eval", str(run), "--pairs", str(sts), "--retrieval", str(mrpc),
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["models"]) == {"teacher", "small"} and doc["pooling"]["mode"] == "mean"
    for row in doc["models"].values():
        assert row["pairs"] == 40 and -100 <= row["spearman"] <= 100
        assert 0 <= row["recall@1"] <= 100 and row["candidates"] == 40
    folder = ["embed-eval", str(run.subnet_dir("small")), "--pairs", str(sts)]
    assert main(folder) == 2  # an extracted subnet carries no tokenizer
    assert "has no tokenizer; give --teacher" in capsys.readouterr().err
    assert main([*folder, "--max-pairs", "10", "--teacher", str(run.teacher_name())]) == 0
    assert "(10 pairs)" in capsys.readouterr().out
    assert main(["embed-eval", str(run), "--pairs", str(mrpc)]) == 2
    assert "no column 'sentence1'" in capsys.readouterr().err


def test_agreement_is_100_for_the_teacher_s_own_copy_and_less_for_fresh_weights(
        tiny_teacher, tmp_path):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from nasbert.embed import agreement

    fresh = tmp_path / "fresh"
    AutoModel.from_config(AutoConfig.from_pretrained(tiny_teacher)).save_pretrained(fresh)

    rng = random.Random(0)
    words = list(WORDS)
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(12)]
    scores = agreement({"teacher": tiny_teacher, "copy": tiny_teacher, "fresh": fresh}, texts,
                       reference="teacher", pooling=Pooling(),
                       tokenizer=AutoTokenizer.from_pretrained(tiny_teacher))
    assert scores["teacher"] == 100.0 and scores["copy"] == pytest.approx(100.0)
    assert scores["fresh"] < 90
    with pytest.raises(ConfigError, match="at least 3"):
        agreement({"teacher": tiny_teacher}, texts[:2], reference="teacher", pooling=Pooling())


def test_a_student_exports_as_a_sentence_transformers_folder_with_the_same_embeddings(
        tiny_run, tmp_path):
    """`SentenceTransformer(folder)` loads the exported student and embeds as nasbert's
    own evaluation does (to 1e-5), normalised as the teacher's pooling says."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from transformers import AutoModel, AutoTokenizer

    from nasbert.embed import encode, export_sentence_transformers
    from nasbert.extract import save_subnet
    from nasbert.run import RunDir

    run = RunDir(tiny_run)
    student = save_subnet(run.supernet(), "E16|H16:M,F|H24:S3,I", tmp_path / "student").path
    pooling = Pooling("mean", True, 32)
    out = export_sentence_transformers(student, tmp_path / "st", teacher=run.teacher_name(),
                                       pooling=pooling)
    rng = random.Random(1)
    texts = [" ".join(rng.choice(list(WORDS)) for _ in range(rng.randint(2, 40)))
             for _ in range(9)]
    theirs = sentence_transformers.SentenceTransformer(str(out), device="cpu").encode(
        texts, convert_to_tensor=True)
    ours = encode(AutoModel.from_pretrained(str(student)),
                  AutoTokenizer.from_pretrained(run.teacher_name()), texts, pooling)
    assert theirs.shape == ours.shape and (theirs - ours).abs().max().item() < 1e-5
    assert Pooling.of(out) == pooling  # the folder says how it pools
    with pytest.raises(ConfigError, match="not a model folder"):
        export_sentence_transformers(tmp_path, tmp_path / "x", teacher=run.teacher_name())
