"""Sentence-pair tasks as a bi-encoder (nasbert.families.pairs) and held-out folds of a
training set, on the tiny run and generated pair tasks whose rule is about the pair
(the second sentence repeats the first, or shares some of its words)."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

from nasbert import ConfigError, RunDir
from nasbert.cli import main
from nasbert.data.tasks import load_task
from nasbert.extract import save_subnet
from nasbert.families.pairs import BiEncoder, is_bi_encoder
from nasbert.families.sentence import Encoded, collate, load_classifier
from nasbert.finetune.config import FinetuneConfig
from nasbert.finetune.stage import finetune, finetune_teacher
from nasbert.pooling import Pooling

from conftest import _LAYOUTS, WORDS

ARCH = "E16|H16:M,F|H24:S3,I"
BI = FinetuneConfig(epochs=6, lr=3e-3, batch_size=16, teacher_epochs=6, teacher_lr=1e-3,
                    teacher_batch_size=16, max_seq_len=24, alpha=0.5, formulation="bi")


def pair_example(rng: random.Random, task: str) -> tuple[str, str, float]:
    """STS-B: the second sentence keeps a share of the first's words (score 5 x share);
    MRPC: equivalent pairs are the first sentence shuffled, the others unrelated."""
    a = [rng.choice(WORDS) for _ in range(rng.randint(5, 9))]
    if task == "stsb":
        share = rng.random()
        b = [w if rng.random() < share else rng.choice(WORDS) for w in a]
        return " ".join(a), " ".join(b), 5.0 * sum(x == y for x, y in zip(a, b)) / len(a)
    y = rng.randrange(2)
    b = rng.sample(a, len(a)) if y else [rng.choice(WORDS) for _ in range(len(a))]
    return " ".join(a), " ".join(b), y


def write_pairs(root, task: str, *, train: int = 160, dev: int = 48, seed: int = 0,
                splits=("train", "dev")):
    rng = random.Random(seed)
    folder_name, header, row = _LAYOUTS[task]
    folder = root / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        n = train if split == "train" else dev
        rows = ["\t".join(row(*pair_example(rng, task))) for _ in range(n)]
        (folder / f"{split}.tsv").write_text("\n".join(["\t".join(header), *rows]) + "\n")
    return folder


@pytest.fixture(scope="module")
def run(tiny_run):
    run = RunDir(tiny_run)
    save_subnet(run.supernet(), ARCH, run.subnet_dir("small"))
    return run


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    write_pairs(root, "stsb")
    write_pairs(root, "mrpc")
    return root


def test_folds_partition_the_training_set_and_a_missing_dev_split_names_them(tmp_path):
    write_pairs(tmp_path, "stsb", train=50, splits=("train",))
    with pytest.raises(ConfigError, match="dev.tsv.*fold"):
        load_task("stsb", tmp_path)
    whole = load_task("stsb", tmp_path, fold=1, folds=5)
    folds = [load_task("stsb", tmp_path, fold=k, folds=5) for k in range(1, 6)]
    devs = [set(f.split("dev").texts) for f in folds]
    assert [len(d) for d in devs] == [10] * 5
    assert set().union(*devs) == set(folds[0].split("train").texts) | devs[0]  # all, once
    assert not devs[0] & set(folds[0].split("train").texts)
    assert whole.name == "stsb-fold1of5" and whole.source["fold"] == "1 of 5"
    other_seed = load_task("stsb", tmp_path, fold=1, folds=5, seed=1)
    assert set(other_seed.split("dev").texts) != devs[0]  # the split is the seed's
    with pytest.raises(ConfigError, match="fold 6 of 5"):
        load_task("stsb", tmp_path, fold=6, folds=5)


def test_a_bi_encoder_pools_each_sentence_alone_and_saves_a_sentence_transformers_folder(
        run, pairs, tmp_path):
    """The regression head is the scaled cosine of the two sentences' vectors, each
    encoded alone; its folder loads in SentenceTransformer, which gives the same
    vectors, and back as the same bi-encoder."""
    from sentence_transformers import SentenceTransformer

    data = load_task("stsb", pairs)
    pooling = Pooling(mode="mean", normalize=True, max_seq_length=24)
    model = load_classifier(run.subnet_dir("small"), data.spec, 0, formulation="bi",
                            pooling=pooling, scale=5.0).eval()
    examples = data.split("dev").subset(8)
    batch = collate([Encoded(run.tokenizer(), examples, 24, apart=True)[i] for i in range(8)])
    batch.pop("labels")
    logits = model(**batch).logits.view(-1)
    model.save_pretrained(tmp_path / "bi")
    run.tokenizer().save_pretrained(tmp_path / "bi")
    assert is_bi_encoder(tmp_path / "bi")
    st = SentenceTransformer(str(tmp_path / "bi"), device="cpu")
    u = st.encode([t[0] for t in examples.texts], convert_to_tensor=True)
    v = st.encode([t[1] for t in examples.texts], convert_to_tensor=True)
    torch.testing.assert_close(5.0 * torch.nn.functional.cosine_similarity(u, v), logits,
                               atol=1e-5, rtol=0)
    again = BiEncoder.from_pretrained(tmp_path / "bi").eval()
    assert again.pooling == pooling and again.scale == 5.0
    torch.testing.assert_close(again(**batch).logits.view(-1), logits)


def test_pair_tasks_fine_tune_as_bi_encoders_beside_the_cross_encoders(run, pairs, capsys):
    """Teacher and student, regression and classes, with distillation and a stage of
    distillation on the teacher's sentence vectors: each formulation in its own
    folders; the pair rule is learnt."""
    config = dataclasses.replace(BI, hidden_epochs=1.0)
    results = finetune(run, "stsb", data_dir=pairs, models=["small"], config=config,
                       progress=False)
    teacher_dir = run.finetune_dir("stsb", "teacher-bi")
    assert is_bi_encoder(teacher_dir / "model") and is_bi_encoder(
        run.finetune_dir("stsb", "small-bi") / "model")
    assert not run.finetune_dir("stsb", "teacher").exists()  # the cross-encoder's, untouched
    assert results["teacher"]["dev"]["pearson"] > 0.6, results["teacher"]["dev"]
    assert results["small"]["dev"]["pearson"] > 0.4, results["small"]["dev"]
    hidden = [h for h in results["small"]["history"] if h["stage"] == "hidden" and "loss" in h]
    assert hidden and all(h["loss"] == h["loss"] for h in hidden)  # ran, finite
    assert main(["finetune", str(run.path), "--task", "mrpc", "--data-dir", str(pairs),
                 "--subnet", "small", "--formulation", "bi", "--epochs", "6", "--lr", "3e-3",
                 "--batch-size", "16", "--teacher-epochs", "6", "--teacher-lr", "1e-3",
                 "--max-seq-len", "24", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "finetune/mrpc/small-bi/" in out and "finetune/mrpc/teacher-bi/" in out
    record = json.loads((run.finetune_dir("mrpc", "small-bi") / "metrics.json").read_text())
    assert record["config"]["formulation"] == "bi" and record["dev"]["accuracy"] > 0.7


def test_the_bi_encoder_is_refused_for_single_sentence_tasks(run, glue, capsys):
    assert main(["finetune", str(run.path), "--task", "sst2", "--data-dir", str(glue),
                 "--formulation", "bi", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sentence-pair" in err[0]
    assert not run.finetune_dir("sst2", "teacher-bi").exists()


def test_a_fold_fine_tunes_into_its_own_folder(run, pairs, tmp_path):
    write_pairs(tmp_path, "stsb", train=120, splits=("train",))
    config = dataclasses.replace(BI, formulation="cross", fold=2, teacher_epochs=2.0)
    data = load_task("stsb", tmp_path, fold=config.fold, folds=config.folds)
    folder = finetune_teacher(run, data, config, progress=False)
    assert folder == run.finetune_dir("stsb-fold2of5", "teacher")
    record = json.loads((folder / "metrics.json").read_text())
    assert record["data"]["fold"] == "2 of 5" and record["train_examples"] == 96
    assert record["dev"]["pearson"] == record["dev"]["pearson"]  # scored on the held-out fold


def test_the_cli_fine_tunes_sts_b_as_bi_encoders_unless_told_otherwise(run, pairs, capsys):
    """STS-B's measured formulation is the CLI's default for it (results/pairs.md);
    --formulation cross still gives the cross-encoders."""
    quick = ["--epochs", "1", "--teacher-epochs", "1", "--max-seq-len", "24",
             "--batch-size", "32", "--teacher-batch-size", "32", "--quiet"]
    for extra, folder in (([], "teacher-bi"), (["--formulation", "cross"], "teacher")):
        assert main(["finetune", str(run.path), "--task", "stsb", "--data-dir", str(pairs),
                     "--subnet", "small", *extra, *quick]) == 0
        assert f"finetune/stsb/{folder}/" in capsys.readouterr().out
