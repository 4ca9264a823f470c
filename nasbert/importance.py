"""Importance of a BERT-family encoder's attention heads and feed-forward neurons, and
the permutation that puts the most important first.

Criterion ``fisher``: the diagonal Fisher information of a mask variable per head and per
neuron (a gate ``m = 1`` on the head's context or the neuron's activation), as in Kwon
et al., *A Fast Post-Training Pruning Framework for Transformers* (NeurIPS 2022), the
diagonal, mask-space member of the Optimal Brain Surgeon family that oBERT (Kurtic et
al., 2022) applies with a block Fisher to weights. Removing unit ``i`` (``m_i: 1 -> 0``)
raises the loss by about ``F_ii / 2``. The Fisher is that of the model's own predictive
distribution, so no labels are needed: with ``target="layers"`` (an encoder, and what
block-wise distillation cares about) each layer's output on its teacher input, under a
unit Gaussian; with ``target="logits"`` (a classifier) the sampled-label log-likelihood.
Gradients are per sequence (a batch would cancel them against each other), and the
gate's gradient is read off the weight it multiplies: for a gate on the columns ``J`` of
a matrix ``W``, ``dL/dm = sum_{r, j in J} W[r, j] dL/dW[r, j]``, so no gate is inserted.

Criterion ``magnitude``: the L2 norm of the weights a unit owns (its q, k, v rows and
output columns; its input row and output column), the usual baseline.

:func:`permute` reorders heads and neurons by importance; the model computes exactly the
same function (tested), but every prefix of heads or neurons is now the most important
one, which is what the supernet's prefix slices and pruning by truncation take.

>>> imp = score(teacher_model, batches, criterion="fisher")   # doctest: +SKIP
>>> permute(teacher_model, imp)                                 # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from nasbert.errors import ConfigError

CRITERIA = ("fisher", "magnitude")


@dataclass
class Importance:
    """Per layer: a score per head and per feed-forward neuron (higher: keep)."""

    criterion: str
    heads: list[Tensor]
    neurons: list[Tensor]
    info: dict

    def head_order(self, layer: int) -> Tensor:
        """Head indices, most important first (ties: original order)."""
        return _order(self.heads[layer])

    def neuron_order(self, layer: int) -> Tensor:
        return _order(self.neurons[layer])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"heads.{i}": h for i, h in enumerate(self.heads)}
        tensors |= {f"neurons.{i}": n for i, n in enumerate(self.neurons)}
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"criterion": self.criterion, "info": json.dumps(self.info)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Importance:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata()
            tensors = load_file(str(path))
            layers = len([k for k in tensors if k.startswith("heads.")])
            return cls(meta["criterion"], [tensors[f"heads.{i}"] for i in range(layers)],
                       [tensors[f"neurons.{i}"] for i in range(layers)],
                       json.loads(meta.get("info", "{}")))
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as e:
            raise ConfigError(f"is missing or corrupt ({type(e).__name__}); delete it to "
                              "score again", source=str(path)) from None


def _order(scores: Tensor) -> Tensor:
    # stable, so that equal scores (e.g. all zero) keep the original order
    return torch.sort(scores, descending=True, stable=True).indices


# ----------------------------------------------------------------------------- BERT access


def encoder_of(model: nn.Module) -> nn.Module:
    """The BERT-family encoder inside a model (itself, or a task model's base)."""
    base = getattr(model, "base_model", model)
    if not hasattr(base, "encoder") or not hasattr(base.encoder, "layer"):
        raise ConfigError(f"is a {type(model).__name__}, not a BERT-family encoder (no "
                          "encoder.layer); give a BERT-like model", source="model")
    return base


def _layers(model: nn.Module) -> list[nn.Module]:
    return list(encoder_of(model).encoder.layer)


def _geometry(layer: nn.Module) -> tuple[int, int]:
    """(heads, head width) of a BERT layer."""
    self_attn = layer.attention.self
    heads = getattr(self_attn, "num_attention_heads", None) or self_attn.config.num_attention_heads
    return heads, self_attn.query.weight.shape[0] // heads


# ----------------------------------------------------------------------------- scoring


def score(model: nn.Module, batches: Iterable[tuple[Tensor, ...]], *,
          criterion: str = "fisher", target: str = "layers", seed: int = 0) -> Importance:
    """Score every head and neuron of ``model`` (a BERT-family encoder or classifier) on
    ``batches`` of ``(input_ids, attention_mask)`` or ``(input_ids, attention_mask,
    token_type_ids)``; ``target``: ``layers`` (each layer's output, on its own input) or
    ``logits`` (a classifier's sampled-label likelihood)."""
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown criterion {criterion!r}; use one of {list(CRITERIA)}",
                          source="importance")
    layers = _layers(model)
    if criterion == "magnitude":
        heads, neurons = zip(*(_magnitude(layer) for layer in layers))
        return Importance(criterion, list(heads), list(neurons), {"criterion": criterion})
    if target not in ("layers", "logits"):
        raise ConfigError(f"unknown target {target!r}; use layers or logits", source="importance")
    return _fisher(model, layers, batches, target=target, seed=seed)


@torch.no_grad()
def _magnitude(layer: nn.Module) -> tuple[Tensor, Tensor]:
    n, w = _geometry(layer)
    a = layer.attention
    rows = sum(m.weight.view(n, w, -1).pow(2).sum((1, 2))
               for m in (a.self.query, a.self.key, a.self.value))
    cols = a.output.dense.weight.view(-1, n, w).pow(2).sum((0, 2))
    neurons = (layer.intermediate.dense.weight.pow(2).sum(1)
               + layer.output.dense.weight.pow(2).sum(0))
    return (rows + cols).sqrt(), neurons.sqrt()


def _fisher(model: nn.Module, layers: list[nn.Module], batches, *, target: str,
            seed: int) -> Importance:
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    saved = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    gated = [(layer.attention.output.dense.weight, layer.output.dense.weight) for layer in layers]
    for wo, w2 in gated:
        wo.requires_grad_(True)
        w2.requires_grad_(True)
    outputs: list[Tensor] = []
    hooks = []
    if target == "layers":  # each layer on a detached input: its own output only
        for layer in layers:
            hooks.append(layer.register_forward_pre_hook(
                lambda m, args: (args[0].detach(), *args[1:])))
            hooks.append(layer.register_forward_hook(
                lambda m, args, out: outputs.append(out[0] if isinstance(out, tuple) else out)))
    heads = [torch.zeros(_geometry(layer)[0], dtype=torch.float64) for layer in layers]
    neurons = [torch.zeros(w2.shape[1], dtype=torch.float64) for _, w2 in gated]
    count = 0
    try:
        for ids, mask, *types in batches:
            for i in range(len(ids)):
                keep = mask[i].bool()
                x, m = ids[i][keep][None], mask[i][keep][None]  # one sequence, no padding
                t = types[0][i][keep][None] if types else None
                outputs.clear()
                out = model(input_ids=x, attention_mask=m, token_type_ids=t)
                if target == "layers":
                    loss = sum((torch.randn(o.shape, generator=gen) * o).sum() for o in outputs)
                else:
                    logits = out.logits.float()
                    if logits.shape[-1] == 1:  # regression: a unit Gaussian around the output
                        loss = (torch.randn(logits.shape, generator=gen) * logits).sum()
                    else:
                        y = torch.multinomial(logits.softmax(-1).detach(), 1, generator=gen)
                        loss = logits.log_softmax(-1).gather(-1, y).sum()
                grads = torch.autograd.grad(loss, [w for pair in gated for w in pair])
                for k, (layer, (wo, w2)) in enumerate(zip(layers, gated)):
                    n, w = _geometry(layer)
                    g_head = (wo.detach() * grads[2 * k]).sum(0).view(n, w).sum(1)
                    g_neuron = (w2.detach() * grads[2 * k + 1]).sum(0)
                    heads[k] += g_head.double().pow(2)
                    neurons[k] += g_neuron.double().pow(2)
                count += 1
    finally:
        for h in hooks:
            h.remove()
        for p, flag in saved.items():
            p.requires_grad_(flag)
        model.train(was_training)
    if count == 0:
        raise ConfigError("has no sequences to score on; give a non-empty corpus or task",
                          source="importance")
    # F / 2: the estimated loss increase when the unit is removed
    return Importance("fisher", [(h / (2 * count)).float() for h in heads],
                      [(n / (2 * count)).float() for n in neurons],
                      {"criterion": "fisher", "target": target, "sequences": count,
                       "seed": seed})


# ----------------------------------------------------------------------------- permuting


@torch.no_grad()
def permute(model: nn.Module, importance: Importance) -> nn.Module:
    """Reorder every layer's heads and neurons, most important first, in place. The
    model's function is unchanged."""
    layers = _layers(model)
    if len(layers) != len(importance.heads):
        raise ConfigError(f"scores {len(importance.heads)} layers but the model has "
                          f"{len(layers)}; score this model", source="importance")
    for k, layer in enumerate(layers):
        n, w = _geometry(layer)
        heads = importance.head_order(k)
        rows = (heads[:, None] * w + torch.arange(w)).reshape(-1)  # head-major rows
        a = layer.attention
        for m in (a.self.query, a.self.key, a.self.value):
            m.weight.copy_(m.weight[rows])
            m.bias.copy_(m.bias[rows])
        a.output.dense.weight.copy_(a.output.dense.weight[:, rows])
        neurons = importance.neuron_order(k)
        fc1, fc2 = layer.intermediate.dense, layer.output.dense
        fc1.weight.copy_(fc1.weight[neurons])
        fc1.bias.copy_(fc1.bias[neurons])
        fc2.weight.copy_(fc2.weight[:, neurons])
    return model
