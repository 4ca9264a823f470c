"""The weight-sharing supernet.

Every layer position of every block holds each candidate operation at the block's
largest hidden size; an architecture picks one operation per position and a hidden size
per block, and runs on prefix slices of those weights.

Blocks meet in the **teacher's space**: a block whose hidden size differs from the
teacher's width has a learnable projection in (teacher width -> hidden) and out (hidden
-> teacher width), as NAS-BERT's block-wise distillation needs; a block at the teacher's
width has none. The embedding (size E) is projected into the teacher's space in the same
way. The model's output is therefore always at the teacher's width. On extraction two
consecutive projections fold into one ``Linear(h_in, h_out)``, so the standalone model
pays for a single projection at each change of width.

>>> space = SearchSpace.from_yaml("tiny")                         # doctest: +SKIP
>>> net = Supernet(space)                                        # doctest: +SKIP
>>> arch = space.sample(0)                                       # doctest: +SKIP
>>> out = net(input_ids, attention_mask=mask, arch=arch)         # doctest: +SKIP
>>> model = net.extract(arch)          # a standalone NasBertModel, same outputs
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput

from nasbert.errors import ConfigError
from nasbert.hf.bert import bert_embeddings, bert_layer, is_bert_like
from nasbert.hf.teachers import embedding_size
from nasbert.io import atomic_dir
from nasbert.model import NasBertConfig, NasBertModel
from nasbert.ops import (
    ElasticEmbeddings,
    ElasticLinear,
    Masks,
    elastic_op,
    load_exact,
    make_masks,
    rotate,
)
from nasbert.provenance import provenance
from nasbert.space import IDENTITY, Arch, BlockArch, SearchSpace, op_family, transition_exists


class SuperBlock(nn.Module):
    """One block: its projections and, per layer position, every candidate op."""

    def __init__(self, space: SearchSpace, index: int, *, dropout: float,
                 attention_dropout: float, eps: float):
        super().__init__()
        spec, dims = space.blocks[index], space.dims
        self.max_hidden = max(spec.hidden_sizes)
        self.interface = dims.hidden_size
        needs_proj = any(h != dims.hidden_size for h in spec.hidden_sizes)
        self.proj_in = ElasticLinear(dims.hidden_size, self.max_hidden) if needs_proj else None
        self.proj_out = ElasticLinear(self.max_hidden, dims.hidden_size) if needs_proj else None
        self.layers = nn.ModuleList(
            nn.ModuleDict({
                family: elastic_op(family, self.max_hidden, dims, dropout=dropout,
                                   attention_dropout=attention_dropout, eps=eps)
                for family in space.op_families
            })
            for _ in range(spec.layers)
        )
        self.dims = dims
        # A basis of the teacher's hidden space at this block (rows by importance) and the
        # LayerNorm gain per width: narrower widths run on the teacher-width weights
        # re-expressed on the first h rows (see set_basis). Off until set.
        self.register_buffer("basis", torch.eye(dims.hidden_size))
        self.register_buffer("gain", torch.ones(dims.hidden_size + 1))
        self.register_buffer("rotated", torch.tensor(False))

    def rotates(self, hidden: int) -> bool:
        d = self.interface
        return (bool(self.rotated) and hidden < d == self.max_hidden
                and self.dims.head_dim(hidden) == self.dims.head_dim(d))

    @torch.no_grad()
    def set_basis(self, basis: Tensor, energy: Tensor) -> None:
        """Run widths below the teacher's on the teacher-width weights expressed on the
        leading rows of ``basis`` (``d x d``, orthonormal rows, most energy first; a
        linear autoencoder's encoder), with the projections in and out starting as that
        encoder and its transpose. ``energy[h]``: the share of the hidden states' energy
        the first ``h`` rows hold, which sets LayerNorm's gain at ``h``."""
        d = self.interface
        if self.proj_in is None or self.max_hidden != d:
            return
        self.basis.copy_(basis)
        h = torch.arange(1, d + 1, dtype=torch.float64)
        self.gain[1:].copy_((energy[1:].double() * d / h).sqrt().to(self.gain.dtype))
        self.proj_in.weight.copy_(basis)
        self.proj_in.bias.zero_()
        self.proj_out.weight.copy_(basis.T)
        self.proj_out.bias.zero_()
        self.rotated.fill_(True)

    def layer_weights(self, position: int, op: str, hidden: int) -> tuple[nn.Module, dict, int]:
        """The layer of ``op`` at ``position``, its weights at ``hidden`` (standalone names)
        and its head count."""
        layer = self.layers[position][op_family(op)]
        heads = self.dims.op_heads(op, hidden) if op[0] == "M" else 0
        if self.rotates(hidden):
            d = self.interface
            p = rotate(layer.sliced(d, _same_inner(op, hidden, d, self.dims)),
                       self.basis[:hidden], float(self.gain[hidden]))
        else:
            p = layer.sliced(hidden, op)
        return layer, p, heads

    def forward(self, x: Tensor, masks: Masks, block: BlockArch) -> Tensor:
        """Teacher-space input -> teacher-space output of this block on ``block``'s path."""
        h, d = block.hidden, self.interface
        if h != d:
            x = self.proj_in(x, d, h)
        for position, op in enumerate(block.ops):
            if op != IDENTITY:
                layer, p, heads = self.layer_weights(position, op, h)
                x = layer.run(x, masks, p, heads)
        if h != d:
            x = self.proj_out(x, h, d)
        return x


def _same_inner(op: str, hidden: int, width: int, dims) -> str:
    """The op at ``width`` with the inner size ``op`` has at ``hidden`` (heads or
    neurons): what a narrower width runs on, re-expressed on a basis."""
    if op[0] == "M":
        n = dims.op_heads(op, hidden)
        return "M" if n == dims.num_heads(width) else f"M{n}"
    if op[0] == "F":
        i = dims.op_inner(op, hidden)
        return "F" if i == dims.op_inner("F", width) else f"F{i}"
    return op


class Supernet(nn.Module):
    """The NAS-BERT supernet of a search space.

    Args:
        space: the search space.
        vocab_size: overrides the space's (the teacher's tokenizer decides it).
        dropout, attention_dropout: as BERT's hidden and attention dropout.
        layer_norm_eps: as BERT's.
        initializer_range: standard deviation of the normal initialisation.
    """

    def __init__(self, space: SearchSpace, *, vocab_size: int | None = None,
                 dropout: float = 0.1, attention_dropout: float = 0.1,
                 layer_norm_eps: float = 1e-12, initializer_range: float = 0.02):
        super().__init__()
        if vocab_size is not None:
            space = dataclasses.replace(space, dims=dataclasses.replace(space.dims,
                                                                        vocab_size=vocab_size))
        self.space, self.dims = space, space.dims
        self.hparams = dict(dropout=dropout, attention_dropout=attention_dropout,
                            layer_norm_eps=layer_norm_eps, initializer_range=initializer_range)
        d = self.dims
        self.embeddings = ElasticEmbeddings(d.vocab_size, d.max_position_embeddings,
                                            d.type_vocab_size, space.embed_sizes,
                                            dropout=dropout, eps=layer_norm_eps)
        needs_proj = any(e != d.hidden_size for e in space.embed_sizes)
        self.embed_proj = (ElasticLinear(max(space.embed_sizes), d.hidden_size)
                           if needs_proj else None)
        self.blocks = nn.ModuleList(
            SuperBlock(space, i, dropout=dropout, attention_dropout=attention_dropout,
                       eps=layer_norm_eps)
            for i in range(len(space.blocks))
        )
        self.apply(self._init_weights)
        self._init_projections()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.hparams["initializer_range"]
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, ElasticEmbeddings):
            for segment in module.word_segments:
                nn.init.normal_(segment, 0.0, std)

    @torch.no_grad()
    def _init_projections(self) -> None:
        # Projections start as truncation / zero-padding, so that a narrow path starts
        # as the first dimensions of a wide one.
        for proj in [self.embed_proj, *(m for b in self.blocks for m in (b.proj_in, b.proj_out))]:
            if proj is not None:
                proj.weight.copy_(torch.eye(*proj.weight.shape))
                proj.bias.zero_()

    @torch.no_grad()
    def init_from_teacher(self, teacher_model: nn.Module, boundaries: list[int]) -> list[str]:
        """Copy a teacher's weights (in BERT's layout, :mod:`nasbert.hf.teachers`) into
        every path that can hold them: the embeddings at the teacher's embedding width
        (the hidden size, or ELECTRA's narrower one with its projection) and, in a block at
        the teacher's width and head count standing for ``t`` teacher layers over ``L``
        positions, every attention (``M`` and its pruned ``M<n>``) and feed-forward
        (``F``, ``F<n>``) at position ``p`` from teacher layer ``p * t // L`` of the block.
        Pruned ops and narrower widths take prefixes of these weights, so permute the
        teacher by importance first (:func:`nasbert.importance.permute`) for
        the prefixes to hold its most important heads and neurons. Returns what it set."""
        state = teacher_model.state_dict()
        if not is_bert_like(state):
            return []
        d, done = self.dims.hidden_size, []
        config = teacher_model.config
        e = embedding_size(config)  # ELECTRA's may be narrower, projected into d
        if e in self.space.embed_sizes and max(self.space.embed_sizes) <= d and state[
                "embeddings.word_embeddings.weight"].shape[0] == self.dims.vocab_size:
            emb = bert_embeddings(state)
            emb["position_embeddings.weight"] = emb["position_embeddings.weight"][
                :self.dims.max_position_embeddings]
            self.embeddings.assign(e, emb)
            if e != d:
                w = self.embed_proj.weight
                w[:d, :e] = state["embeddings_project.weight"]
                self.embed_proj.bias[:d] = state["embeddings_project.bias"]
            done.append("embeddings")
        for i, (block, spec) in enumerate(zip(self.blocks, self.space.blocks)):
            if block.max_hidden != d or self.dims.num_heads(d) != config.num_attention_heads:
                continue
            if self.dims.op_inner("F", d) != config.intermediate_size:
                continue
            set_any = False
            for position, layer in enumerate(block.layers):
                teacher_layer = boundaries[i] + position * spec.teacher_layers // spec.layers
                attention, ffn = bert_layer(state, teacher_layer)
                if "M" in layer:
                    layer["M"].assign(d, attention)
                    set_any = True
                if "F" in layer:
                    layer["F"].assign(d, ffn)
                    set_any = True
            if set_any:
                done.append(f"block {i}")
        return done

    # -- saving --------------------------------------------------------------------------

    def save(self, directory: str | Path, **info: object) -> Path:
        """Write ``supernet.json`` (space, dimensions, settings, provenance) and
        ``model.safetensors`` to ``directory``, atomically."""
        meta = {"space": self.space.to_dict(), "space_source": self.space.source,
                "vocab_size": self.dims.vocab_size, "hparams": self.hparams,
                "provenance": provenance(**info)}
        with atomic_dir(directory) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()},
                      str(tmp / "model.safetensors"))
            (tmp / "supernet.json").write_text(json.dumps(meta, indent=2, default=str))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> Supernet:
        """A supernet written by :meth:`save`."""
        directory = Path(directory)
        meta_path, weights = directory / "supernet.json", directory / "model.safetensors"
        for f in (meta_path, weights):
            if not f.is_file():
                raise ConfigError("is missing; run `nasbert train-supernet` to produce it",
                                  source=str(f))
        try:
            meta = json.loads(meta_path.read_text())
            space = SearchSpace.from_dict(meta["space"], source=str(meta_path))
            net = cls(space, vocab_size=meta["vocab_size"], **meta["hparams"])
            load_exact(net, load_file(str(weights)), what=str(weights))
        except (json.JSONDecodeError, KeyError, SafetensorError, AssertionError, OSError) as e:
            raise ConfigError(f"is corrupt ({str(e).splitlines()[0][:120]}); re-run the "
                              "training that wrote it", source=str(directory)) from None
        return net

    # -- forward -------------------------------------------------------------------------

    def embed(self, input_ids: Tensor, token_type_ids: Tensor | None = None, *,
              size: int) -> Tensor:
        """Embeddings at ``size``, in the teacher's space."""
        x = self.embeddings(input_ids, token_type_ids, size=size)
        if size != self.dims.hidden_size:
            x = self.embed_proj(x, size, self.dims.hidden_size)
        return x

    def forward_block(self, index: int, hidden_states: Tensor, block: BlockArch,
                      attention_mask: Tensor | None = None) -> Tensor:
        """One block on teacher-space input (what block-wise distillation trains)."""
        return self.blocks[index](hidden_states, make_masks(attention_mask, hidden_states.dtype),
                                  block)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, *, arch: Arch | str,
                output_hidden_states: bool = False) -> BaseModelOutput:
        arch = self.space.validate(arch)
        x = self.embed(input_ids, token_type_ids, size=arch.embed)
        masks = make_masks(attention_mask, x.dtype)
        states = [x]
        for block_module, block in zip(self.blocks, arch.blocks):
            x = block_module(x, masks, block)
            states.append(x)
        return BaseModelOutput(last_hidden_state=x,
                               hidden_states=tuple(states) if output_hidden_states else None)

    # -- extraction ----------------------------------------------------------------------

    def config_for(self, arch: Arch | str, **kwargs) -> NasBertConfig:
        """The :class:`NasBertConfig` of an architecture of this supernet."""
        arch = self.space.validate(arch)
        h = self.hparams
        return NasBertConfig.from_dims(
            self.dims, arch, hidden_dropout_prob=h["dropout"],
            attention_probs_dropout_prob=h["attention_dropout"],
            layer_norm_eps=h["layer_norm_eps"], initializer_range=h["initializer_range"],
            **kwargs)

    def extract_state(self, arch: Arch | str) -> dict[str, Tensor]:
        """The weights of ``arch`` under the standalone model's names, right-sized."""
        arch = self.space.validate(arch)
        d = self.dims.hidden_size
        state = {f"embeddings.{k}": v for k, v in self.embeddings.sliced(arch.embed).items()}
        # the projection out of the previous stage, pending until the next one folds it in
        pending = self.embed_proj.sliced(arch.embed, d) if arch.embed != d else None
        width = arch.embed
        for i, (block_module, block) in enumerate(zip(self.blocks, arch.blocks)):
            h = block.hidden
            entering = block_module.proj_in.sliced(d, h) if h != d else None
            if transition_exists(width, h, d):
                for k, v in _fold(pending, entering).items():
                    state[f"blocks.{i}.proj.{k}"] = v
            computing = [(pos, op) for pos, op in enumerate(block.ops) if op != IDENTITY]
            for j, (pos, op) in enumerate(computing):
                for k, v in block_module.layer_weights(pos, op, h)[1].items():
                    state[f"blocks.{i}.layers.{j}.{k}"] = v
            pending = block_module.proj_out.sliced(h, d) if h != d else None
            width = h
        if pending is not None:
            for k, v in pending.items():
                state[f"proj_out.{k}"] = v
        return {k: v.detach().clone() for k, v in state.items()}

    def extract(self, arch: Arch | str, **config_kwargs) -> NasBertModel:
        """A standalone :class:`NasBertModel` with right-sized copies of ``arch``'s
        weights; it gives the supernet's outputs on ``arch``."""
        config = self.config_for(arch, **config_kwargs)
        model = NasBertModel(config)
        load_exact(model, self.extract_state(arch), what=f"extract({config.arch})")
        return model.train(self.training)


def _fold(first: dict[str, Tensor] | None, second: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """One linear map equal to ``first`` then ``second`` (either may be absent).
    Folded in float64 so that the extracted model matches the supernet to rounding."""
    if first is None or second is None:
        out = first if second is None else second
        assert out is not None
        return out
    w1, b1 = first["weight"].double(), first["bias"].double()
    w2, b2 = second["weight"].double(), second["bias"].double()
    dtype = first["weight"].dtype
    return {"weight": (w2 @ w1).to(dtype), "bias": (w2 @ b1 + b2).to(dtype)}
