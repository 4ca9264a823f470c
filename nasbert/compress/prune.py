"""Pruning a fine-tuned BERT's heads and feed-forward neurons with no retraining, after
Kwon et al., *A Fast Post-Training Pruning Framework for Transformers* (NeurIPS 2022):

1. **Importance**: the diagonal Fisher of each head's and neuron's mask, on the task's
   own text with the model's predictive distribution (:mod:`~nasbert.importance`,
   ``target="logits"``): ``F_ii / 2`` estimates the loss increase of removing unit ``i``.
2. **Selection** (:func:`select`): the heads and neurons to remove, globally across
   layers, to remove at least a parameter count at the least total Fisher. With one cost
   per head and one per neuron the optimum keeps the top-``n`` heads and the top-``m``
   neurons for some ``n``; every ``n`` is tried (Kwon et al. search the same way under a
   FLOPs constraint; ours is parameters, as ``nasbert compress`` takes).
3. **Tuning** (:func:`tune`, Kwon et al.'s mask tuning): layer by layer, the kept heads'
   and neurons' scales are refitted by linear least squares so that each sub-layer's
   pre-LayerNorm output on the pruned model's input matches the original model's, which
   also corrects the error carried in from earlier layers. A sub-layer's output is
   linear in those scales, so the normal equations are small (units x units).

The pruned model is written as a :class:`~nasbert.model.NasBertForSequenceClassification`
whose ops are ``M<heads>`` and ``F<inner>`` (``I`` where nothing is left): the same model
type as the searched subnets, so it is measured, fine-tuned and exported like them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nasbert.errors import ConfigError
from nasbert.hf.bert import bert_embeddings, bert_layer
from nasbert.importance import Importance, _geometry, encoder_of


@dataclass
class Kept:
    """Per layer, the indices (ascending) of the heads and neurons that stay, and their
    scales (1.0 until :func:`tune`)."""

    heads: list[Tensor]
    neurons: list[Tensor]
    head_scale: list[Tensor]
    neuron_scale: list[Tensor]


def unit_costs(model: nn.Module) -> tuple[int, int]:
    """Parameters one head and one feed-forward neuron own (q, k, v rows with biases and
    output columns; input row with bias and output column)."""
    layer = encoder_of(model).encoder.layer[0]
    _, w = _geometry(layer)
    d = layer.attention.output.dense.weight.shape[0]
    return 4 * d * w + 3 * w, 2 * d + 1


def select(importance: Importance, model: nn.Module, saved: int) -> Kept:
    """Remove at least ``saved`` parameters' worth of heads and neurons, at the least
    total importance."""
    head_cost, neuron_cost = unit_costs(model)
    heads = torch.cat(importance.heads).double()
    neurons = torch.cat(importance.neurons).double()
    h_sorted = torch.sort(heads, descending=True).values
    n_sorted = torch.sort(neurons, descending=True).values
    h_cum = torch.cat([torch.zeros(1, dtype=torch.float64), h_sorted.cumsum(0)])
    n_cum = torch.cat([torch.zeros(1, dtype=torch.float64), n_sorted.cumsum(0)])
    total = h_cum[-1] + n_cum[-1]
    best = None
    for n_heads in range(len(heads) + 1):
        short = saved - (len(heads) - n_heads) * head_cost
        n_removed = max(0, -(-short // neuron_cost))
        if n_removed > len(neurons):
            continue
        n_neurons = len(neurons) - n_removed
        lost = float(total - h_cum[n_heads] - n_cum[n_neurons])
        if best is None or lost < best[0]:
            best = (lost, n_heads, n_neurons)
    if best is None:
        raise ConfigError("removing every head and neuron does not remove that many "
                          "parameters; ask for less", source="prune")
    _, n_heads, n_neurons = best
    return Kept(_top(importance.heads, n_heads), _top(importance.neurons, n_neurons),
                *_ones(importance))


def _top(scores: Sequence[Tensor], n: int) -> list[Tensor]:
    """The global top ``n`` of per-layer ``scores``, as per-layer ascending indices."""
    flat = torch.cat(list(scores))
    chosen = torch.zeros(len(flat), dtype=torch.bool)
    chosen[torch.sort(flat, descending=True, stable=True).indices[:n]] = True
    out, start = [], 0
    for s in scores:
        out.append(torch.nonzero(chosen[start:start + len(s)]).flatten())
        start += len(s)
    return out


def _ones(importance: Importance) -> tuple[list[Tensor], list[Tensor]]:
    return [torch.ones(len(h)) for h in importance.heads], \
        [torch.ones(len(n)) for n in importance.neurons]


def _scales(kept: Kept, k: int, heads: int, neurons: int) -> tuple[Tensor, Tensor]:
    """Layer ``k``'s full-length scale per head and per neuron (0 where removed)."""
    hs, ns = torch.zeros(heads), torch.zeros(neurons)
    hs[kept.heads[k]] = kept.head_scale[k][kept.heads[k]]
    ns[kept.neurons[k]] = kept.neuron_scale[k][kept.neurons[k]]
    return hs, ns


# ----------------------------------------------------------------------------- tuning


class _Stop(Exception):
    """Raised by a hook once the sub-layer being tuned has been seen: the rest of the
    forward pass is not needed."""


@torch.no_grad()
def tune(model: nn.Module, kept: Kept, batches: Sequence[dict[str, Tensor]], *,
         damping: float = 1e-3) -> Kept:
    """Refit the scales of ``kept`` units layer by layer by least squares (see the
    module's docstring); ``model`` is the unpruned model and is left unchanged."""
    import copy

    layers = list(encoder_of(model).encoder.layer)
    targets = _pre_norm_outputs(model, batches)
    work = copy.deepcopy(model).eval()
    wlayers = list(encoder_of(work).encoder.layer)
    for k in range(len(wlayers)):
        _apply(wlayers[k], layers[k], kept, k)  # pruned, at scale 1
    for k, layer in enumerate(wlayers):
        for part in ("attention", "ffn"):
            units = kept.heads[k] if part == "attention" else kept.neurons[k]
            if len(units) == 0:
                continue
            gram, rhs = _normal_equations(work, layer, part, units, targets, k, batches)
            ridge = damping * gram.diagonal().mean().clamp_min(1e-12)
            eye = torch.eye(len(units), dtype=gram.dtype)
            # pulled towards 1 (no change), not 0: a tiny ridge keeps it well posed
            scale = torch.linalg.solve(gram + ridge * eye, rhs + ridge)
            target = kept.head_scale if part == "attention" else kept.neuron_scale
            target[k][units] = scale.float()
            _apply(layer, layers[k], kept, k)  # what the next sub-layer's fit sees
    return kept


@torch.no_grad()
def _apply(layer: nn.Module, original: nn.Module, kept: Kept, k: int) -> None:
    """Layer ``k`` of the working copy: the original's output columns times each unit's
    scale (0: removed)."""
    n, w = _geometry(original)
    hs, ns = _scales(kept, k, n, original.output.dense.weight.shape[1])
    layer.attention.output.dense.weight.copy_(
        original.attention.output.dense.weight * hs.repeat_interleave(w))
    layer.output.dense.weight.copy_(original.output.dense.weight * ns)


def _pre_norm_outputs(model: nn.Module, batches) -> list[list[tuple[Tensor, Tensor]]]:
    """Per batch, per layer: the inputs of the attention's and the feed-forward's
    LayerNorm (sub-layer output plus residual), over real tokens."""
    out: list[list[tuple[Tensor, Tensor]]] = []
    seen: list[Tensor] = []
    layers = list(encoder_of(model).encoder.layer)
    hooks = []
    for layer in layers:
        for norm in (layer.attention.output.LayerNorm, layer.output.LayerNorm):
            hooks.append(norm.register_forward_pre_hook(
                lambda m, args: seen.append(args[0][keep[0]].float())))
    keep: list[Tensor] = []
    model.eval()
    try:
        for batch in batches:
            keep[:] = [batch["attention_mask"].bool()]
            seen.clear()
            model(**batch)
            out.append([(seen[2 * k], seen[2 * k + 1]) for k in range(len(layers))])
    finally:
        for h in hooks:
            h.remove()
    return out


def _normal_equations(work: nn.Module, layer: nn.Module, part: str, units: Tensor,
                      targets, k: int, batches) -> tuple[Tensor, Tensor]:
    """``G = sum C^T C`` and ``r = sum C^T (target - residual - bias)`` over the tokens,
    ``C``'s columns being each kept unit's contribution to the sub-layer's output."""
    n, w = _geometry(layer)
    if part == "attention":
        proj, norm = layer.attention.output.dense, layer.attention.output.LayerNorm
    else:
        proj, norm = layer.output.dense, layer.output.LayerNorm
    gram = torch.zeros(len(units), len(units), dtype=torch.float64)
    rhs = torch.zeros(len(units), dtype=torch.float64)
    grabbed: dict[str, Tensor] = {}
    keep: list[Tensor] = []

    def take_input(module, args):
        grabbed["x"] = args[0][keep[0]]

    def take_norm(module, args):
        grabbed["sum"] = args[0][keep[0]]
        raise _Stop

    h1 = proj.register_forward_pre_hook(take_input)
    h2 = norm.register_forward_pre_hook(take_norm)
    try:
        for b, batch in enumerate(batches):
            keep[:] = [batch["attention_mask"].bool()]
            try:
                work(**batch)
            except _Stop:
                pass
            x = grabbed["x"].double()  # (tokens, heads * w) or (tokens, neurons)
            weight = proj.weight.double()
            if part == "attention":
                # (tokens, kept heads, d): each kept head's context through its columns
                contrib = torch.einsum("thw,dhw->thd", x.view(len(x), n, w)[:, units],
                                       weight.view(-1, n, w)[:, units])
                current = contrib.sum(1)
            else:  # a neuron's contribution is its activation times its column: never
                a, cols = x[:, units], weight[:, units]  # materialise (tokens, neurons, d)
                current = a @ cols.T
            residual = grabbed["sum"].double() - current  # the rest: input + bias
            goal = targets[b][k][0 if part == "attention" else 1].double() - residual
            if part == "attention":
                gram += torch.einsum("tid,tjd->ij", contrib, contrib)
                rhs += torch.einsum("tid,td->i", contrib, goal)
            else:
                gram += (a.T @ a) * (cols.T @ cols)
                rhs += (a * (goal @ cols)).sum(0)
    finally:
        h1.remove()
        h2.remove()
    return gram, rhs


# ----------------------------------------------------------------------------- writing


def to_nasbert(model: nn.Module, kept: Kept, **config: object):
    """The pruned ``model`` (a BERT sequence classifier) as a
    :class:`~nasbert.model.NasBertForSequenceClassification` holding only the kept
    heads and neurons, scaled; ``config``: extra config fields (provenance)."""
    from nasbert.model import NasBertConfig, NasBertForSequenceClassification
    from nasbert.ops import load_exact
    from nasbert.space import Arch, Dims

    base = encoder_of(model)
    bc = model.config
    state = base.state_dict()
    n, w = _geometry(base.encoder.layer[0])
    d, inner = bc.hidden_size, bc.intermediate_size
    if inner % d or n * w != d:
        raise ConfigError(f"has an inner size {inner} or heads {n} x {w} that nasbert's "
                          f"model type cannot express at hidden size {d}", source="model")
    ops, layers = [], {}
    for k in range(len(base.encoder.layer)):
        attention, ffn = bert_layer(state, k)
        hs, ns = _scales(kept, k, n, inner)
        for part, units, scale in (("M", kept.heads[k], hs), ("F", kept.neurons[k], ns)):
            if len(units) == 0:
                ops.append("I")
                continue
            full = n if part == "M" else inner
            j = sum(op != "I" for op in ops)
            ops.append(part if len(units) == full else f"{part}{len(units)}")
            if part == "M":
                rows = (units[:, None] * w + torch.arange(w)).reshape(-1)
                qkv_rows = torch.cat([rows + i * d for i in range(3)])
                cols = scale.repeat_interleave(w)[rows]
                weights = {"qkv.weight": attention["qkv.weight"][qkv_rows],
                           "qkv.bias": attention["qkv.bias"][qkv_rows],
                           "out.weight": attention["out.weight"][:, rows] * cols,
                           "out.bias": attention["out.bias"],
                           "norm.weight": attention["norm.weight"],
                           "norm.bias": attention["norm.bias"]}
            else:
                weights = {"fc1.weight": ffn["fc1.weight"][units],
                           "fc1.bias": ffn["fc1.bias"][units],
                           "fc2.weight": ffn["fc2.weight"][:, units] * scale[units],
                           "fc2.bias": ffn["fc2.bias"], "norm.weight": ffn["norm.weight"],
                           "norm.bias": ffn["norm.bias"]}
            layers |= {f"nasbert.blocks.0.layers.{j}.{key}": v for key, v in weights.items()}
    arch = Arch.parse(f"E{d}|H{d}:" + ",".join(ops))
    dims = Dims(vocab_size=bc.vocab_size, hidden_size=d,
                max_position_embeddings=bc.max_position_embeddings,
                type_vocab_size=bc.type_vocab_size, head_size=w, ffn_ratio=inner // d)
    cfg = NasBertConfig.from_dims(
        dims, arch, num_labels=bc.num_labels, id2label=bc.id2label, label2id=bc.label2id,
        problem_type=bc.problem_type, hidden_dropout_prob=bc.hidden_dropout_prob,
        attention_probs_dropout_prob=bc.attention_probs_dropout_prob,
        classifier_dropout=bc.classifier_dropout, layer_norm_eps=bc.layer_norm_eps,
        pad_token_id=bc.pad_token_id, **config)
    out = NasBertForSequenceClassification(cfg)
    full = model.state_dict()
    weights = {f"nasbert.embeddings.{k}": v for k, v in bert_embeddings(state).items()}
    weights |= layers
    weights |= {"dense.weight": state["pooler.dense.weight"],
                "dense.bias": state["pooler.dense.bias"],
                "classifier.weight": full["classifier.weight"],
                "classifier.bias": full["classifier.bias"]}
    load_exact(out, weights, what="pruned model")
    return out.eval()
