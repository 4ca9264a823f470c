"""Sparse n-gram students: mining, the tokenizer, the model (save, load, ONNX), learning a
bigram rule, and distillation from a run's fine-tuned teacher into the task's family."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from nasbert.cli import main
from nasbert.compress.configuration_ngram import NgramConfig
from nasbert.compress.ngram import (
    MiningConfig,
    NgramForSequenceClassification,
    NgramTokenizer,
    export_ngram_onnx,
    mine_ngrams,
    sparse_optimizer,
)
from nasbert.errors import ConfigError

TEXTS = ["the movie was not good", "a good movie , not bad", "the plot was bad", "good good fun",
         "not the worst film", "the movie was good fun"]


def test_mining_is_deterministic_and_respects_the_floor_and_the_cap():
    config = MiningConfig(max_n=2, min_count=2, max_ngrams=1000)
    first = mine_ngrams(TEXTS, config)
    again = mine_ngrams(list(reversed(TEXTS)), config)  # order of texts does not matter
    assert first.ngrams == again.ngrams and first.ngrams
    counts: dict[str, int] = {}
    for text in TEXTS:
        words = text.split()
        for n in (1, 2):
            for i in range(len(words) - n + 1):
                g = " ".join(words[i:i + n])
                counts[g] = counts.get(g, 0) + 1
    assert set(first.ngrams) == {g for g, c in counts.items() if c >= 2}
    # most frequent first, ties by the n-gram
    assert first.ngrams == sorted(first.ngrams, key=lambda g: (-counts[g], g))
    capped = mine_ngrams(TEXTS, MiningConfig(max_n=2, min_count=2, max_ngrams=3))
    assert capped.ngrams == first.ngrams[:3] and capped.stats["above_floor"] == len(first.ngrams)
    assert first.stats["kept"] == len(first.ngrams) and first.stats["peak_rss_mb"] > 0
    with pytest.raises(ConfigError, match="holds no words"):
        mine_ngrams(["", " , "[:0]])


def test_the_tokenizer_normalises_as_the_mining_did(tmp_path):
    mined = mine_ngrams(TEXTS, MiningConfig(max_n=2, min_count=2))
    tok = NgramTokenizer.from_mining(mined)
    ids = tok("The MOVIE was")["input_ids"]
    assert [tok.ngrams[i - 2] for i in ids] == ["the", "movie", "was", "the movie", "movie was"]
    assert tok("zzz qqq")["input_ids"] == [tok.unk_token_id]  # nothing known: [UNK]
    assert len(tok("the movie was good fun", max_length=2)["input_ids"]) == 3  # 2 words
    pair = tok(["the movie"], ["good fun"])
    assert pair["token_type_ids"][0] == [0, 0, 0, 1, 1, 1]
    tok.save_pretrained(tmp_path)
    again = NgramTokenizer.from_pretrained(tmp_path)
    assert again.ngrams == tok.ngrams and again("good movie") == tok("good movie")
    (tmp_path / "ngrams.txt").write_text("[PAD]\n[UNK]\nthe\n")
    with pytest.raises(ConfigError, match="damaged"):
        NgramTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("pair", [False, True])
def test_save_load_onnx_and_a_text_with_no_known_ngram(tmp_path, pair):
    tok = NgramTokenizer.from_mining(mine_ngrams(TEXTS, MiningConfig(min_count=1)))
    torch.manual_seed(0)
    model = NgramForSequenceClassification(NgramConfig(vocab_size=len(tok), hidden_size=16,
                                                       mlp_sizes=[8], num_labels=2, pair=pair))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is NgramForSequenceClassification
    texts = ["the movie was good", "zzz unknown words only"]
    batch = tok(texts, texts[::-1] if pair else None, return_tensors="pt")
    with torch.no_grad():
        want, got = model.eval()(**batch).logits, loaded(**batch).logits
        empty = loaded(torch.zeros(1, 4, dtype=torch.long)).logits  # all padding
    assert torch.equal(want, got)
    assert torch.isfinite(want).all() and torch.isfinite(empty).all()
    with torch.no_grad():  # the bags by offsets (padded rows) = the dense mean ONNX exports
        assert torch.allclose(loaded(**batch, dense=True).logits, got, atol=1e-6)
        assert torch.allclose(loaded(torch.zeros(1, 4, dtype=torch.long), dense=True).logits,
                              empty, atol=1e-6)
    # padding does not change a row's output
    alone = tok(texts[:1], texts[1:] if pair else None, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(loaded(**alone).logits[0], got[0], atol=1e-6)
    onnx = export_ngram_onnx(tmp_path, tmp_path / "m.onnx")
    assert onnx.stat().st_size > 0 and not list(tmp_path.glob("*.tmp*"))


def test_a_bigram_rule_is_learnt_exactly(tmp_path):
    """Positive exactly when "not bad" occurs: every word also occurs in negatives, so
    no unigram decides it."""
    from nasbert.data.tasks import TASKS, Examples, TaskData
    from nasbert.families.sentence import Encoded, evaluate
    from nasbert.finetune.config import FinetuneConfig
    from nasbert.finetune.distill import train_classifier

    rng = random.Random(0)
    vocab = ["the", "film", "was", "bad", "not", "good", "plot", "very"]

    def example() -> tuple[tuple[str], int]:
        words = [rng.choice(vocab) for _ in range(rng.randint(4, 9))]
        if rng.random() < 0.5:
            i = rng.randrange(len(words) - 1)
            words[i:i + 2] = ["not", "bad"]
        text = " ".join(words)
        return (text,), int("not bad" in text)

    def split(n):
        rows = [example() for _ in range(n)]
        return Examples([t for t, _ in rows], [y for _, y in rows])

    data = TaskData(TASKS["sst2"], {"train": split(600), "dev": split(200)}, {})
    tok = NgramTokenizer.from_mining(mine_ngrams((t for (t,) in data.split("train").texts),
                                                 MiningConfig(max_n=2, min_count=1)))
    torch.manual_seed(0)
    model = NgramForSequenceClassification(NgramConfig(vocab_size=len(tok), hidden_size=32,
                                                       mlp_sizes=[32], num_labels=2))
    config = FinetuneConfig(max_seq_len=16, seed=0)
    train_classifier(model, tok, data, config, train_set=Encoded(tok, data.split("train"), 16),
                     lr=0.1, epochs=15, batch_size=32, workdir=tmp_path,
                     optimizer=lambda lr: sparse_optimizer(model, lr), max_grad_norm=0.0)
    assert model.embeddings.weight.grad is None or model.embeddings.weight.grad.is_sparse
    metrics, _ = evaluate(model.eval(), tok, data, config)
    assert metrics["dev"]["accuracy"] == 1.0


@pytest.fixture(scope="module")
def ngram_run(finetuned_run, glue, tmp_path_factory):
    """A copy of the fine-tuned tiny run (the deployment tests own theirs), with an
    n-gram student distilled on the generated SST-2, a text file and augmented examples,
    then measured."""
    from nasbert import RunDir
    from nasbert.compress.ngram_distill import NgramStudentConfig, train_ngram_student
    from nasbert.data.tasks import load_task
    from nasbert.finetune.augment import AugmentConfig

    root = tmp_path_factory.mktemp("ngram")
    run = RunDir(shutil.copytree(finetuned_run.path, root / "run"))
    text = root / "in_domain.txt"
    data = load_task("sst2", glue)
    text.write_text("\n".join(t for (t,) in data.split("train").texts[:60]) + "\n")
    config = NgramStudentConfig(texts=(str(text),), max_texts=40,
                                augment=AugmentConfig(per_example=1), hidden_size=32,
                                mlp_sizes=(32,), unlabelled_epochs=3, epochs=3, lr=0.1,
                                batch_size=16, mining=MiningConfig(min_count=1))
    record = train_ngram_student(run, data, config, progress=False)
    return run, data, config, record


def test_the_student_distils_the_teacher_into_the_family(ngram_run, protocol, tmp_path):
    from nasbert.compress.deploy import (
        BoundConfig,
        choose,
        deployment_candidates,
        export,
        measure_bounds,
    )
    from nasbert.compress.ngram_distill import measure_ngram, train_ngram_student

    run, data, config, record = ngram_run
    folder = run.finetune_dir("sst2", "ngram")
    teacher = json.loads((run.finetune_dir("sst2", "teacher") / "metrics.json").read_text())
    assert record["transfer_examples"] == 40 + len(data.split("train"))  # sentences + 1 each
    stages = {h["stage"] for h in record["history"]}
    assert stages == {"unlabelled", "labelled"}
    # the generated rule is learnable: the student gets most of the teacher's accuracy
    assert record["dev"]["accuracy"] >= 0.8 * teacher["dev"]["accuracy"]
    assert (folder / "model" / "README.md").read_text().count("task-specific") == 1
    # made once: the same inputs give the stored record
    assert train_ngram_student(run, data, config, progress=False)["created"] == record["created"]
    deploy = measure_ngram(run, "sst2", protocol)
    assert deploy["candidates"][0]["ms"] > 0
    ngram = next(c for c in deployment_candidates(run, "sst2", protocol) if c.kind == "ngram")
    transformers = [c for c in deployment_candidates(run, "sst2", protocol) if c.kind != "ngram"]
    # the answer below every transformer's latency bound is the n-gram student
    if not transformers or ngram.ms_bound < min(c.ms_bound for c in transformers):
        budget = (ngram.ms_bound * 1.01 if not transformers
                  else min(c.ms_bound for c in transformers) * 0.99)
        picked = choose(run, "sst2", budget, protocol)
        assert picked.kind == "ngram" and "task-specific" in picked.describe()
    # the bounds time it as deployed, as every other form
    bounds = measure_bounds(run, "sst2", protocol, BoundConfig(processes=1, rounds=2),
                            progress=False)
    timed = bounds.forms[f"{ngram.model_id} float32 full"]
    assert len(timed.rounds) == 2 and 0 < timed.ms <= timed.ms_bound
    ngram = next(c for c in deployment_candidates(run, "sst2", protocol) if c.kind == "ngram")
    assert ngram.ms_bound == timed.ms_bound
    written = export(run, ngram, tmp_path / "out")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert type(model) is NgramForSequenceClassification and written["onnx"].endswith(".onnx")


def test_cli_errors_are_one_line(ngram_run, glue, capsys, tmp_path):
    run = ngram_run[0]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    for args, words in (
            ([str(run), "--task", "nope"], "is not a known task"),
            ([str(run), "--task", "stsb"], "has no teacher fine-tuned on stsb"),
            ([str(run), "--task", "sst2", "--texts", str(empty)], "is empty: no text")):
        assert main(["ngram", *args, "--data-dir", str(glue)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], lines
