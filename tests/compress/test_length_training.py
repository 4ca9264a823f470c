"""LengthDrop training of a fine-tuned subnet and the search over length configurations,
on the tiny run and a generated SST-2."""

from __future__ import annotations

import random

import optuna
import pytest
import torch

from nasbert import ConfigError
from nasbert.compress.forms import FormsRecord
from nasbert.compress.length import (
    LengthDropConfig,
    LengthSearchConfig,
    droppable,
    lat_dir,
    sandwich,
    search_lengths,
    train_length_adaptive,
)
from nasbert.data.tasks import Examples, TaskData, load_task, task_spec
from nasbert.extract import save_subnet
from nasbert.families.sentence import load_classifier

from conftest import deploy_schedule

QUICK = deploy_schedule()  # what the shared fixture fine-tuned with
DROP = LengthDropConfig(epochs=3, lr=1e-3, heldout=0.25, max_heldout=48)


@pytest.fixture(scope="module")
def run(finetuned_run):
    """The subnets fine-tuned on SST-2 (conftest): "big" attends in both blocks, so its
    second block reads only what the first kept."""
    return finetuned_run


def test_sandwich_draws_the_smallest_then_random_configurations():
    draw = sandwich([False, True, True], LengthDropConfig(max_drop=0.3, sub_models=3, seed=1))
    first, second = draw(), draw()
    assert first[0] == second[0] == (1.0, 0.7, 0.7)  # the smallest, every step
    assert len(first) == 3 and first[1:] != second[1:]
    for config in first + second:
        assert config[0] == 1.0 and all(0.7 <= r <= 1.0 for r in config)


def test_length_drop_then_search_writes_measured_candidates(run, glue, protocol):
    data = load_task("sst2", glue)
    record = train_length_adaptive(run, data, "big", QUICK, DROP, progress=False)
    assert (record["train_examples"], record["heldout_examples"]) == (144, 48)
    assert record["droppable"] == [True, True]
    folder = lat_dir(run, "sst2", "big")
    model = load_classifier(folder / "model", data.spec, 0)
    assert model.config.length_config is None  # the trained model keeps every token by default
    search = LengthSearchConfig(trials=6, grid=(0.5, 1.0), keep=3, rounds=1)
    candidates = search_lengths(run, data, "big", QUICK, search, drop=DROP, protocol=protocol,
                                progress=False)
    configs = {c.length_config for c in candidates}
    assert (1.0, 1.0) in configs  # always; the others only where the search found them faster
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{folder / 'lengths.db'}")
    assert len(study.trials) == 6
    front = {tuple(t.user_attrs["length_config"]) for t in study.best_trials}
    assert configs - {(1.0, 1.0)} <= front
    assert {c.precision for c in candidates} == {"float32", "int8"}
    for c in candidates:
        assert c.ms > 0 and 0 <= c.metrics["dev"]["accuracy"] <= 1
        assert 0 <= c.heldout["accuracy"] <= 1 and c.device.count("int8") == (
            c.precision == "int8")
    stored = FormsRecord.load(folder / "lengths.json")
    assert stored.candidates == candidates and stored.id == "big"
    # done: the same call returns what is stored, without training or searching again
    again = search_lengths(run, data, "big", QUICK, search, drop=DROP, protocol=protocol,
                           progress=False)
    assert again == candidates


def _counting_task() -> TaskData:
    """A regression whose target is the share of 'good' among the words: it depends on
    every token, so dropping half of them moves an untrained-for model's output."""
    rng = random.Random(0)

    def split(n: int) -> Examples:
        texts, labels = [], []
        for _ in range(n):
            words = [rng.choice(("good", "bad", "the", "model")) for _ in range(rng.randint(8, 16))]
            texts.append((" ".join(words),))
            labels.append(5.0 * words.count("good") / len(words))
        return Examples(texts, labels)
    return TaskData(task_spec("stsb"), {"train": split(256), "dev": split(64)}, {})


@pytest.mark.slow  # about 2 minutes alone: the rule is learnt in 20 epochs
def test_length_drop_makes_short_configurations_agree_with_the_full_one(run, tmp_path):
    """What LengthDrop trains for: the same schedule from the same start, with and
    without the sandwich; at half the tokens, the predictions of the one trained with it
    stay nearer its full-length ones. On a regression that counts words, where the
    sandwich's loss is the squared gap itself and every token matters (measured: relative
    gap 0.53 without, 0.058 with; with 4 epochs the model had not learnt to read the
    other tokens at all, and both gaps were 1e-5)."""
    import dataclasses

    from nasbert.families.sentence import Encoded, predict
    from nasbert.finetune.distill import train_classifier

    data = _counting_task()
    tok = run.tokenizer()
    train = Encoded(tok, data.split("train"), QUICK.max_seq_len)
    dev = Encoded(tok, data.split("dev"), QUICK.max_seq_len)
    schedule = dataclasses.replace(QUICK, alpha=1.0)
    source = tmp_path / "counting"  # the gaps above were measured on this architecture
    save_subnet(run.supernet(), "E16|H16:M,F|H24:M,F", source)

    def gap(length_drop: bool) -> float:
        model = load_classifier(source, data.spec, 0)
        configs = (sandwich([True, True], LengthDropConfig(max_drop=0.5)) if length_drop
                   else None)
        train_classifier(model, tok, data, schedule, train_set=train, lr=1e-3, epochs=20,
                         batch_size=16, workdir=tmp_path / str(length_drop),
                         length_configs=configs)
        with torch.no_grad():
            full = predict(model, dev)
            model.config.length_config = [0.5, 0.5]
            short = predict(model, dev)
        return float((full - short).norm() / full.norm())

    without, with_it = gap(False), gap(True)
    assert with_it < 0.75 * without, (without, with_it)


def test_length_drop_needs_the_fine_tuned_student(run, glue):
    data = load_task("sst2", glue)
    with pytest.raises(ConfigError, match="nasbert finetune .* --task sst2 --subnet nothing"):
        train_length_adaptive(run, data, "nothing", QUICK, DROP, progress=False)


def test_a_model_without_attention_cannot_drop(run):
    model = run.supernet().extract("E16|H16:F,I|H24:S3,I")
    with pytest.raises(ConfigError, match="no attention layer"):
        droppable(model)
