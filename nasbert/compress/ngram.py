"""Sparse n-gram students (Sparse Distillation, Ye et al., NAACL 2022): a huge table of
word n-gram embeddings read sparsely, averaged, then a small MLP. Far below any
transformer's latency, and task-specific: it is distilled from one task's fine-tuned
teacher (:mod:`nasbert.compress.ngram_distill`).

* :func:`mine_ngrams`: the n-grams (1 to ``max_n`` words) of the distillation text that
  occur at least ``min_count`` times, the ``max_ngrams`` most frequent, in a fixed order;
* :class:`NgramTokenizer`: text to n-gram ids with the normalisation the mining used (one
  function, :func:`analyze`, does both); a text with no known n-gram is ``[UNK]``;
* :class:`NgramForSequenceClassification`: ``nn.EmbeddingBag`` (the mean; the two
  sentences of a pair apart) then the MLP, a ``PreTrainedModel`` that
  ``AutoModelForSequenceClassification`` loads after ``import nasbert``; sparse
  gradients, trained with :func:`sparse_optimizer`;
* :func:`export_ngram_onnx`: the ONNX graph, checked against PyTorch.

>>> ngrams = mine_ngrams(texts, MiningConfig(max_ngrams=1_000_000)).ngrams  # doctest: +SKIP
>>> tokenizer = NgramTokenizer(ngrams)                                       # doctest: +SKIP
>>> model = NgramForSequenceClassification(NgramConfig(vocab_size=len(tokenizer)))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import re
import resource
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoModel, AutoModelForSequenceClassification, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from nasbert.compress.configuration_ngram import TOKEN_PATTERN, NgramConfig
from nasbert.errors import ConfigError
from nasbert.io import atomic_write_text

PAD, UNK = "[PAD]", "[UNK]"
SPECIAL = (PAD, UNK)  # ids 0 and 1; the mined n-grams follow
VOCAB_FILE = "ngrams.txt"
TOKENIZER_FILE = "ngram_tokenizer.json"


@lru_cache(maxsize=8)
def _pattern(token_pattern: str) -> re.Pattern:
    return re.compile(token_pattern)


def words(text: str, *, lowercase: bool = True, token_pattern: str = TOKEN_PATTERN
          ) -> list[str]:
    return _pattern(token_pattern).findall(text.lower() if lowercase else text)


def ngrams_of(tokens: Sequence[str], max_n: int) -> list[str]:
    """Every n-gram of 1 to ``max_n`` consecutive words, by order then position."""
    return [" ".join(tokens[i:i + n]) for n in range(1, max_n + 1)
            for i in range(len(tokens) - n + 1)]


def analyze(text: str, *, max_n: int = 4, lowercase: bool = True,
            token_pattern: str = TOKEN_PATTERN, max_words: int | None = None) -> list[str]:
    """The n-grams of a text: what the mining counts and the tokenizer looks up."""
    tokens = words(text, lowercase=lowercase, token_pattern=token_pattern)
    return ngrams_of(tokens[:max_words] if max_words else tokens, max_n)


@dataclasses.dataclass(frozen=True)
class MiningConfig:
    """Which n-grams get a row: 1 to ``max_n`` words, seen at least ``min_count`` times in
    the distillation text, the ``max_ngrams`` most frequent (ties by the n-gram)."""

    max_n: int = 4  # n-grams of 1 to max_n words
    min_count: int = 2  # times an n-gram must occur
    max_ngrams: int = 1_000_000  # rows of the table, at most
    lowercase: bool = True
    token_pattern: str = TOKEN_PATTERN

    def __post_init__(self) -> None:
        from nasbert.schema import check

        check(1 <= self.max_n <= 8, "must be in [1, 8]", field="max_n")
        check(self.min_count >= 1, "must be at least 1", field="min_count")
        check(self.max_ngrams >= 1, "must be at least 1", field="max_ngrams")
        try:
            re.compile(self.token_pattern)
        except re.error as e:
            raise ConfigError(f"is not a regular expression ({e})", source="mining",
                              field="token_pattern") from None


@dataclasses.dataclass
class Mined:
    ngrams: list[str]
    stats: dict  # texts, distinct n-grams counted, kept, floor and cap, seconds, peak memory


def mine_ngrams(texts: Iterable[str], config: MiningConfig = MiningConfig()) -> Mined:
    """The n-gram vocabulary of ``texts``: deterministic (the same texts give the same
    list in the same order), every n-gram at least ``min_count`` times, at most
    ``max_ngrams``. Counting is ``collections.Counter`` over every n-gram; its memory
    (the process's peak resident size) is reported in ``stats``."""
    start = time.time()
    counts: Counter[str] = Counter()
    n_texts = 0
    for text in texts:
        counts.update(analyze(text, max_n=config.max_n, lowercase=config.lowercase,
                              token_pattern=config.token_pattern))
        n_texts += 1
    if not counts:
        raise ConfigError("holds no words; give text to mine n-grams from",
                          source="distillation text")
    kept = [(c, g) for g, c in counts.items() if c >= config.min_count]
    kept.sort(key=lambda cg: (-cg[0], cg[1]))
    ngrams = [g for _, g in kept[:config.max_ngrams]]
    by_order = Counter(g.count(" ") + 1 for g in ngrams)
    stats = {"texts": n_texts, "distinct": len(counts), "above_floor": len(kept),
             "kept": len(ngrams), "by_order": {str(n): by_order[n] for n in sorted(by_order)},
             "config": dataclasses.asdict(config), "seconds": round(time.time() - start, 1),
             "peak_rss_mb": round(peak_rss_mb(), 1)}
    return Mined(ngrams, stats)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class NgramTokenizer:
    """Text (or a pair of texts) to n-gram ids, as the mining normalised it. Called like
    a transformers tokenizer (``tokenizer(texts, pairs, truncation=True,
    max_length=64)``: ``input_ids``, ``attention_mask``, and ``token_type_ids`` for
    pairs; ``return_tensors="pt"``: padded tensors), so the fine-tuning code reads its
    output unchanged. ``max_length`` counts words, as a transformer's counts tokens (a
    text of ``L`` words has up to ``max_n * L`` ids). Its own class rather than a
    transformers tokenizer: n-grams overlap, which the ``tokenizers`` pipeline
    (pre-tokeniser, then one model over the pieces) cannot produce."""

    pad_token_id, unk_token_id = 0, 1

    def __init__(self, ngrams: Sequence[str], *, max_n: int = 4, lowercase: bool = True,
                 token_pattern: str = TOKEN_PATTERN):
        self.ngrams = list(ngrams)
        self.max_n, self.lowercase, self.token_pattern = max_n, lowercase, token_pattern
        self.ids = {g: i + len(SPECIAL) for i, g in enumerate(self.ngrams)}

    @classmethod
    def from_mining(cls, mined: Mined) -> NgramTokenizer:
        c = mined.stats["config"]
        return cls(mined.ngrams, max_n=c["max_n"], lowercase=c["lowercase"],
                   token_pattern=c["token_pattern"])

    def __len__(self) -> int:
        return len(SPECIAL) + len(self.ngrams)

    def encode(self, text: str, max_words: int | None = None) -> list[int]:
        """The ids of the text's known n-grams (``[UNK]`` alone when none is known)."""
        grams = analyze(text, max_n=self.max_n, lowercase=self.lowercase,
                        token_pattern=self.token_pattern, max_words=max_words)
        ids = [i for i in map(self.ids.get, grams) if i is not None]
        return ids or [self.unk_token_id]

    def __call__(self, text: str | Sequence[str], text_pair: str | Sequence[str] | None = None,
                 *, truncation: bool = True, max_length: int | None = None,
                 return_tensors: str | None = None, **_) -> dict:
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        pairs = None if text_pair is None else ([text_pair] if single else list(text_pair))
        cap = max_length if truncation else None
        input_ids, types = [], []
        for i, t in enumerate(texts):
            first = self.encode(t, cap)
            second = self.encode(pairs[i], cap) if pairs is not None else []
            input_ids.append(first + second)
            types.append([0] * len(first) + [1] * len(second))
        out = {"input_ids": input_ids, "attention_mask": [[1] * len(x) for x in input_ids]}
        if pairs is not None:
            out["token_type_ids"] = types
        if return_tensors == "pt":  # padded with [PAD] (0) to the longest
            n = max(map(len, input_ids))
            return {k: torch.tensor([row + [0] * (n - len(row)) for row in v])
                    for k, v in out.items()}
        if return_tensors is not None:
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' or None")
        return {k: v[0] for k, v in out.items()} if single else out

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / VOCAB_FILE, "".join(g + "\n" for g in (*SPECIAL, *self.ngrams)))
        atomic_write_text(folder / TOKENIZER_FILE, json.dumps(
            {"tokenizer_class": type(self).__name__, "max_n": self.max_n,
             "lowercase": self.lowercase, "token_pattern": self.token_pattern,
             "size": len(self)}, indent=1))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> NgramTokenizer:
        folder = Path(folder)
        settings_file = folder / TOKENIZER_FILE
        if not settings_file.is_file() or not (folder / VOCAB_FILE).is_file():
            raise ConfigError(f"holds no n-gram tokenizer ({TOKENIZER_FILE}, {VOCAB_FILE}); "
                              "give an n-gram student's folder", source=str(folder))
        settings = json.loads(settings_file.read_text())
        rows = (folder / VOCAB_FILE).read_text(encoding="utf-8").split("\n")[:-1]
        if tuple(rows[:len(SPECIAL)]) != SPECIAL or len(rows) != settings["size"]:
            raise ConfigError(f"does not match {TOKENIZER_FILE} (size {settings['size']}); "
                              "the folder is damaged, write it again",
                              source=str(folder / VOCAB_FILE))
        return cls(rows[len(SPECIAL):], max_n=settings["max_n"], lowercase=settings["lowercase"],
                   token_pattern=settings["token_pattern"])


class NgramForSequenceClassification(PreTrainedModel):
    """The mean of the text's n-gram embeddings (``nn.EmbeddingBag``; ``[PAD]``, id 0,
    is left out of the mean, as is whatever the attention mask marks as padding), then
    the MLP. Classification and regression, with transformers' losses."""

    config_class = NgramConfig
    config: NgramConfig
    base_model_prefix = "ngram"
    main_input_name = "input_ids"

    def __init__(self, config: NgramConfig):
        super().__init__(config)
        # mode "mean" with padding_idx rather than "sum" with weights from the mask:
        # measured here at batch 1,024 x 60 ids, the weighted sum took 3.6x as long
        self.embeddings = nn.EmbeddingBag(config.vocab_size, config.hidden_size, mode="mean",
                                          sparse=config.sparse, padding_idx=0)
        widths = [config.hidden_size * (4 if config.pair else 1), *config.hidden_layers]
        # the hidden layers (each: linear, ReLU, dropout), applied as functions in
        # `forward`: at batch 1 the student is dispatch-bound, and a module call per
        # ReLU and dropout cost more than their arithmetic (measured: module calls 24 us,
        # the functions 10 us, of a forward of about 90 us)
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.classifier = nn.Linear(widths[-1], config.num_labels)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.EmbeddingBag):
            module.weight.normal_(0.0, self.config.initializer_range)
            module.weight[0].zero_()
        elif isinstance(module, nn.Linear):  # PyTorch's default (fan-in) for a ReLU MLP
            module.reset_parameters()

    def _mean(self, ids: Tensor, dense: bool) -> Tensor:
        if not dense:
            # EmbeddingBag without padding_idx: each row's real ids as one bag (offsets).
            # Measured in one process (a 482,992 x 128 table, 1,024 rows of 512 ids, a
            # fifth of them padding): 16.6 ms against 107.5 ms through padding_idx; at
            # batch 1 with no padding the 2-D form is the fastest (22 us against 48 us).
            weight, sparse = self.embeddings.weight, self.embeddings.sparse
            keep = ids != 0
            if bool(keep.all()):
                return nn.functional.embedding_bag(ids, weight, mode="mean", sparse=sparse)
            lengths = keep.sum(1)
            return nn.functional.embedding_bag(ids[keep], weight, lengths.cumsum(0) - lengths,
                                               mode="mean", sparse=sparse)
        # the same mean as a gather and a sum (what ONNX exports as Gather and ReduceSum:
        # its export of EmbeddingBag is a loop, measured 7.5 ms at 1 x 512 ids)
        keep = (ids != 0).to(self.embeddings.weight.dtype).unsqueeze(-1)
        rows = nn.functional.embedding(ids, self.embeddings.weight) * keep
        return rows.sum(1) / keep.sum(1).clamp(min=1.0)

    def features(self, input_ids: Tensor, token_type_ids: Tensor | None = None, *,
                 dense: bool = False) -> Tensor:
        """What the MLP reads: the mean embedding (pairs: ``[u, v, |u - v|, u * v]``)."""
        if not self.config.pair:
            return self._mean(input_ids, dense)
        second = (torch.zeros_like(input_ids) if token_type_ids is None
                  else token_type_ids.to(input_ids.dtype))
        u = self._mean(input_ids * (1 - second), dense)
        v = self._mean(input_ids * second, dense)
        return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None, *,
                dense: bool = False, **kwargs) -> SequenceClassifierOutput:
        if attention_mask is not None:
            input_ids = input_ids * attention_mask.to(input_ids.dtype)
        x = self.features(input_ids, token_type_ids, dense=dense)
        for layer in self.mlp:
            x = nn.functional.linear(x, layer.weight, layer.bias).relu_()
            if self.training:
                x = nn.functional.dropout(x, self.config.hidden_dropout_prob, True)
        logits = nn.functional.linear(x, self.classifier.weight, self.classifier.bias)
        loss = None
        if labels is not None:
            if self.config.num_labels == 1:
                loss = nn.functional.mse_loss(logits.view(-1), labels.to(logits.dtype).view(-1))
            else:
                loss = nn.functional.cross_entropy(logits, labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def memory_bytes(self) -> dict[str, int]:
        """The table's and the MLP's weights, in bytes."""
        table = self.embeddings.weight
        rest = sum(p.numel() * p.element_size() for n, p in self.named_parameters()
                   if not n.startswith("embeddings."))
        return {"table": table.numel() * table.element_size(), "mlp": rest}


AutoModel.register(NgramConfig, NgramForSequenceClassification, exist_ok=True)
AutoModelForSequenceClassification.register(NgramConfig, NgramForSequenceClassification,
                                            exist_ok=True)


def sparse_optimizer(model: NgramForSequenceClassification, lr: float,
                     table_lr: float | None = None) -> torch.optim.Optimizer:
    """Adagrad, one optimiser for the sparse table and the dense MLP (made for sparse
    features: each row's step shrinks with its own gradients, so rare n-grams learn as
    fast as common ones); the table at ``table_lr`` (default ``lr``). No weight decay:
    Adagrad takes none with sparse gradients."""
    # say so explicitly (the default, unchecked, is kept): else torch warns at every step
    torch.sparse.check_sparse_tensor_invariants.disable()
    table = [model.embeddings.weight]
    rest = [p for n, p in model.named_parameters() if not n.startswith("embeddings.")]
    return torch.optim.Adagrad([{"params": table, "lr": table_lr or lr},
                                {"params": rest, "lr": lr}], lr=lr)


def load_ngram(folder: str | Path) -> tuple[NgramForSequenceClassification, NgramTokenizer]:
    """The student and its tokenizer from a saved folder."""
    from nasbert.hf.quiet import quiet_transformers

    with quiet_transformers():
        model = NgramForSequenceClassification.from_pretrained(str(folder))
    return model.eval(), NgramTokenizer.from_pretrained(folder)


def export_ngram_onnx(folder: str | Path, out: str | Path, *, atol: float = 1e-5) -> Path:
    """The student (n-gram ids, mask and, for pairs, token types in; logits out) as ONNX,
    with dynamic batch and length, the mean written as a gather and a sum; checked against
    PyTorch with ONNX Runtime on random batches (1 x 7, 3 x 40, 8 x 512 ids): the largest
    absolute difference of the logits must be at most ``atol``. Written to a temporary
    file and renamed when it passes."""
    import os
    import tempfile
    import warnings

    import numpy as np

    from nasbert.export import ort_session
    from nasbert.hf.quiet import quiet_logger
    from nasbert.provenance import provenance

    model, _ = load_ngram(folder)
    names = ["input_ids", "attention_mask", *(["token_type_ids"] if model.config.pair else [])]

    class Logits(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            return self.m(input_ids, attention_mask, token_type_ids, dense=True).logits

    def example(b: int, t: int, seed: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(1, model.config.vocab_size, (b, t), generator=g)
        mask = torch.ones_like(ids)
        mask[0, t // 2 + 1:] = 0  # a padded row
        feeds = {"input_ids": ids * mask, "attention_mask": mask}
        if model.config.pair:
            feeds["token_type_ids"] = (torch.arange(t) >= t // 3).long().expand(b, t) * mask
        return feeds

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        batch_dim, ids_dim = torch.export.Dim("batch"), torch.export.Dim("ids")
        with warnings.catch_warnings(), torch.no_grad(), quiet_logger("torch.onnx"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                Logits(model).eval(), tuple(example(2, 16, 0).values()), dynamo=True,
                input_names=names, output_names=["logits"], verbose=False,
                dynamic_shapes={k: {0: batch_dim, 1: ids_dim} for k in names})
        proto = program.model_proto
        for k, v in {"nasbert.model_type": model.config.model_type,
                     **{f"nasbert.{k}": str(v) for k, v in provenance().items()}}.items():
            proto.metadata_props.add(key=k, value=v)
        import onnx

        onnx.save(proto, tmp)
        session = ort_session(tmp)
        for b, t in ((1, 7), (3, 40), (8, 512)):
            feeds = example(b, t, b * 1000 + t)
            got = session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
            with torch.no_grad():
                want = model(**feeds).logits.numpy()
            diff = float(np.abs(got - want).max())
            if diff > atol:
                raise ConfigError(f"differs from PyTorch by {diff:.2e} at batch {b} x {t} ids "
                                  f"(> {atol:g}); not written", source=str(out))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
