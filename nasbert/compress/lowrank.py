"""Low-rank factorisation of a BERT's linear layers, with no training afterwards.

Two ways to choose the rank-``k`` factors of a linear layer ``y = W x + b``:

* ``svd``: the truncated SVD of the weight, ``W ~ U_k S_k V_k^T`` (the usual baseline);
* ``autoencoder``: the principal directions of the layer's *outputs* on calibration text
  (Yu & Wu, *Compressing Transformers: Features Are Low-Rank, but Weights Are Not!*,
  AAAI 2023, "atomic feature mimicking"): with the outputs' mean ``mu`` and the top-``k``
  eigenvectors ``U_k`` of their covariance, ``y ~ mu + U_k U_k^T (y - mu)``, i.e. a down
  map ``U_k^T W`` and an up map ``U_k`` with bias ``mu + U_k U_k^T (b - mu)``: the linear
  autoencoder of the features, folded into the layer. It keeps what the layer's outputs
  actually span on the data, where SVD keeps what the weight's spectrum says.

Every one of an encoder layer's six linear maps (query, key, value, attention output,
feed-forward in and out) is factorised, each to the same fraction of its parameters
(:func:`ranks_for`). The result is a :class:`LowRankBertForSequenceClassification`, an
ordinary transformers model (``from_pretrained`` after ``import nasbert``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    BertModel,
)

from nasbert.compress.configuration_lowrank import LowRankBertConfig
from nasbert.errors import ConfigError

__all__ = ["LowRankBertConfig", "LowRankBertForSequenceClassification", "LowRankBertModel",
           "LowRankLinear", "encoder_linears", "factorize", "output_statistics", "ranks_for"]

# an encoder layer's linear maps, by their names in transformers' BERT
LAYER_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense", "intermediate.dense", "output.dense")


class LowRankLinear(nn.Module):
    """``up(down(x))``: a linear map of rank ``rank`` (``down`` has no bias)."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))

    @staticmethod
    def params(in_features: int, out_features: int, rank: int) -> int:
        return rank * (in_features + out_features) + out_features


def _replace(root: nn.Module, ranks: dict[str, int]) -> None:
    for name, rank in ranks.items():
        parent, _, child = name.rpartition(".")
        old = root.get_submodule(name)
        setattr(root.get_submodule(parent), child,
                LowRankLinear(old.in_features, old.out_features, int(rank)))


class LowRankBertModel(BertModel):
    config_class = LowRankBertConfig

    def __init__(self, config: LowRankBertConfig, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer)
        _replace(self, config.low_rank or {})


class LowRankBertForSequenceClassification(BertForSequenceClassification):
    config_class = LowRankBertConfig

    def __init__(self, config: LowRankBertConfig):
        super().__init__(config)
        _replace(self.bert, config.low_rank or {})


AutoModel.register(LowRankBertConfig, LowRankBertModel, exist_ok=True)
AutoModelForSequenceClassification.register(LowRankBertConfig,
                                            LowRankBertForSequenceClassification, exist_ok=True)


# ----------------------------------------------------------------------------- ranks


def encoder_linears(base: nn.Module) -> dict[str, nn.Linear]:
    """Every encoder layer's linear maps, by name under the encoder model ``base``."""
    return {f"encoder.layer.{i}.{n}": layer.get_submodule(n)
            for i, layer in enumerate(base.encoder.layer) for n in LAYER_LINEARS}


def ranks_for(linears: dict[str, nn.Linear], saved: int) -> dict[str, int]:
    """Ranks that remove at least ``saved`` parameters, each layer kept at the same
    fraction of its weight's parameters (rank ``floor(f * out * in / (in + out))``, at
    least 1), with the largest such fraction ``f``."""
    shapes = {n: (m.in_features, m.out_features) for n, m in linears.items()}

    def ranks(f: float) -> dict[str, int]:
        return {n: max(1, math.floor(f * i * o / (i + o))) for n, (i, o) in shapes.items()}

    def removed(r: dict[str, int]) -> int:
        return sum(i * o + o - LowRankLinear.params(i, o, r[n]) for n, (i, o) in shapes.items())

    lo, hi = 0.0, 1.0  # removed(ranks(f)) falls as f grows
    if removed(ranks(lo)) < saved:
        raise ConfigError(f"factorising every linear layer to rank 1 removes only "
                          f"{removed(ranks(lo)):,} parameters, fewer than {saved:,}; ask for "
                          "a smaller --ratio (or a larger --params-m)",
                          source="nasbert compress")
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if removed(ranks(mid)) >= saved else (lo, mid)
    return ranks(lo)


# ----------------------------------------------------------------------------- factors


@torch.no_grad()
def output_statistics(model: nn.Module, linears: dict[str, nn.Linear],
                      batches: Iterable[dict[str, Tensor]]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per linear layer, the mean and the covariance of its outputs over the real (not
    padding) tokens of ``batches`` (model inputs with an ``attention_mask``), in float64."""
    sums: dict[str, list] = {n: [0, 0.0, 0.0] for n in linears}
    keep: list[Tensor] = []

    def hook(name):
        def collect(module, args, out):
            y = out[keep[0]].double()  # (real tokens, out)
            s = sums[name]
            s[0] += len(y)
            s[1] = s[1] + y.sum(0)
            s[2] = s[2] + y.T @ y
        return collect

    handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            keep[:] = [batch["attention_mask"].bool()]
            model(**batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    stats = {}
    for name, (n, s1, s2) in sums.items():
        if n == 0:
            raise ValueError("no calibration tokens reached the model")
        mean = s1 / n
        stats[name] = (mean, s2 / n - torch.outer(mean, mean))
    return stats


def svd_factors(linear: nn.Linear, rank: int) -> dict[str, Tensor]:
    """``down = S_k^(1/2) V_k^T``, ``up = U_k S_k^(1/2)``: the best rank-``k`` weight."""
    u, s, vh = torch.linalg.svd(linear.weight.double(), full_matrices=False)
    root = s[:rank].sqrt()
    return {"down.weight": root[:, None] * vh[:rank], "up.weight": u[:, :rank] * root,
            "up.bias": linear.bias.double()}


def autoencoder_factors(linear: nn.Linear, rank: int, mean: Tensor,
                        covariance: Tensor) -> dict[str, Tensor]:
    """The layer followed by the rank-``k`` linear autoencoder of its outputs."""
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    u = vectors[:, -rank:].flip(1)  # (out, k), the leading directions first
    w, b = linear.weight.double(), linear.bias.double()
    return {"down.weight": u.T @ w, "up.weight": u, "up.bias": mean + u @ (u.T @ (b - mean))}


@torch.no_grad()
def factorize(model: BertForSequenceClassification, ranks: dict[str, int], method: str,
              statistics: dict[str, tuple[Tensor, Tensor]] | None = None,
              **config: object) -> LowRankBertForSequenceClassification:
    """A :class:`LowRankBertForSequenceClassification` holding ``model`` with the layers
    named in ``ranks`` factorised by ``method`` (``svd``, or ``autoencoder`` with the
    layers' output ``statistics``); ``config``: extra config fields (provenance)."""
    base = model.base_model
    cfg = LowRankBertConfig(**{**model.config.to_dict(), "model_type": LowRankBertConfig.model_type,
                               "low_rank": dict(ranks), **config})
    cfg.architectures = [LowRankBertForSequenceClassification.__name__]
    out = LowRankBertForSequenceClassification(cfg)
    state = model.state_dict()
    prefix = model.base_model_prefix + "."
    for name, rank in ranks.items():
        linear = base.get_submodule(name)
        if method == "svd":
            factors = svd_factors(linear, rank)
        elif method == "autoencoder":
            factors = autoencoder_factors(linear, rank, *statistics[name])
        else:
            raise ValueError(f"unknown factorisation {method!r}")
        del state[prefix + name + ".weight"], state[prefix + name + ".bias"]
        dtype = linear.weight.dtype
        state |= {f"{prefix}{name}.{k}": v.to(dtype) for k, v in factors.items()}
    out.load_state_dict(state, strict=True)
    return out.eval()
