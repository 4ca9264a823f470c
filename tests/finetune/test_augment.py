"""Transfer data for task distillation: augmented examples labelled by the teacher."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from nasbert import ConfigError, RunDir
from nasbert.data.tasks import Examples, load_task
from nasbert.extract import save_subnet
from nasbert.finetune.augment import IGNORE, AugmentConfig, WordPool, augment, perturb
from nasbert.finetune.stage import finetune_student, finetune_teacher, teacher_labelled

from conftest import quick_finetune

POOL = WordPool(["river"] * 90 + ["stone"] * 10, ["alpha", "##beta", "[CLS]", "x"])
PAIRS = Examples([("the cat sat on the mat", "a cat was on a mat"),
                  ("stocks fell sharply today", "markets dropped a lot"),
                  ("he plays the violin", "she sings in a choir")], [1, 1, 0])


def test_words_come_from_the_corpus_by_frequency_and_from_the_vocabulary():
    rng = random.Random(0)
    drawn = [POOL.draw(rng) for _ in range(4000)]
    assert set(drawn) == {"river", "stone", "alpha"}  # whole words of the vocabulary only
    share = {w: drawn.count(w) / len(drawn) for w in set(drawn)}
    assert share["alpha"] == pytest.approx(0.25, abs=0.03)
    assert share["river"] / share["stone"] == pytest.approx(9, rel=0.25)


def test_perturbation_replaces_and_deletes_at_its_rates():
    config = AugmentConfig(replace=0.5, delete=1.0)
    rng = random.Random(1)
    text = " ".join(f"w{i}" for i in range(20))
    outs = [perturb(text, POOL, config, rng).split() for _ in range(300)]
    assert all(17 <= len(o) <= 19 for o in outs)  # one span of 1 to 3 words, always
    replaced = sum(w in ("river", "stone", "alpha") for o in outs for w in o)
    assert replaced / sum(map(len, outs)) == pytest.approx(0.5, abs=0.05)
    keep = perturb(text, POOL, AugmentConfig(replace=0.0, delete=0.0), rng)
    assert keep == text


def test_augment_is_deterministic_and_recombines_pairs():
    config = AugmentConfig(per_example=40, replace=0.0, delete=0.0, recombine=0.5, seed=3)
    a = augment(PAIRS, POOL, config, ["One sentence here.", "Another one follows."])
    b = augment(PAIRS, POOL, config)
    assert a.texts == b.texts and len(a) == 120
    assert set(a.labels) == {IGNORE}
    firsts = {t[0] for t in PAIRS.texts}
    seconds = {t[1] for t in PAIRS.texts}
    assert all(t[0] in firsts and t[1] in seconds for t in a.texts)
    recombined = sum(t not in PAIRS.texts for t in a.texts)
    # recombination draws the other sentence uniformly, itself included: 0.5 * 2/3
    assert recombined / len(a) == pytest.approx(1 / 3, abs=0.1)
    c = augment(PAIRS, POOL, dataclasses.replace(config, per_example=0, corpus_sentences=5),
                ["The first one is here.", "The second one is there.", "And a third one."])
    assert len(c) == 5 and all(len(t) == 2 for t in c.texts)


@pytest.fixture(scope="module")
def run(tiny_run):
    run = RunDir(tiny_run)
    save_subnet(run.supernet(), "E16|H16:M,F|H24:S3,I", run.subnet_dir("small"))
    return run


def test_the_teacher_labels_transfer_data_once_and_students_learn_from_it(run, glue):
    data = load_task("sst2", glue)
    config = dataclasses.replace(quick_finetune(), epochs=2, hidden_epochs=1,
                                 augment=AugmentConfig(per_example=2, corpus_sentences=20))
    finetune_teacher(run, data, config, progress=False)
    examples, logits = teacher_labelled(run, data, config, progress=False)
    assert len(examples) == 2 * len(data.split("train")) + 20
    assert logits.shape == (len(examples), 2) and torch.isfinite(logits).all()
    stored = list(run.finetune_dir("sst2", "teacher").glob("augmented-*.pt"))
    assert len(stored) == 1
    again, logits2 = teacher_labelled(run, data, config, progress=False)
    assert again.texts == examples.texts and torch.equal(logits, logits2)
    record = finetune_student(run, "small", data, config, progress=False)
    assert record["augmented"] == len(examples)
    assert record["train_examples"] == len(data.split("train"))
    assert run.finetune_dir("sst2", "small-aug").is_dir()
    assert record["dev"]["accuracy"] > 0.5


def test_regression_tasks_refuse_augmentation(run, glue):
    data = load_task("stsb", glue)
    config = dataclasses.replace(quick_finetune(), augment=AugmentConfig(per_example=1))
    with pytest.raises(ConfigError, match="classification"):
        teacher_labelled(run, data, config)


def test_a_batch_of_transfer_examples_alone_trains_on_distillation(tmp_path):
    """Batches holding only teacher-labelled examples (no label: cross-entropy over none
    is NaN) learn from the teacher's logits alone, whatever the task loss's weight."""
    from nasbert.compress.configuration_ngram import NgramConfig
    from nasbert.compress.ngram import (
        MiningConfig,
        NgramForSequenceClassification,
        NgramTokenizer,
        mine_ngrams,
    )
    from nasbert.data.tasks import TASKS, TaskData
    from nasbert.families.sentence import Encoded
    from nasbert.finetune.config import FinetuneConfig
    from nasbert.finetune.distill import train_classifier

    texts = [(f"word{i % 7} word{i % 5} word{i % 3}",) for i in range(64)]
    teacher = torch.randn(64, 2)
    examples = Examples(texts, [IGNORE] * 64)
    data = TaskData(TASKS["sst2"], {"train": examples, "dev": Examples(texts[:8], [0, 1] * 4)}, {})
    tok = NgramTokenizer.from_mining(mine_ngrams((t for (t,) in texts), MiningConfig(max_n=1)))
    model = NgramForSequenceClassification(NgramConfig(vocab_size=len(tok), hidden_size=8,
                                                       mlp_sizes=[8], num_labels=2, sparse=False))
    history = train_classifier(model, tok, data, FinetuneConfig(max_seq_len=8), lr=1e-2,
                               train_set=Encoded(tok, examples, 8, teacher=teacher), epochs=2,
                               batch_size=16, alpha=0.5, workdir=tmp_path)
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.isfinite(p).all() for p in model.parameters())
