"""Sentence embeddings of any encoder folder, pooled as the teacher pools them, and their
quality on sentence pairs with gold similarity (STS-style): the Spearman and Pearson
correlation of the embeddings' cosine with the gold score, x 100. No training on the
pairs: a zero-shot score of what an encoder's states already mean.

The pooling is the teacher's (:class:`~nasbert.pooling.Pooling`, read from its
sentence-transformers folder); a plain transformers folder pools by the mean.

>>> pairs = read_pairs("../shared/data/glue/STS-B/train.tsv")               # doctest: +SKIP
>>> sts_score(run.subnet_dir("latency-8ms"), *pairs, pooling=Pooling.of(teacher))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from nasbert.errors import ConfigError
from nasbert.pooling import Pooling, pool

# STS-B's own columns; other files name theirs on the command line
COLUMNS = ("sentence1", "sentence2", "score")


def read_pairs(path: str | Path, columns: Sequence[str] = COLUMNS
               ) -> tuple[list[tuple[str, str]], list[float]]:
    """Sentence pairs and their gold scores from a TSV whose header names ``columns``
    (first sentence, second sentence, score)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("is missing; give an STS-style TSV (a header naming "
                          f"{', '.join(columns)})", source=str(path))
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"has no column {missing[0]!r} (its header: "
                              f"{', '.join(reader.fieldnames or [])}); name the columns",
                              source=str(path))
        pairs, scores = [], []
        for row in reader:
            try:
                score = float(row[columns[2]])
            except (TypeError, ValueError):
                continue  # a row whose score is missing or torn: not a pair to score
            pairs.append((row[columns[0]], row[columns[1]]))
            scores.append(score)
    if not pairs:
        raise ConfigError("holds no scored pairs", source=str(path))
    return pairs, scores


def encode(model, tokenizer, texts: Sequence[str], pooling: Pooling, *,
           batch_size: int = 64):
    """The pooled embeddings of ``texts`` (a float32 tensor, one row each)."""
    import torch

    out = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True,
                              truncation=True, max_length=pooling.max_seq_length,
                              return_tensors="pt")
            states = model(**batch).last_hidden_state
            out.append(pool(states, batch["attention_mask"], pooling).float())
    return torch.cat(out)


def load_encoder(model_dir: str | Path, tokenizer=None):
    """The encoder in ``model_dir`` (any transformers folder; a NAS-BERT one too, as
    importing nasbert registers it) and ``tokenizer``, by default the folder's own."""
    from transformers import AutoModel, AutoTokenizer

    import nasbert  # noqa: F401 - registers the nasbert model type
    from nasbert.hf.quiet import quiet_transformers

    with quiet_transformers():
        model = AutoModel.from_pretrained(str(model_dir))
        return model, tokenizer or AutoTokenizer.from_pretrained(str(model_dir))


def sts_score(model_dir: str | Path, pairs: Sequence[tuple[str, str]], scores: Sequence[float],
              *, pooling: Pooling | None = None, tokenizer=None) -> dict[str, float]:
    """Spearman and Pearson (x 100) of the cosine between each pair's embeddings and the
    gold ``scores``, for the encoder in ``model_dir`` (:func:`load_encoder`)."""
    return pair_scores(*load_encoder(model_dir, tokenizer), pairs, scores,
                       pooling or Pooling.of(model_dir))


def pair_scores(model, tokenizer, pairs: Sequence[tuple[str, str]], scores: Sequence[float],
                pooling: Pooling) -> dict[str, float]:
    """:func:`sts_score` of a loaded ``model`` (an int8 copy, say) and its tokenizer."""
    import torch
    from scipy.stats import pearsonr, spearmanr

    first = encode(model, tokenizer, [a for a, _ in pairs], pooling)
    second = encode(model, tokenizer, [b for _, b in pairs], pooling)
    cosine = torch.nn.functional.cosine_similarity(first, second).numpy()
    return {"spearman": round(100 * float(spearmanr(cosine, scores).statistic), 3),
            "pearson": round(100 * float(pearsonr(cosine, scores).statistic), 3),
            "pairs": len(pairs)}


# MRPC's columns: the paraphrase pairs a retrieval check reads
MRPC_COLUMNS = ("#1 String", "#2 String", "Quality")


def retrieval(model_dir: str | Path, pairs: Sequence[tuple[str, str]],
              labels: Sequence[float], *, pooling: Pooling | None = None,
              tokenizer=None) -> dict[str, float]:
    """Recall@1 (x 100) of paraphrase retrieval: for each positive pair (label 1), is
    its second sentence the nearest, by cosine, to its first among every pair's second
    sentence? (MRPC dev: 279 positives among 408 candidates.)"""
    return _retrieve(*load_encoder(model_dir, tokenizer), pairs, labels,
                     pooling or Pooling.of(model_dir))


def _retrieve(model, tokenizer, pairs: Sequence[tuple[str, str]], labels: Sequence[float],
              pooling: Pooling) -> dict[str, float]:
    import torch

    positives = [i for i, y in enumerate(labels) if y == 1]
    if not positives:
        raise ConfigError("holds no positive pair (label 1) to retrieve", source="pairs")
    queries = torch.nn.functional.normalize(
        encode(model, tokenizer, [pairs[i][0] for i in positives], pooling), dim=-1)
    candidates = torch.nn.functional.normalize(
        encode(model, tokenizer, [b for _, b in pairs], pooling), dim=-1)
    nearest = (queries @ candidates.T).argmax(dim=1).tolist()
    hits = sum(n == i for n, i in zip(nearest, positives))
    return {"recall@1": round(100 * hits / len(positives), 3), "queries": len(positives),
            "candidates": len(pairs)}


@dataclasses.dataclass(frozen=True)
class EmbeddingEval:
    """What to score a model's embeddings on: STS-style pairs with gold similarity, and
    optionally paraphrase pairs to retrieve (MRPC's dev file)."""

    pairs: str  # a TSV whose header names ``columns``
    columns: tuple[str, str, str] = COLUMNS
    max_pairs: int | None = None  # the first N pairs only
    retrieval: str | None = None  # MRPC's dev.tsv (or a TSV with MRPC's columns)


def evaluate(model_dirs: dict[str, str | Path], config: EmbeddingEval, *,
             pooling: Pooling, tokenizer=None) -> dict[str, dict[str, float]]:
    """Each model's (name -> folder) STS Spearman and Pearson and, with
    ``config.retrieval``, its paraphrase recall@1, all pooled by ``pooling``."""
    pairs, gold = read_pairs(config.pairs, config.columns)
    if config.max_pairs:
        pairs, gold = pairs[:config.max_pairs], gold[:config.max_pairs]
    paraphrases = (read_pairs(config.retrieval, MRPC_COLUMNS) if config.retrieval else None)
    out = {}
    for name, folder in model_dirs.items():
        model, tok = load_encoder(folder, tokenizer)  # once for both scores
        out[name] = pair_scores(model, tok, pairs, gold, pooling)
        if paraphrases is not None:
            out[name].update(_retrieve(model, tok, *paraphrases, pooling))
    return out


# the stages a run's model can be read at, earliest first
STAGES = ("extracted", "stage-one", "embeddings")


def run_encoders(run, models: Sequence[str] | None = None, *, stage: str = "latest"
                 ) -> dict[str, Path | str]:
    """The encoders of a run, by name: the teacher, then each model under ``subnets/``
    (default: all) as ``stage`` left it: ``extracted``, ``stage-one``, ``embeddings``
    (embedding distillation), or ``latest``, the last of these it has been through. A
    model that has not been through ``stage`` is left out. The static student
    (:mod:`nasbert.static`) comes last, once distilled, at ``embeddings`` and
    ``latest``."""
    from nasbert.run import STATIC, TEACHER, RunDir

    if stage not in (*STAGES, "latest"):
        raise ConfigError(f"is not a stage; give one of {', '.join(STAGES)} or latest",
                          source=f"stage {stage!r}")
    run = RunDir.of(run)
    out: dict[str, Path | str] = {TEACHER: run.teacher_name()}
    others = [m for m in (models or ()) if m != STATIC]
    for model_id in run.model_ids(others) if others or not models else []:
        folders = dict(zip(STAGES, (run.subnet_dir(model_id), run.distilled_dir(model_id),
                                    run.embedded_dir(model_id))))
        have = [k for k in STAGES if (folders[k] / "config.json").is_file()]
        pick = have[-1] if stage == "latest" else stage if stage in have else None
        if pick is not None:
            out[model_id] = folders[pick]
    static = run.embedded_dir(STATIC)
    if stage in ("embeddings", "latest") and (static / "config.json").is_file() and (
            not models or STATIC in models):
        out[STATIC] = static
    return out


def agreement(encoders: dict[str, str | Path], texts: Sequence[str], *, reference: str,
              pooling: Pooling, tokenizer=None) -> dict[str, float]:
    """How far each encoder's embeddings agree with ``reference``'s (the teacher's), with
    no labels: the Spearman correlation (x 100) between the cosine similarities of every
    pair of ``texts`` under each encoder and under the reference (100 for the reference
    itself)."""
    import torch
    from scipy.stats import spearmanr

    if len(texts) < 3:
        raise ConfigError(f"gives {len(texts)} texts; agreement needs at least 3",
                          source="agreement")
    upper = torch.triu_indices(len(texts), len(texts), offset=1)

    def similarities(folder) -> torch.Tensor:
        model, tok = load_encoder(folder, tokenizer)
        vec = torch.nn.functional.normalize(encode(model, tok, texts, pooling), dim=-1)
        return (vec @ vec.T)[upper[0], upper[1]]

    ref = similarities(encoders[reference]).numpy()
    return {name: 100.0 if name == reference else
            round(100 * float(spearmanr(similarities(folder).numpy(), ref).statistic), 3)
            for name, folder in encoders.items()}


def export_sentence_transformers(model_dir: str | Path, out: str | Path, *,
                                 teacher: str | Path, pooling: Pooling | None = None) -> Path:
    """Write ``model_dir`` (a student's encoder) as a folder that
    ``sentence_transformers.SentenceTransformer(out)`` loads: the model, the teacher's
    tokenizer (unless the folder has its own), and the modules the teacher pools with
    (``modules.json``, ``1_Pooling/``, ``2_Normalize/`` when it normalises,
    ``sentence_bert_config.json``), so that its embeddings are :func:`encode`'s. A
    NAS-BERT student needs ``import nasbert`` before loading (it registers the model
    type; without it transformers refuses the folder, naming the unknown ``nasbert``
    type). Written whole or not at all."""
    import shutil

    from transformers import AutoConfig, AutoTokenizer

    import nasbert  # noqa: F401 - registers the nasbert model type
    from nasbert.hf.quiet import quiet_transformers
    from nasbert.io import atomic_dir

    model_dir, out = Path(model_dir), Path(out)
    if not (model_dir / "config.json").is_file():
        raise ConfigError("is not a model folder (no config.json)", source=str(model_dir))
    pooling = pooling or Pooling.of(teacher)
    with quiet_transformers():
        config = AutoConfig.from_pretrained(str(model_dir))
        own = any((model_dir / f).is_file() for f in ("tokenizer.json", "vocab.txt"))
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir if own else teacher))
    with atomic_dir(out) as tmp:
        for f in model_dir.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        with quiet_transformers():
            tokenizer.save_pretrained(tmp)
        # a NAS-BERT student outputs at the teacher's width
        pooling.write(tmp, int(config.hidden_size))
    return out
