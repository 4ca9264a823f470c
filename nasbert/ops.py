"""Operations, standalone and elastic.

Every operation exists twice, sharing one compute kernel:

* a **standalone** module (:class:`Attention`, :class:`FeedForward`, :class:`SepConv`,
  :class:`Embeddings`) of one fixed size, with no search code in it: what extracted
  models are made of;
* an **elastic** subclass holding the *largest* weights, whose ``forward`` takes the
  hidden size to run at and uses prefix slices of them (weight sharing as in
  once-for-all), and whose :meth:`~Elastic.export` returns a standalone, right-sized
  copy of itself.

Both call the same kernel functions below, so a slice and its export compute the same
thing by construction. Each layer is post-norm as in BERT: ``LayerNorm(x + op(x))``.

At inference on the CPU, a standalone op's linear layers run as oneDNN matrix products
with the GELU fused in (:func:`project`); :func:`onednn` turns that off to compare.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasbert.space import Dims

# ----------------------------------------------------------------------------- masks


class Masks(NamedTuple):
    """The padding mask in the two forms the operations need, built once per forward."""

    bias: Tensor | None  # (B, 1, 1, T) additive attention bias: 0 at real tokens
    keep: Tensor | None  # (B, T, 1) 1.0 at real tokens, 0.0 at padding (for convolutions)


def _is_tracing() -> bool:
    return (torch.jit.is_tracing() or torch.compiler.is_compiling()
            or torch.compiler.is_exporting())


def make_masks(attention_mask: Tensor | None, dtype: torch.dtype) -> Masks:
    """Masks from a (B, T) 0/1 attention mask; none at all when nothing is padded, so
    that attention can take its fastest kernel (checked only in eager mode: a traced
    graph keeps the general path)."""
    if attention_mask is None or (not _is_tracing() and bool(attention_mask.all())):
        return Masks(None, None)
    keep = attention_mask.to(dtype)
    bias = (1.0 - keep)[:, None, None, :] * torch.finfo(dtype).min
    return Masks(bias, keep[:, :, None])


def check_length_config(ratios, blocks: int) -> tuple[float, ...]:
    """A length configuration (one token retention per block, each in (0, 1]) checked
    against a model of ``blocks`` blocks."""
    from nasbert.errors import ConfigError

    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != blocks:
        raise ConfigError(f"has {len(ratios)} retentions for a model of {blocks} blocks; give "
                          "one per block", source="length configuration")
    bad = [r for r in ratios if not 0 < r <= 1]
    if bad:
        raise ConfigError(f"retention {bad[0]:g} is outside (0, 1]; a retention is the share "
                          "of tokens a block keeps", source="length configuration")
    return ratios


def drop_tokens(x: Tensor, keep: Tensor, significance: Tensor, ratio: float
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Keep ``ceil(ratio * n)`` of each row's ``n`` real tokens (``keep``: ``(B, T)``, 1 at
    real tokens), those of highest ``significance``, in their order; the first token
    ([CLS]) always. Returns the shorter hidden states, their 0/1 mask (kept tokens first,
    padding after) and their significance; padding is never kept as a real token.

    The new length is ``ceil(ratio * T)``, from the padded length rather than from the
    longest row's count, so that it depends on shapes only: no device sync, and the
    exporter can trace it (a count read from the data cannot be)."""
    index, mask = kept_index(keep, significance, ratio)
    b, k, h = x.shape[0], index.shape[1], x.shape[2]
    kept = x.gather(1, index[:, :, None].expand(b, k, h))
    return kept, mask.to(keep.dtype), significance.gather(1, index)


def kept_index(keep: Tensor, significance: Tensor, ratio: float) -> tuple[Tensor, Tensor]:
    """Which tokens :func:`drop_tokens` keeps: ``(B, K)`` positions into the current
    sequence, in order, and the bool mask of those that are real (the slots past a row's
    count point at distinct tokens it did not keep)."""
    t = keep.shape[1]
    real = keep.bool()
    k = torch.ceil(real.sum(1).to(torch.float64) * ratio).long().clamp(min=1)
    score = significance.float().masked_fill(~real, float("-inf"))
    score[:, 0] = float("inf")
    longest = max(1, math.ceil(t * ratio))
    top = score.topk(longest, dim=1).indices  # (B, K), by score
    valid = torch.arange(longest, device=keep.device)[None, :] < k[:, None]
    # back into sequence order, the kept ones first: push the rest past the end
    ordered = torch.where(valid, top, top + t).sort(dim=1).values
    mask = ordered < t
    return torch.where(mask, ordered, ordered - t), mask


# ----------------------------------------------------------------------------- kernels


def residual_norm(x: Tensor, y: Tensor, weight: Tensor, bias: Tensor, eps: float,
                  dropout: float, training: bool) -> Tensor:
    return F.layer_norm(x + F.dropout(y, dropout, training), (x.shape[-1],), weight, bias, eps)


Linear = Callable[[Tensor], Tensor]


def linear(weight: Tensor, bias: Tensor) -> Linear:
    """A linear map on given weights (an elastic op's slices) as a callable, the form
    the kernels take: a standalone op passes its ``nn.Linear`` itself, so that a module
    swap (int8 quantisation) reaches the kernel."""
    return lambda x: F.linear(x, weight, bias)


_onednn = torch.backends.mkldnn.is_available()


@contextlib.contextmanager
def onednn(enabled: bool) -> Iterator[None]:
    """Within the block, :func:`project` takes oneDNN's kernel (where it may) or not."""
    global _onednn
    before, _onednn = _onednn, enabled and torch.backends.mkldnn.is_available()
    try:
        yield
    finally:
        _onednn = before


def project(layer: Linear, x: Tensor, *, gelu: bool = False) -> Tensor:
    """``layer(x)``, then GELU where asked.

    At inference on the CPU (float32, no autograd, eager), a plain ``nn.Linear`` runs as
    one oneDNN matrix product with the GELU fused into it, as PyTorch's compiler does
    when it freezes a model. ``F.linear`` calls MKL, which on an AVX512 AMD EPYC (2
    threads) took 1.3-1.5x oneDNN's time on every layer shape of a MiniLM at batch 32
    and 1.1-1.25x at batch 1, the same numbers to 1e-6; on an AVX2 one (Zen 3) the two
    were within 10 % either way, shape by shape (``scripts/bench_inference.py`` measures
    the whole model both ways, a section per CPU). Anything else takes the layer's own call: int8
    modules, elastic weights' slices, layers with hooks or parametrisations, autograd
    and tracing (exporters know ``F.linear``, not this kernel)."""
    if (_onednn and type(layer) is nn.Linear and not torch.is_grad_enabled()
            and x.device.type == "cpu" and x.dtype == torch.float32
            and not (layer._forward_hooks or layer._forward_pre_hooks
                     or nn.modules.module._global_forward_hooks
                     or nn.modules.module._global_forward_pre_hooks)
            and not _is_tracing()):
        return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias,
                                                  "gelu" if gelu else "none", [],
                                                  "none" if gelu else "")
    y = layer(x)
    return F.gelu(y) if gelu else y


def attention_kernel(x: Tensor, masks: Masks, qkv: Linear, out: Linear, heads: int,
                     dropout: float, training: bool, *, significance: bool = False
                     ) -> Tensor | tuple[Tensor, Tensor]:
    """Multi-head self-attention with one fused input projection and PyTorch's SDPA. The
    heads' total width may be less than the hidden size (pruned heads).

    ``significance``: also return how much attention each token receives, summed over
    heads and real queries, ``(B, T)`` (what length-adaptive inference keeps tokens by,
    after PoWER-BERT and LAT); the probabilities are then computed explicitly, as SDPA
    does not return them."""
    b, t, _ = x.shape
    fused = project(qkv, x)
    inner = fused.shape[-1] // 3
    q, k, v = fused.view(b, t, 3, heads, inner // heads).permute(2, 0, 3, 1, 4).unbind(0)
    if not significance:
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=masks.bias,
                                             dropout_p=dropout if training else 0.0)
        return project(out, ctx.transpose(1, 2).reshape(b, t, inner))
    scores = q @ k.transpose(-1, -2) / math.sqrt(inner // heads)
    if masks.bias is not None:
        scores = scores + masks.bias
    probs = scores.softmax(-1)
    received = probs.sum(1)  # (B, T queries, T keys)
    if masks.keep is not None:
        received = received * masks.keep
    ctx = F.dropout(probs, dropout, training) @ v
    return project(out, ctx.transpose(1, 2).reshape(b, t, inner)), received.sum(1)


def feed_forward_kernel(x: Tensor, fc1: Linear, fc2: Linear) -> Tensor:
    return project(fc2, project(fc1, x, gelu=True))


def sep_conv_kernel(x: Tensor, masks: Masks, dw_w: Tensor, dw_b: Tensor,
                    pointwise: Linear) -> Tensor:
    """Depthwise convolution over the sequence, pointwise linear, GELU. Padded positions
    are zeroed first so that they cannot leak into real ones. The depthwise weights stay
    tensors: dynamic int8 quantisation has no convolutions (they cost ``k`` multiplies a
    channel, against ``h`` for the pointwise map)."""
    if masks.keep is not None:
        x = x * masks.keep
    k = dw_w.shape[-1]
    y = F.conv1d(x.transpose(1, 2), dw_w, dw_b, padding=k // 2, groups=x.shape[-1])
    return project(pointwise, y.transpose(1, 2), gelu=True)


def embeddings_kernel(words: Tensor, token_type_ids: Tensor | None, position: Tensor,
                      token_type: Tensor, norm_w: Tensor, norm_b: Tensor, eps: float,
                      dropout: float, training: bool) -> Tensor:
    """Word vectors (already looked up) + positions + token types, LayerNorm, dropout."""
    t = words.shape[1]
    x = words + position[:t]
    if token_type_ids is None:
        x = x + token_type[0]
    else:
        x = x + F.embedding(token_type_ids, token_type)
    x = F.layer_norm(x, (x.shape[-1],), norm_w, norm_b, eps)
    return F.dropout(x, dropout, training)


# ----------------------------------------------------------------------------- standalone


class Attention(nn.Module):
    """Self-attention with ``heads`` heads of ``head_dim`` (default: ``hidden // heads``)."""

    def __init__(self, hidden: int, heads: int, *, head_dim: int | None = None,
                 dropout: float = 0.0, attention_dropout: float = 0.0, eps: float = 1e-12):
        super().__init__()
        if head_dim is None:
            if hidden % heads:
                raise ValueError(f"{heads} heads do not divide hidden size {hidden}")
            head_dim = hidden // heads
        inner = heads * head_dim
        self.heads, self.dropout, self.attention_dropout = heads, dropout, attention_dropout
        self.qkv = nn.Linear(hidden, 3 * inner)  # rows: q, then k, then v; head-major
        self.out = nn.Linear(inner, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: Tensor, masks: Masks) -> Tensor:
        y = attention_kernel(x, masks, self.qkv, self.out, self.heads, self.attention_dropout,
                             self.training)
        return residual_norm(x, y, self.norm.weight, self.norm.bias, self.norm.eps,
                             self.dropout, self.training)

    def scored(self, x: Tensor, masks: Masks) -> tuple[Tensor, Tensor]:
        """``forward`` and the attention each token receives (``attention_kernel``'s
        ``significance``)."""
        y, received = attention_kernel(x, masks, self.qkv, self.out, self.heads,
                                       self.attention_dropout, self.training,
                                       significance=True)
        return residual_norm(x, y, self.norm.weight, self.norm.bias, self.norm.eps,
                             self.dropout, self.training), received

    def log_probabilities(self, x: Tensor, masks: Masks) -> Tensor:
        """The attention distributions ``forward`` takes on input ``x``, as log
        probabilities ``(B, heads, T, T)``, recomputed from the queries and keys (the
        fused kernel does not return them): what attention distillation compares."""
        b, t, _ = x.shape
        inner = self.out.weight.shape[1]
        d = inner // self.heads
        qk = F.linear(x, self.qkv.weight[: 2 * inner], self.qkv.bias[: 2 * inner])
        q, k = qk.view(b, t, 2, self.heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)
        if masks.bias is not None:
            scores = scores + masks.bias
        return F.log_softmax(scores, dim=-1)


class FeedForward(nn.Module):
    def __init__(self, hidden: int, inner: int, *, dropout: float = 0.0, eps: float = 1e-12):
        super().__init__()
        self.dropout = dropout
        self.fc1 = nn.Linear(hidden, inner)
        self.fc2 = nn.Linear(inner, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: Tensor, masks: Masks) -> Tensor:
        y = feed_forward_kernel(x, self.fc1, self.fc2)
        return residual_norm(x, y, self.norm.weight, self.norm.bias, self.norm.eps,
                             self.dropout, self.training)


class SepConv(nn.Module):
    def __init__(self, hidden: int, kernel: int, *, dropout: float = 0.0, eps: float = 1e-12):
        super().__init__()
        self.dropout = dropout
        self.depthwise = nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden)
        self.pointwise = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: Tensor, masks: Masks) -> Tensor:
        y = sep_conv_kernel(x, masks, self.depthwise.weight, self.depthwise.bias,
                            self.pointwise)
        return residual_norm(x, y, self.norm.weight, self.norm.bias, self.norm.eps,
                             self.dropout, self.training)


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout (as BERT's)."""

    def __init__(self, vocab_size: int, max_positions: int, type_vocab_size: int, size: int,
                 *, dropout: float = 0.0, eps: float = 1e-12):
        super().__init__()
        self.dropout = dropout
        self.word_embeddings = nn.Embedding(vocab_size, size)
        self.position_embeddings = nn.Embedding(max_positions, size)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, size)
        self.norm = nn.LayerNorm(size, eps=eps)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        return embeddings_kernel(F.embedding(input_ids, self.word_embeddings.weight),
                                 token_type_ids, self.position_embeddings.weight,
                                 self.token_type_embeddings.weight, self.norm.weight,
                                 self.norm.bias, self.norm.eps, self.dropout, self.training)


def make_op(op: str, hidden: int, dims: Dims, *, dropout: float = 0.0,
            attention_dropout: float = 0.0, eps: float = 1e-12) -> nn.Module:
    """A standalone layer for an op name of the search space (not ``I``)."""
    if op[0] == "M":
        return Attention(hidden, dims.op_heads(op, hidden), head_dim=dims.head_dim(hidden),
                         dropout=dropout, attention_dropout=attention_dropout, eps=eps)
    if op[0] == "F":
        return FeedForward(hidden, dims.op_inner(op, hidden), dropout=dropout, eps=eps)
    if op.startswith("S"):
        return SepConv(hidden, int(op[1:]), dropout=dropout, eps=eps)
    raise ValueError(f"no module for operation {op!r}")


# ----------------------------------------------------------------------------- elastic


def load_exact(module: nn.Module, state: Mapping[str, Tensor], *, what: str = "") -> nn.Module:
    """Copy ``state`` into ``module``, asserting the same keys and every shape (no
    silent partial loads when weights move between models)."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    assert not missing and not unexpected, \
        f"{what}: keys differ: missing {missing[:5]}, unexpected {unexpected[:5]}"
    for k, v in state.items():
        assert own[k].shape == v.shape, \
            f"{what}: {k}: shape {tuple(v.shape)} != {tuple(own[k].shape)}"
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
    return module


class Elastic:
    """Mixin of the elastic ops. ``views(hidden, op)`` gives views into the weights that
    ``op`` uses at ``hidden`` (``op`` None: the family's full op); ``sliced`` the same
    under the standalone module's names and shapes; ``assign`` writes standalone weights
    into those slices; ``export`` returns a standalone, right-sized copy."""

    def views(self, hidden: int, op: str | None = None) -> dict[str, Tensor]:
        raise NotImplementedError

    def sliced(self, hidden: int, op: str | None = None) -> dict[str, Tensor]:
        return self.views(hidden, op)

    def standalone(self, hidden: int, op: str | None = None) -> nn.Module:
        raise NotImplementedError

    def export(self, hidden: int, op: str | None = None) -> nn.Module:
        module = self.standalone(hidden, op)
        load_exact(module, {k: v.detach() for k, v in self.sliced(hidden, op).items()},
                   what=f"{type(self).__name__}.export({hidden}, {op})")
        return module.train(self.training)  # type: ignore[attr-defined]

    @torch.no_grad()
    def assign(self, hidden: int, state: Mapping[str, Tensor], op: str | None = None) -> None:
        views = self.views(hidden, op)
        assert set(state) <= set(views), f"unknown keys {sorted(set(state) - set(views))}"
        for k, v in state.items():
            views[k].copy_(v.reshape(views[k].shape))


def rotate(p: Mapping[str, Tensor], basis: Tensor, gain: float) -> dict[str, Tensor]:
    """A layer's weights at the full width re-expressed on ``basis`` (``h x d``, rows
    orthonormal): inputs read ``x = basis.T z``, outputs write ``z = basis y``. Exact for
    the linear maps; per-channel weights (LayerNorm's scale, depthwise kernels) take the
    diagonal of their rotation, and LayerNorm's scale is multiplied by ``gain`` (the
    statistics over ``h`` coordinates of a projection differ from those over ``d``)."""
    squared = basis * basis
    out = {}
    for key, w in p.items():
        if key in ("qkv.weight", "fc1.weight"):  # reads the hidden state
            out[key] = w @ basis.T
        elif key in ("out.weight", "fc2.weight"):  # writes it
            out[key] = basis @ w
        elif key == "pointwise.weight":
            out[key] = basis @ w @ basis.T
        elif key == "depthwise.weight":  # (d, 1, k): per channel and tap
            out[key] = (squared @ w[:, 0, :])[:, None, :]
        elif key == "norm.weight":
            out[key] = (squared @ w) * gain
        elif key in ("out.bias", "fc2.bias", "pointwise.bias", "depthwise.bias", "norm.bias"):
            out[key] = basis @ w
        else:  # qkv.bias, fc1.bias: inside the layer, not in the hidden space
            out[key] = w
    return out


def _norm_slices(norm: nn.LayerNorm, h: int) -> dict[str, Tensor]:
    return {"norm.weight": norm.weight[:h], "norm.bias": norm.bias[:h]}


class ElasticAttention(Elastic, Attention):
    """Attention of every width and head count: at ``hidden`` with ``n`` heads it runs on
    the first ``n`` heads (of that width's head size) and the first ``hidden`` channels.
    Rows of q, k and v are head-major, so a prefix of rows is a prefix of heads."""

    def __init__(self, max_hidden: int, dims: Dims, **kwargs):
        super().__init__(max_hidden, dims.num_heads(max_hidden), **kwargs)
        self.dims, self.max_hidden = dims, max_hidden

    def _op(self, op: str | None) -> str:
        return op or "M"

    def views(self, hidden: int, op: str | None = None) -> dict[str, Tensor]:
        h, n, a = hidden, self.max_hidden, self.dims.op_inner(self._op(op), hidden)
        return {
            # q, k and v are each sliced: view the fused rows as (3, n, n) first
            "qkv.weight": self.qkv.weight.view(3, n, n)[:, :a, :h],
            "qkv.bias": self.qkv.bias.view(3, n)[:, :a],
            "out.weight": self.out.weight[:h, :a], "out.bias": self.out.bias[:h],
            **_norm_slices(self.norm, h),
        }

    def sliced(self, hidden: int, op: str | None = None) -> dict[str, Tensor]:
        p = self.views(hidden, op)
        a = p["out.weight"].shape[1]
        p["qkv.weight"] = p["qkv.weight"].reshape(3 * a, hidden)
        p["qkv.bias"] = p["qkv.bias"].reshape(3 * a)
        return p

    def standalone(self, hidden: int, op: str | None = None) -> Attention:
        return Attention(hidden, self.dims.op_heads(self._op(op), hidden),
                         head_dim=self.dims.head_dim(hidden), dropout=self.dropout,
                         attention_dropout=self.attention_dropout, eps=self.norm.eps)

    def forward(self, x: Tensor, masks: Masks, hidden: int,  # type: ignore[override]
                op: str | None = None) -> Tensor:
        return self.run(x, masks, self.sliced(hidden, op),
                        self.dims.op_heads(self._op(op), hidden))

    def run(self, x: Tensor, masks: Masks, p: Mapping[str, Tensor], heads: int) -> Tensor:
        """The layer on given weights (``sliced``'s, or a rotation of them)."""
        y = attention_kernel(x, masks, linear(p["qkv.weight"], p["qkv.bias"]),
                             linear(p["out.weight"], p["out.bias"]), heads,
                             self.attention_dropout, self.training)
        return residual_norm(x, y, p["norm.weight"], p["norm.bias"], self.norm.eps,
                             self.dropout, self.training)


class ElasticFeedForward(Elastic, FeedForward):
    """Feed-forward of every width and inner size: the first ``inner`` neurons."""

    def __init__(self, max_hidden: int, dims: Dims, **kwargs):
        super().__init__(max_hidden, dims.op_inner("F", max_hidden), **kwargs)
        self.dims = dims

    def views(self, hidden: int, op: str | None = None) -> dict[str, Tensor]:
        h, i = hidden, self.dims.op_inner(op or "F", hidden)
        return {"fc1.weight": self.fc1.weight[:i, :h], "fc1.bias": self.fc1.bias[:i],
                "fc2.weight": self.fc2.weight[:h, :i], "fc2.bias": self.fc2.bias[:h],
                **_norm_slices(self.norm, h)}

    def standalone(self, hidden: int, op: str | None = None) -> FeedForward:
        return FeedForward(hidden, self.dims.op_inner(op or "F", hidden), dropout=self.dropout,
                           eps=self.norm.eps)

    def forward(self, x: Tensor, masks: Masks, hidden: int,  # type: ignore[override]
                op: str | None = None) -> Tensor:
        return self.run(x, masks, self.sliced(hidden, op))

    def run(self, x: Tensor, masks: Masks, p: Mapping[str, Tensor], heads: int = 0) -> Tensor:
        y = feed_forward_kernel(x, linear(p["fc1.weight"], p["fc1.bias"]),
                                linear(p["fc2.weight"], p["fc2.bias"]))
        return residual_norm(x, y, p["norm.weight"], p["norm.bias"], self.norm.eps,
                             self.dropout, self.training)


class ElasticSepConv(Elastic, SepConv):
    def views(self, hidden: int, op: str | None = None) -> dict[str, Tensor]:
        h = hidden
        return {"depthwise.weight": self.depthwise.weight[:h],
                "depthwise.bias": self.depthwise.bias[:h],
                "pointwise.weight": self.pointwise.weight[:h, :h],
                "pointwise.bias": self.pointwise.bias[:h], **_norm_slices(self.norm, h)}

    def standalone(self, hidden: int, op: str | None = None) -> SepConv:
        return SepConv(hidden, self.depthwise.kernel_size[0], dropout=self.dropout,
                       eps=self.norm.eps)

    def forward(self, x: Tensor, masks: Masks, hidden: int,  # type: ignore[override]
                op: str | None = None) -> Tensor:
        return self.run(x, masks, self.sliced(hidden, op))

    def run(self, x: Tensor, masks: Masks, p: Mapping[str, Tensor], heads: int = 0) -> Tensor:
        y = sep_conv_kernel(x, masks, p["depthwise.weight"], p["depthwise.bias"],
                            linear(p["pointwise.weight"], p["pointwise.bias"]))
        return residual_norm(x, y, p["norm.weight"], p["norm.bias"], self.norm.eps,
                             self.dropout, self.training)


class ElasticEmbeddings(Elastic, nn.Module):
    """Embeddings of every size of the space. Position and token-type tables are shared
    prefix slices; the word table, by far the largest, is stored as column segments
    between consecutive sizes, so that a step at size ``e`` gives gradients (and
    optimizer updates) only to the columns it used rather than to the whole table."""

    def __init__(self, vocab_size: int, max_positions: int, type_vocab_size: int,
                 sizes: Sequence[int], *, dropout: float = 0.0, eps: float = 1e-12):
        super().__init__()
        self.sizes = tuple(sorted(sizes))
        bounds = (0, *self.sizes)
        self.dropout = dropout
        self.word_segments = nn.ParameterList(
            nn.Parameter(torch.empty(vocab_size, b - a)) for a, b in zip(bounds, bounds[1:]))
        self.position_embeddings = nn.Embedding(max_positions, self.sizes[-1])
        self.token_type_embeddings = nn.Embedding(type_vocab_size, self.sizes[-1])
        self.norm = nn.LayerNorm(self.sizes[-1], eps=eps)

    def _segments(self, size: int) -> list[Tensor]:
        if size not in self.sizes:
            raise ValueError(f"embedding size {size} is not one of {self.sizes}")
        return list(self.word_segments[: self.sizes.index(size) + 1])

    def views(self, hidden: int, op: str | None = None) -> dict[str, Tensor]:
        e = hidden
        return {"position_embeddings.weight": self.position_embeddings.weight[:, :e],
                "token_type_embeddings.weight": self.token_type_embeddings.weight[:, :e],
                **_norm_slices(self.norm, e)}

    def sliced(self, hidden: int, op: str | None = None) -> dict[str, Tensor]:
        return {"word_embeddings.weight": torch.cat(self._segments(hidden), dim=1),
                **self.views(hidden)}

    @torch.no_grad()
    def assign(self, hidden: int, state: Mapping[str, Tensor], op: str | None = None) -> None:
        state = dict(state)
        word = state.pop("word_embeddings.weight", None)
        if word is not None:
            start = 0
            for segment in self._segments(hidden):
                segment.copy_(word[:, start:start + segment.shape[1]])
                start += segment.shape[1]
        super().assign(hidden, state)

    def standalone(self, hidden: int, op: str | None = None) -> Embeddings:
        return Embeddings(self.word_segments[0].shape[0],
                          self.position_embeddings.num_embeddings,
                          self.token_type_embeddings.num_embeddings, hidden,
                          dropout=self.dropout, eps=self.norm.eps)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None, *,
                size: int) -> Tensor:
        words = torch.cat([F.embedding(input_ids, s) for s in self._segments(size)], dim=-1)
        p = self.views(size)
        return embeddings_kernel(words, token_type_ids, p["position_embeddings.weight"],
                                 p["token_type_embeddings.weight"], p["norm.weight"],
                                 p["norm.bias"], self.norm.eps, self.dropout, self.training)


class ElasticLinear(nn.Linear):
    """A linear map of the largest size; ``forward(x, in_features, out_features)`` uses
    the top-left corner of its weight."""

    def sliced(self, in_features: int, out_features: int) -> dict[str, Tensor]:
        return {"weight": self.weight[:out_features, :in_features],
                "bias": self.bias[:out_features]}

    def forward(self, x: Tensor, in_features: int, out_features: int) -> Tensor:  # type: ignore[override]
        return F.linear(x, self.weight[:out_features, :in_features], self.bias[:out_features])


def elastic_op(family: str, max_hidden: int, dims: Dims, *, dropout: float,
               attention_dropout: float, eps: float) -> nn.Module:
    """The elastic layer of an op family of the search space (``M``, ``F``, ``S<k>``)."""
    if family == "M":
        return ElasticAttention(max_hidden, dims, dropout=dropout,
                                attention_dropout=attention_dropout, eps=eps)
    if family == "F":
        return ElasticFeedForward(max_hidden, dims, dropout=dropout, eps=eps)
    if family.startswith("S"):
        return ElasticSepConv(max_hidden, int(family[1:]), dropout=dropout, eps=eps)
    raise ValueError(f"no module for operation {family!r}")
