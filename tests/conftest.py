from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"
SHARED_DATA = ROOT.parent / "shared" / "data"
# a quick latency protocol for tiny models
PROTOCOL_KW = dict(batch=1, seq=32, warmup=1, repeats=3)
# The longest files first (`make test` hands whole files to two processes), so that
# none comes last and holds one process while the other has nothing left to do.
FIRST = ("train/test_train_ray.py", "finetune/test_finetune.py", "test_pipeline.py",
         "search/test_search.py", "train/test_train.py", "latency/test_latency.py")


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        path = item.path.relative_to(Path(__file__).parent).as_posix()
        return FIRST.index(path) if path in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def tiny_space():
    from nasbert.space import SearchSpace

    return SearchSpace.from_yaml(SPACES / "tiny.yaml")


@pytest.fixture(scope="session")
def minilm_space():
    from nasbert.space import SearchSpace

    return SearchSpace.from_yaml(SPACES / "minilm_l6_nasbert.yaml")


@pytest.fixture(scope="session")
def minilm_prune_space():
    """The default space: pruning-shaped choices beside NAS-BERT's."""
    from nasbert.space import SearchSpace

    return SearchSpace.from_yaml(SPACES / "minilm_l6.yaml")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


WORDS = ("the a an of to in on for with by model models search network small fast large "
         "block layer layers teacher student train training loss distil distillation budget "
         "latency device cpu gpu token tokens text corpus news sport market music film "
         "science people city world year day time new old good bad first last many few "
         "is are was were be has have had will can may and or but not this that these "
         "those it its they their we our you your he she his her one two three four five").split()


def _write_tiny_teacher(folder: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + WORDS
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 takes the vocabulary itself (a vocab_file keyword is ignored)
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    assert tokenizer("good model")["input_ids"] == [2, vocab.index("good"), vocab.index("model"), 3]
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128,
                        max_position_embeddings=64)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


# the teacher families (nasbert.hf.teachers), each a tiny random model with its own kind
# of tokenizer, built here: WordPiece (BERT, ELECTRA, DistilBERT), byte-level BPE
# (RoBERTa), SentencePiece unigram (XLM-R)
TEACHER_FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert")


def _family_tokenizer(family: str):
    import random

    from transformers import (
        BertTokenizerFast,
        DistilBertTokenizerFast,
        ElectraTokenizerFast,
        RobertaTokenizerFast,
        XLMRobertaTokenizerFast,
    )

    if family in ("bert", "electra", "distilbert"):
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + WORDS
        kind = {"bert": BertTokenizerFast, "electra": ElectraTokenizerFast,
                "distilbert": DistilBertTokenizerFast}[family]
        return kind(vocab={w: i for i, w in enumerate(vocab)})
    from tokenizers import ByteLevelBPETokenizer, SentencePieceUnigramTokenizer

    rng = random.Random(0)
    text = [" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(300)]
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    names = dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                 unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    if family == "roberta":
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(text, vocab_size=400, min_frequency=1, special_tokens=special,
                                show_progress=False)
        return RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, **names)
    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(text, vocab_size=200, special_tokens=special,
                                unk_token="<unk>", show_progress=False)
    return XLMRobertaTokenizerFast(tokenizer_object=unigram._tokenizer, **names)


def write_family_teacher(folder: Path, family: str, *, seed: int = 0, **overrides) -> Path:
    """A 2-layer, 32-wide random encoder of ``family`` with its own tokenizer (the tiny
    space's shape: 4 heads, feed-forward 128; ELECTRA's embeddings 16 wide, projected)."""
    import torch
    from transformers import (
        BertConfig,
        BertModel,
        DistilBertConfig,
        DistilBertModel,
        ElectraConfig,
        ElectraModel,
        RobertaConfig,
        RobertaModel,
        XLMRobertaConfig,
        XLMRobertaModel,
    )

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _family_tokenizer(family)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    shape = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=128, max_position_embeddings=64,
                 pad_token_id=tokenizer.pad_token_id)
    if family == "distilbert":
        model = DistilBertModel(DistilBertConfig(
            vocab_size=shape["vocab_size"], dim=32, n_layers=2, n_heads=4, hidden_dim=128,
            max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id, **overrides))
    elif family in ("roberta", "xlm-roberta"):
        kind = (RobertaConfig, RobertaModel) if family == "roberta" else (XLMRobertaConfig,
                                                                        XLMRobertaModel)
        # as the published checkpoints: positions from padding_idx + 1, one token type
        config = kind[0](**{**shape, "max_position_embeddings": 64 + tokenizer.pad_token_id + 1,
                            "type_vocab_size": 1, "layer_norm_eps": 1e-5, **overrides})
        model = kind[1](config, add_pooling_layer=False)
    elif family == "electra":
        model = ElectraModel(ElectraConfig(**{**shape, "embedding_size": 16, **overrides}))
    else:
        model = BertModel(BertConfig(**{**shape, **overrides}), add_pooling_layer=False)
    # random weights spread out (not the near-zero initialisation), so that a wrong map
    # shows; the LayerNorms too
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


def _write_tiny_corpus(folder: Path, docs: int = 40, words: int = 150) -> Path:
    import random

    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(docs):
        sentences = []
        for _ in range(words // 10):
            sentences.append(" ".join(rng.choice(WORDS) for _ in range(9)) + ".")
        (folder / f"doc{i:03d}.txt").write_text(" ".join(sentences))
    return folder


class StopAt:
    """A training callback that stops after ``step`` steps, as a kill would."""

    def __init__(self, step: int):
        self.step = step

    def __call__(self, trainer) -> None:
        if trainer.step == self.step:
            raise KeyboardInterrupt


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with its own small WordPiece vocabulary, built here."""
    return _write_tiny_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    return _write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


def tiny_recipe_text(teacher: Path, corpus: Path, **train) -> str:
    settings = {"batch_size": 8, "max_steps": 40, "lr": 3.0e-3, "warmup_steps": 4,
                "checkpoint_every": 10, "log_every": 5, **train}
    train_yaml = "\n".join(f"  {k}: {v}" for k, v in settings.items())
    return f"""name: tiny
space: {SPACES / 'tiny.yaml'}
teacher: {teacher}
corpus:
  sources: [{corpus}]
  seq_len: 32
  dev_sequences: 8
train:
{train_yaml}
shrink:
  bins: 3
  warmup_epochs: 1
  epoch_steps: 10
  sample_per_bin: 8
  keep_per_bin: 2
  dev_batches: 1
"""


@pytest.fixture
def tiny_recipe(tiny_teacher, tiny_corpus, tmp_path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(tiny_recipe_text(tiny_teacher, tiny_corpus))
    return path


@pytest.fixture(scope="session")
def protocol():
    from nasbert.latency.measure import Protocol

    return Protocol(**PROTOCOL_KW)


@pytest.fixture(scope="session")
def _trained_tiny_run(tiny_teacher, tiny_corpus, tmp_path_factory, protocol) -> Path:
    """A trained, shrunk tiny run with a fitted latency predictor, built once."""
    from nasbert.latency.stage import fit, profile
    from nasbert.recipe import load_recipe
    from nasbert.train import train_supernet

    folder = tmp_path_factory.mktemp("tiny_run")
    recipe = folder / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_teacher, tiny_corpus, max_steps=20,
                                       checkpoint_every=10))
    run = folder / "run"
    train_supernet(load_recipe(recipe), run, progress=False)
    profile(run, protocol, samples=30, progress=False)
    fit(run, protocol)
    return run


@pytest.fixture(scope="module")
def tiny_run(_trained_tiny_run, tmp_path_factory):
    """A module's own copy of the trained tiny run (later stages write into it)."""
    import shutil

    return Path(shutil.copytree(_trained_tiny_run, tmp_path_factory.mktemp("run") / "run"))


def budget_at_a_third(predictor, approx, samples: int = 2_000):
    """A latency budget that search judges at a third of the usable candidates (those
    with an attention layer, which search keeps) by predicted latency: search takes the
    predictor's held-out error off a budget, and on this shared machine the tiny run's
    error reaches 30 %, which at a third of all candidates left nothing to search (CI)."""
    from nasbert.search.exact import attends
    from nasbert.search.searchers import Budget
    from nasbert.space import sample_archs

    usable = [a for a in sample_archs(approx.space.embed_sizes, approx.choices(), samples)
              if any(attends(b) for b in a.blocks)]
    predicted = sorted(float(x) for x in predictor.predict(usable))
    guard = predictor.error.get("mape", 0.0) / 100
    return Budget(latency_ms=round(predicted[len(predicted) // 3] * (1 + guard), 4))


# ----------------------------------------------------------------------------- GLUE fixtures

_LAYOUTS = {  # task -> (folder, header or None, row(text_a, text_b, label index or score))
    "cola": ("CoLA", None, lambda a, b, y: ["src", str(y), "*" if not y else "", a]),
    "sst2": ("SST-2", ["sentence", "label"], lambda a, b, y: [a, str(y)]),
    "mrpc": ("MRPC", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
             lambda a, b, y: [str(y), "1", "2", a, b]),
    "stsb": ("STS-B", ["index", "genre", "filename", "year", "old_index", "source1", "source2",
                       "sentence1", "sentence2", "score"],
             lambda a, b, y: ["0", "main-news", "f", "2012", "0", "s", "s", a, b, f"{y:.3f}"]),
    "qqp": ("QQP", ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            lambda a, b, y: ["0", "1", "2", a, b, str(y)]),
    "mnli": ("MNLI", ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                      "sentence2_binary_parse", "sentence1_parse", "sentence2_parse",
                      "sentence1", "sentence2", "label1", "gold_label"],
             lambda a, b, y: ["0", "1", "2", "fiction", "(", "(", "(", "(", a, b,
                              ("entailment", "neutral", "contradiction")[y],
                              ("entailment", "neutral", "contradiction")[y]]),
    "qnli": ("QNLI", ["index", "question", "sentence", "label"],
             lambda a, b, y: ["0", a, b, ("entailment", "not_entailment")[y]]),
    "rte": ("RTE", ["index", "sentence1", "sentence2", "label"],
            lambda a, b, y: ["0", a, b, ("entailment", "not_entailment")[y]]),
    "wnli": ("WNLI", ["index", "sentence1", "sentence2", "label"],
             lambda a, b, y: ["0", a, b, str(y)]),
}
GLUE_TASKS = tuple(_LAYOUTS)


def glue_example(rng, task: str):
    """Texts from the tiny vocabulary with a learnable rule: 'good' in the first text
    means class 1 (MNLI: the count of 'good' and 'bad', STS-B: a score from it)."""
    words = [w for w in WORDS if w not in ("good", "bad")]
    y = rng.randrange(3 if task == "mnli" else 2)
    a = " ".join(rng.choice(words) for _ in range(rng.randint(4, 10)))
    a = ("good " if y == 1 else "bad " if y == 2 else "") + a
    b = " ".join(rng.choice(words) for _ in range(rng.randint(4, 10)))
    label = 5.0 * y / 2 + rng.random() * 0.5 if task == "stsb" else y
    return a, b, label


def write_glue_task(root: Path, task: str, *, train: int = 64, dev: int = 32,
                    seed: int = 0) -> Path:
    """A small folder in the GLUE distribution's layout of ``task`` (MRPC: with the
    byte-order mark GLUE's script writes)."""
    import random

    rng = random.Random(seed)
    folder_name, header, row = _LAYOUTS[task]
    folder = root / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    splits = ({"train": train, "dev_matched": dev, "dev_mismatched": dev} if task == "mnli"
              else {"train": train, "dev": dev})
    for split, n in splits.items():
        lines = ["\t".join(header)] if header else []
        lines += ["\t".join(row(*glue_example(rng, task))) for _ in range(n)]
        text = "\n".join(lines) + "\n"
        if task == "mrpc":
            text = "\ufeff" + text
        (folder / f"{split}.tsv").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def glue(tmp_path_factory) -> Path:
    """Small SST-2 and STS-B folders in GLUE's layout, with a learnable rule."""
    root = tmp_path_factory.mktemp("glue")
    for task in ("sst2", "stsb"):
        write_glue_task(root, task, train=192, dev=64)
    return root


def quick_finetune():
    """A fine-tuning schedule that learns the tiny GLUE rule in seconds."""
    from nasbert.finetune.config import FinetuneConfig

    return FinetuneConfig(epochs=8, lr=3e-3, batch_size=16, teacher_epochs=8, teacher_lr=1e-3,
                          teacher_batch_size=16, max_seq_len=24, alpha=0.0, temperature=2.0)


# ----------------------------------------------------------------------------- deployment

DEPLOY_ARCHS = {"big": "E32|H32:M,F|H32:M,F", "small": "E16|H16:M,F|H24:S3,I"}


def deploy_schedule():
    """Half the quick schedule: the deployment tests need fine-tuned students, not good
    ones."""
    import dataclasses

    return dataclasses.replace(quick_finetune(), epochs=4, teacher_epochs=4)


@pytest.fixture(scope="session")
def finetuned_run(_trained_tiny_run, glue, tmp_path_factory):
    """The tiny run with two subnets fine-tuned on the generated SST-2, built once for
    the deployment tests (int8, length-adaptive, the joint query), which add to it."""
    import shutil

    from nasbert import RunDir
    from nasbert.extract import save_subnet
    from nasbert.finetune.stage import finetune

    run = RunDir(shutil.copytree(_trained_tiny_run, tmp_path_factory.mktemp("deploy") / "run"))
    for model_id, arch in DEPLOY_ARCHS.items():
        save_subnet(run.supernet(), arch, run.subnet_dir(model_id))
    finetune(run, "sst2", data_dir=glue, models=list(DEPLOY_ARCHS), config=deploy_schedule(),
             progress=False)
    return run
