"""Offline compression: a fine-tuned BERT classifier in, a smaller one out, with no
training in between (``nasbert compress``).

Methods (each in its own module):

* ``autoencoder``: each linear layer followed by the linear autoencoder of its outputs
  on calibration text (:mod:`~nasbert.compress.lowrank`);
* ``svd``: each linear layer's truncated SVD (needs no data);
* ``prune``: Fisher-scored heads and neurons removed globally, the rest rescaled by
  least squares (:mod:`~nasbert.compress.prune`).

The size asked for is either ``ratio`` (the encoder layers' parameters divided by it;
the embeddings are a lookup and are kept) or ``params_m`` (the whole encoder model's
parameters, embeddings included, in millions). The result is an ordinary model folder
(config, safetensors, tokenizer) whose config's ``provenance`` records what made it.

>>> compress("RUN/finetune/sst2/teacher/model", "out/",
...          OfflineConfig("svd", ratio=2))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from torch import nn

from nasbert.data.tasks import Examples
from nasbert.errors import ConfigError
from nasbert.schema import check

METHODS = ("autoencoder", "svd", "prune")


@dataclasses.dataclass(frozen=True)
class OfflineConfig:
    """How to compress: the method, the size (exactly one of ``ratio`` / ``params_m``)
    and the calibration text's size."""

    method: str  # autoencoder, svd or prune
    ratio: float | None = None  # divide the encoder layers' parameters by this
    params_m: float | None = None  # or: the whole model's parameters, millions
    calibration: int = 256  # sequences of calibration text (autoencoder, prune)
    max_seq_len: int = 128
    batch_size: int = 32
    tune: bool = True  # prune: refit the kept units' scales by least squares
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.method in METHODS, f"must be one of {list(METHODS)}", field="method")
        check((self.ratio is None) != (self.params_m is None),
              "give exactly one of ratio and params_m", field="ratio")
        check(self.ratio is None or self.ratio > 1, "must be above 1 (1 removes nothing)",
              field="ratio")
        check(self.params_m is None or self.params_m > 0, "must be positive",
              field="params_m")
        check(self.calibration > 0, "must be positive", field="calibration")

    @property
    def needs_data(self) -> bool:
        return self.method != "svd"


def _load(model_dir: str | Path):
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

    from nasbert.hf.quiet import quiet_transformers

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise ConfigError("holds no config.json; give a fine-tuned model folder (e.g. "
                          "RUN/finetune/sst2/teacher/model)", source=str(path))
    try:
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - any loader failure: the folder is unreadable
        # (OSError, ValueError, safetensors' and huggingface_hub's own error types, ...)
        raise ConfigError(f"could not be loaded ({(str(e).splitlines() or [''])[0][:160]}); "
                          "give a fine-tuned model folder", source=str(path)) from None
    if type(model) is not BertForSequenceClassification:
        raise ConfigError(f"is a {type(model).__name__} (model_type "
                          f"{model.config.model_type!r}); nasbert compress takes a BERT "
                          "sequence classifier (model_type 'bert')", source=str(path))
    return model.eval()


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _layers(model: nn.Module) -> int:
    """Parameters of the encoder's layers (a BERT's ``encoder.layer``, a pruned model's
    blocks): what ``ratio`` divides."""
    base = model.base_model
    return _count(base.encoder.layer if hasattr(base, "encoder") else base.blocks)


def budget(model: nn.Module, config: OfflineConfig) -> int:
    """Parameters to remove from ``model``'s encoder layers."""
    base = model.base_model
    total, layers = _count(base), _layers(model)
    if config.ratio is not None:
        return round(layers - layers / config.ratio)
    saved = total - round(config.params_m * 1e6)
    if saved <= 0:
        raise ConfigError(f"{config.params_m}M is not below the model's {total / 1e6:.2f}M "
                          "parameters; ask for fewer", source="compress", field="params_m")
    if saved >= layers:
        raise ConfigError(f"{config.params_m}M is below the {(total - layers) / 1e6:.2f}M "
                          "the embeddings and pooler hold alone; ask for more",
                          source="compress", field="params_m")
    return saved


def calibration_batches(tokenizer, examples: Examples, config: OfflineConfig) -> list[dict]:
    """Padded model inputs for a seeded subset of ``examples``."""
    subset = examples.subset(config.calibration, config.seed)
    columns = list(zip(*subset.texts))
    batches = []
    for start in range(0, len(subset), config.batch_size):
        chunk = [c[start:start + config.batch_size] for c in columns]
        enc = tokenizer(*chunk, truncation=True, max_length=config.max_seq_len,
                        padding=True, return_tensors="pt")
        batches.append({k: v for k, v in enc.items()
                        if k in ("input_ids", "attention_mask", "token_type_ids")})
    return batches


def compress(model_dir: str | Path, out_dir: str | Path, config: OfflineConfig, *,
             texts: Examples | None = None, source: dict | None = None) -> dict:
    """Compress the classifier in ``model_dir`` into ``out_dir`` (written whole or not at
    all); ``texts``: calibration text (the task's training text; its labels are not
    used), required except for ``svd``; ``source``: what the text is, for the record.
    Returns the record stored in the new model's config (``provenance``)."""
    from transformers import AutoTokenizer

    from nasbert.hf.quiet import quiet_transformers
    from nasbert.io import atomic_dir
    from nasbert.provenance import provenance

    if config.needs_data and (texts is None or len(texts) == 0):
        raise ConfigError(f"{config.method} needs calibration text; give the task "
                          "(--task, --data-dir)", source="compress")
    torch.manual_seed(config.seed)
    start = time.time()
    model = _load(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError):
        tokenizer = None
        if config.needs_data:
            raise ConfigError("holds no tokenizer; save the tokenizer beside the model",
                              source=str(model_dir)) from None
    saved = budget(model, config)
    base = model.base_model
    before = {"params": _count(base), "layer_params": _layers(model)}
    batches = calibration_batches(tokenizer, texts, config) if config.needs_data else []
    record = {"method": config.method, "config": dataclasses.asdict(config),
              "source": str(model_dir), "calibration_text": source, "before": before}
    out = _compress(model, config, saved, batches, record)
    record["after"] = {"params": _count(out.base_model), "layer_params": _layers(out)}
    record["ratio"] = round(before["layer_params"] / record["after"]["layer_params"], 3)
    record["seconds"] = round(time.time() - start, 1)
    out.config.provenance = {**record, **provenance()}
    with atomic_dir(out_dir) as tmp, quiet_transformers():
        out.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out.config.provenance


def _compress(model, config: OfflineConfig, saved: int, batches: list[dict], record: dict):
    if config.method == "prune":
        from nasbert import importance
        from nasbert.compress import prune

        keys = ("input_ids", "attention_mask", "token_type_ids")
        scores = importance.score(model, [tuple(b[k] for k in keys if k in b) for b in batches],
                                  criterion="fisher", target="logits", seed=config.seed)
        kept = prune.select(scores, model, saved)
        if config.tune:
            kept = prune.tune(model, kept, batches)
        record["kept"] = {"heads": [len(h) for h in kept.heads],
                          "neurons": [len(n) for n in kept.neurons]}
        return prune.to_nasbert(model, kept)
    from nasbert.compress import lowrank

    linears = lowrank.encoder_linears(model.base_model)
    ranks = lowrank.ranks_for(linears, saved)
    stats = (lowrank.output_statistics(model, linears, batches)
             if config.method == "autoencoder" else None)
    record["ranks"] = sorted(set(ranks.values()))
    return lowrank.factorize(model, ranks, config.method, stats)
