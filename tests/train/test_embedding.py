"""Embedding distillation: a student trained on the teacher's pooled sentence embeddings,
in the one loop, written as a sentence-transformers folder."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from nasbert import RunDir
from nasbert.cli import main
from nasbert.data.corpus import spans
from nasbert.extract import save_subnet
from nasbert.train import EmbedDistillConfig, distill_embeddings
from nasbert.train.loop import checkpoint_dirs

from conftest import WORDS, StopAt

NARROW = "E16|H16:M,F|H24:S3,I"
QUICK = EmbedDistillConfig(start="extracted", steps=12, batch_size=8, lr=3e-3,
                           min_tokens=4, max_tokens=20, dev_batches=1, checkpoint_every=4,
                           log_every=2)


@pytest.fixture(scope="module")
def run(tiny_run):
    run = RunDir(tiny_run)
    save_subnet(run.supernet(), NARROW, run.subnet_dir("narrow"))
    return run


@pytest.fixture(scope="module")
def record(run):
    return distill_embeddings(run, ["narrow"], QUICK, progress=False)["narrow"]


def test_spans_keep_cls_and_sep_around_a_stretch_of_each_row():
    rows = torch.arange(5 * 12).view(5, 12)
    ids, mask = spans(rows, 3, 6, seed=0, pad_id=-1)
    assert ids.shape == (5, 8)
    for row, span, m in zip(rows, ids, mask):
        n = int(m.sum()) - 2
        assert 3 <= n <= 6 and span[0] == row[0] and span[n + 1] == row[-1]
        body = span[1:n + 1]
        assert torch.equal(body, torch.arange(int(body[0]), int(body[0]) + n))  # contiguous
        assert (span[n + 2:] == -1).all()
    again, _ = spans(rows, 3, 6, seed=0, pad_id=-1)
    assert torch.equal(ids, again)


def test_distillation_brings_the_embeddings_to_the_teacher_s(run, record):
    """The dev loss falls and the cosine to the teacher's embeddings rises; the folder
    loads in sentence-transformers and embeds as nasbert's evaluation does."""
    start, end = record["dev_start"], record["dev_end"]
    assert end["loss"] < 0.7 * start["loss"]
    assert end["cosine_to_teacher"] > start["cosine_to_teacher"]
    assert record["steps"] == 12 and record["start"] == "extracted"
    folder = run.embedded_dir("narrow")
    assert not (run.embed_dir("narrow") / "checkpoints").exists()
    # the teacher's embeddings of the training texts, computed once for the run
    assert len(list((run.embed / "teacher").glob("*.pt"))) == 1

    from sentence_transformers import SentenceTransformer

    from nasbert.embed import encode, load_encoder
    from nasbert.pooling import Pooling

    texts = ["good model", "the small teacher is fast", "a new city"]
    ours = encode(*load_encoder(folder), texts, Pooling.of(folder))
    theirs = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_a_done_model_is_skipped_and_a_changed_config_is_not(run, record):
    again = distill_embeddings(run, ["narrow"], QUICK, progress=False)["narrow"]
    assert again["seconds"] == record["seconds"]
    from nasbert.train.embedding import embedded

    assert embedded(run, "narrow", QUICK) is not None
    assert embedded(run, "narrow", EmbedDistillConfig(**{**QUICK.__dict__, "lr": 1e-3})) is None


def test_resume_reproduces_an_uninterrupted_run(run, record, tmp_path):
    config = EmbedDistillConfig(**{**QUICK.__dict__, "seed": 1, "contrastive_weight": 0.0})
    distill_embeddings(run, ["narrow"], config, progress=False)
    want = load_file(run.embedded_dir("narrow") / "model.safetensors")
    shutil.rmtree(run.embed_dir("narrow"))
    with pytest.raises(KeyboardInterrupt):
        distill_embeddings(run, ["narrow"], config, progress=False, callbacks=[StopAt(6)])
    assert [p.name for p in checkpoint_dirs(run.embed_dir("narrow") / "checkpoints")] \
        == ["step-00000004"]
    distill_embeddings(run, ["narrow"], config, progress=False)
    got = load_file(run.embedded_dir("narrow") / "model.safetensors")
    for k in want:
        assert torch.allclose(want[k], got[k], atol=1e-6), k


def test_a_checkpoint_made_with_other_settings_is_dropped_not_resumed(run):
    """Killed under one configuration, re-run under another: it starts afresh, and ends
    where an uninterrupted run of the second configuration ends."""
    first = EmbedDistillConfig(**{**QUICK.__dict__, "seed": 2})
    second = EmbedDistillConfig(**{**QUICK.__dict__, "seed": 2, "lr": 1e-3})
    distill_embeddings(run, ["narrow"], second, progress=False)
    want = load_file(run.embedded_dir("narrow") / "model.safetensors")
    shutil.rmtree(run.embed_dir("narrow"))
    with pytest.raises(KeyboardInterrupt):
        distill_embeddings(run, ["narrow"], first, progress=False, callbacks=[StopAt(6)])
    distill_embeddings(run, ["narrow"], second, progress=False)
    got = load_file(run.embedded_dir("narrow") / "model.safetensors")
    for k in want:
        assert torch.allclose(want[k], got[k], atol=1e-6), k


def test_a_text_file_and_the_command(run, tmp_path, capsys):
    import random

    rng = random.Random(0)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
                               for _ in range(40)) + "\n\n")
    code = main(["distill-embeddings", str(run.path), "--subnet", "narrow", "--start",
                 "extracted", "--texts", str(texts), "--steps", "4", "--batch-size", "8",
                 "--dev-batches", "1", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "narrow" in out and "cosine to the teacher" in out
    import json

    made = json.loads((run.embedded_dir("narrow") / "embedding.json").read_text())
    assert made["texts"] == str(texts) and made["train_texts"] == 32


@pytest.mark.parametrize("args, words", [
    (["--subnet", "narrow"], "has no stage-one model; run `nasbert distill"),
    (["--subnet", "narrow", "--start", "extracted", "--texts", "none.txt"], "is missing"),
    (["--subnet", "narrow", "--start", "extracted", "--batch-size", "1"], "at least 2"),
])
def test_bad_input_is_one_line(run, args, words, capsys):
    assert main(["distill-embeddings", str(run.path), *args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


def test_export_writes_a_run_s_model_as_a_sentence_transformers_folder(run, tmp_path, capsys):
    """`nasbert export MODEL --sentence-transformers DIR`: a run's model takes the run's
    teacher's pooling and tokenizer; a bare folder outside a run needs --teacher."""
    from nasbert.pooling import Pooling

    out = tmp_path / "st"
    assert main(["export", str(run.subnet_dir("narrow")), "--sentence-transformers",
                 str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert Pooling.of(out) == Pooling.of(run.teacher_name())
    assert (out / "modules.json").is_file() and (out / "tokenizer_config.json").is_file()
    bare = tmp_path / "bare"
    shutil.copytree(run.subnet_dir("narrow"), bare)
    assert main(["export", str(bare), "--sentence-transformers", str(tmp_path / "x")]) == 2
    assert "give --teacher" in capsys.readouterr().err
    assert main(["export", str(bare), "--sentence-transformers", str(tmp_path / "x"),
                 "--teacher", run.teacher_name()]) == 0


def test_the_static_student_starts_as_the_teacher_s_token_embeddings_and_learns(run, capsys):
    """Each token's row is the teacher's embedding of the token alone; distilled on the
    corpus, it comes nearer the teacher's sentence embeddings; it loads through
    AutoModel, and embed-eval scores it beside the others."""
    from transformers import AutoModel

    from nasbert.embed import encode, run_encoders
    from nasbert.pooling import Pooling

    code = main(["distill-embeddings", str(run.path), "--static", "--steps", "30", "--lr",
                 "3e-2", "--batch-size", "8", "--max-tokens", "20", "--dev-batches", "1",
                 "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "static" in out
    init = run.embed_dir("static") / "init"
    static = AutoModel.from_pretrained(init)
    teacher = AutoModel.from_pretrained(run.teacher_name())
    tokenizer = run.tokenizer()
    word = tokenizer.convert_tokens_to_ids("model")
    alone = encode(teacher, tokenizer, ["model"], Pooling())[0]
    assert torch.allclose(static.embeddings.weight[word], alone, atol=1e-5)
    assert static.embeddings.weight[tokenizer.cls_token_id].abs().sum() == 0
    import json

    record = json.loads((run.embedded_dir("static") / "embedding.json").read_text())
    assert record["dev_end"]["loss"] < record["dev_start"]["loss"]
    assert run_encoders(run, ["static"])["static"] == run.embedded_dir("static")


def test_embedding_students_deploy_and_query_answers_the_most_faithful(run, capsys):
    """`deploy --task embeddings` measures every embedding student (the static one too)
    in float32 and int8, a NAS-BERT one also as ONNX Runtime graphs: its mean cosine to
    the teacher's embeddings and its latency; `query --task embeddings` answers the most
    faithful within a budget."""
    import json

    distill_embeddings(run, ["narrow"], QUICK, progress=False)
    if not (run.embedded_dir("static") / "config.json").is_file():
        assert main(["distill-embeddings", str(run.path), "--static", "--steps", "4",
                     "--batch-size", "8", "--max-tokens", "20", "--dev-batches", "1",
                     "--quiet"]) == 0
    timing = ["--timing-batch", "1", "--timing-seq", "32", "--timing-warmup", "1",
              "--timing-repeats", "3"]
    assert main(["deploy", str(run.path), "--task", "embeddings", "--bound-processes", "1",
                 "--bound-rounds", "2", "--quiet", *timing]) == 0
    out = capsys.readouterr().out
    assert "cosine" in out and "static (a static embedding student, int8)" in out
    record = json.loads((run.embed_dir("narrow") / "deploy.json").read_text())
    cosines = {(c["precision"], c["runtime"]): c["metrics"]["dev"]["cosine"]
               for c in record["candidates"]}
    assert set(cosines) == {(p, r) for p in ("float32", "int8")
                            for r in ("pytorch", "onnxruntime")}
    assert all(-1 <= v <= 1 for v in cosines.values())
    # the exported graph computes the PyTorch model's embeddings
    assert abs(cosines["float32", "onnxruntime"] - cosines["float32", "pytorch"]) < 1e-4
    assert (run.embed_dir("narrow") / "onnx" / "encoder.int8.onnx").is_file()
    static = json.loads((run.embed_dir("static") / "deploy.json").read_text())
    assert {c["runtime"] for c in static["candidates"]} == {"pytorch"}  # no encoder graph
    assert main(["query", str(run.path), "--task", "embeddings", "--latency-ms", "1000",
                 "--json", *timing]) == 0
    answer = json.loads(capsys.readouterr().out)["answers"][0]
    from nasbert.compress.deploy import deployment_candidates
    from nasbert.latency.measure import Protocol

    forms = deployment_candidates(run, "embeddings", Protocol(batch=1, seq=32, warmup=1,
                                                               repeats=3))
    assert answer["metric"] == max(c.metric for c in forms)
    assert main(["query", str(run.path), "--task", "embeddings", "--latency-ms", "1e-6",
                 *timing]) == 2
    assert "is impossible" in capsys.readouterr().err
