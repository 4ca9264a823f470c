"""Search spaces and architectures.

A :class:`SearchSpace` is data (a YAML file; the shipped ones are in ``search_spaces/``);
an :class:`Arch` is one point in it and the currency between every stage of the
pipeline. Its string form is compact, human-readable and parses back exactly::

    E128|H256:M,F,S5,F|H192:S3,M,F,I|H384:M,F,M,F

``E`` is the embedding size; each ``H<hidden>:<ops>`` group is one block, whose layers all
have that hidden size. Operations: ``M`` multi-head attention, ``F`` feed-forward,
``S<k>`` separable convolution with kernel ``k``, ``I`` identity. Pruning-shaped
operations keep the block's hidden size and narrow the inside of a layer: ``M<n>`` is
attention with ``n`` heads (of the head size at that width, fewer than ``M``'s), ``F<n>``
a feed-forward layer of inner size ``n`` (smaller than ``F``'s ``ffn_ratio * hidden``).
They share weights with ``M`` and ``F`` and inherit the teacher's most important heads
and neurons (see :mod:`nasbert.importance`).

>>> space = SearchSpace.from_yaml("minilm_l6")   # a shipped space, or a YAML path
>>> arch = space.sample(0)
>>> Arch.parse(str(arch)) == arch
True
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nasbert.errors import ConfigError
from nasbert.resources import shipped
from nasbert.schema import check, load_yaml, parse

IDENTITY = "I"
_OP_RE = re.compile(r"^(?:(M|F)([1-9][0-9]*)?|I|S([1-9][0-9]*))$")
_ARCH_SOURCE = "architecture string"


def op_kernel(op: str) -> int:
    """Kernel size of a separable-convolution op name (``S5`` -> 5)."""
    return int(op[1:])


def op_family(op: str) -> str:
    """The weights an op runs on in the supernet: ``M`` for every attention (``M``,
    ``M4``...), ``F`` for every feed-forward, the op itself otherwise."""
    return op[0] if op[0] in "MF" else op


def check_op(op: str, *, source: str | None = _ARCH_SOURCE, field: str = "ops") -> str:
    m = _OP_RE.match(op)
    if not m:
        raise ConfigError(
            f"unknown operation {op!r}; use M (attention), F (feed-forward), S3/S5/S7 "
            "(separable convolution, odd kernel), I (identity), or M<heads> / F<inner size> "
            "(pruned attention / feed-forward, e.g. M6, F768)",
            source=source, field=field,
        )
    if m.group(3) and int(m.group(3)) % 2 == 0:
        raise ConfigError(f"separable convolution {op!r} needs an odd kernel (S3, S5, S7)",
                          source=source, field=field)
    return op


# ----------------------------------------------------------------------------- dimensions


@dataclass(frozen=True)
class Dims:
    """The dimensions an architecture does not choose: fixed by the teacher and the space.

    ``hidden_size`` is the teacher's width. Blocks talk to each other, and the model
    reports its output, in that space (see :mod:`nasbert.supernet`).
    """

    vocab_size: int
    hidden_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    head_size: int = 64
    heads: tuple[tuple[int, int], ...] = ()  # explicit (hidden, heads) pairs win over head_size
    ffn_ratio: int = 4

    def num_heads(self, hidden: int) -> int:
        for h, n in self.heads:
            if h == hidden:
                return n
        return max(1, hidden // self.head_size)

    def head_dim(self, hidden: int) -> int:
        """The width of one attention head at ``hidden``."""
        return hidden // self.num_heads(hidden)

    def op_heads(self, op: str, hidden: int) -> int:
        """Heads of an attention op at ``hidden`` (``M``: all of that width's)."""
        return int(op[1:]) if len(op) > 1 else self.num_heads(hidden)

    def op_inner(self, op: str, hidden: int) -> int:
        """Inner width of an attention or feed-forward op at ``hidden``: heads times head
        width, or the feed-forward's inner size (``F``: ``ffn_ratio * hidden``)."""
        if op[0] == "M":
            return self.op_heads(op, hidden) * self.head_dim(hidden)
        if op[0] == "F":
            return int(op[1:]) if len(op) > 1 else self.ffn_ratio * hidden
        raise ValueError(f"operation {op!r} has no inner width")

    def op_fits(self, op: str, hidden: int) -> bool:
        """Whether ``op`` exists at ``hidden``: a pruned op must be smaller than the full one
        (``M<n>``: fewer heads than ``M`` has there; ``F<n>``: a smaller inner size)."""
        if op[0] not in "MF" or len(op) == 1:
            return True
        full = self.num_heads(hidden) if op[0] == "M" else self.ffn_ratio * hidden
        return int(op[1:]) < full

    def op_params(self, op: str, hidden: int) -> int:
        """Parameters of one layer running ``op`` at ``hidden`` (its LayerNorm included)."""
        h = hidden
        if op == IDENTITY:
            return 0
        if op[0] == "M":
            a = self.op_inner(op, h)
            return 3 * (h * a + a) + a * h + h + 2 * h
        if op[0] == "F":
            i = self.op_inner(op, h)
            return 2 * h * i + i + h + 2 * h
        return h * op_kernel(op) + h + h * h + h + 2 * h  # depthwise + pointwise + norm

    def op_flops(self, op: str, hidden: int, seq_len: int) -> int:
        """FLOPs (2 per multiply-add) of one layer's matrix products on one sequence."""
        h, t = hidden, seq_len
        if op == IDENTITY:
            return 0
        if op[0] == "M":
            a = self.op_inner(op, h)
            return 2 * t * h * 4 * a + 4 * t * t * a
        if op[0] == "F":
            return 4 * t * h * self.op_inner(op, h)
        return 2 * t * h * op_kernel(op) + 2 * t * h * h

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Dims:
        """The inverse of :meth:`to_dict`."""
        return cls(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                   max_position_embeddings=d["max_position_embeddings"],
                   type_vocab_size=d["type_vocab_size"], head_size=d["head_size"],
                   heads=tuple(sorted((int(h), int(n)) for h, n in d["heads"].items())),
                   ffn_ratio=d["ffn_ratio"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size, "head_size": self.head_size,
            "heads": {str(h): n for h, n in self.heads}, "ffn_ratio": self.ffn_ratio,
        }


def transition_exists(width_in: int, width_out: int, interface: int) -> bool:
    """Whether a projection joins two stages.

    Stages meet in the teacher's space: a stage narrower or wider than the teacher has a
    projection into it (and out of it), a stage at the teacher's width has none. Two
    consecutive projections are folded into one ``Linear(width_in, width_out)``.
    """
    return width_in != interface or width_out != interface


# ----------------------------------------------------------------------------- architectures


@dataclass(frozen=True)
class BlockArch:
    """One block of an architecture: its hidden size and one operation per layer."""

    hidden: int
    ops: tuple[str, ...]

    def __str__(self) -> str:
        return f"H{self.hidden}:" + ",".join(self.ops)

    @property
    def layers(self) -> tuple[str, ...]:
        """The operations that compute something (identity layers dropped)."""
        return tuple(op for op in self.ops if op != IDENTITY)

    @classmethod
    def parse(cls, text: str, *, index: int | None = None) -> BlockArch:
        """Parse the string form ``H<hidden>:<op>,...`` (``BlockArch.parse(str(b)) == b``)."""
        where = "block" if index is None else f"block {index}"
        m = re.fullmatch(r"H([1-9][0-9]*):([A-Z0-9,]+)", text.strip())
        if not m:
            raise ConfigError(f"{where} {text!r} does not parse; expected "
                              "'H<hidden>:<op>,...', e.g. 'H256:M,F,S5,I'", source=_ARCH_SOURCE)
        ops = tuple(check_op(op, field=where) for op in m.group(2).split(","))
        return cls(int(m.group(1)), ops)

    def num_params(self, dims: Dims) -> int:
        """Parameters of this path as one block of the supernet: its layers, and its
        projections in from and out to the teacher's width when it is narrower or wider."""
        h, d = self.hidden, dims.hidden_size
        proj = (d * h + h + h * d + d) if h != d else 0
        return proj + sum(dims.op_params(op, h) for op in self.layers)


@dataclass(frozen=True)
class Arch:
    """An architecture: embedding size and one :class:`BlockArch` per block."""

    embed: int
    blocks: tuple[BlockArch, ...]

    def __str__(self) -> str:
        return "|".join([f"E{self.embed}", *map(str, self.blocks)])

    def __repr__(self) -> str:
        return f"Arch({str(self)!r})"

    @classmethod
    def parse(cls, text: str) -> Arch:
        """Parse the string form; ``Arch.parse(str(a)) == a`` for every architecture."""
        if not isinstance(text, str):
            raise ConfigError(f"expected a string, got {type(text).__name__}", source=_ARCH_SOURCE)
        parts = text.strip().split("|")
        m = re.fullmatch(r"E([1-9][0-9]*)", parts[0])
        if not m or len(parts) < 2:
            raise ConfigError(
                f"{text!r} does not parse; expected 'E<embed>|H<hidden>:<op>,<op>,...|...', "
                "e.g. 'E128|H256:M,F,S5,F|H192:S3,M,F,I'", source=_ARCH_SOURCE)
        blocks = tuple(BlockArch.parse(part, index=i) for i, part in enumerate(parts[1:]))
        return cls(int(m.group(1)), blocks)

    def widths(self) -> tuple[int, ...]:
        """Embedding size then each block's hidden size."""
        return (self.embed, *(b.hidden for b in self.blocks))

    def transitions(self, dims: Dims) -> list[tuple[int, int]]:
        """The (in, out) widths of the extracted model's projections, in order: into each
        block, then out to the teacher's width (where :func:`transition_exists` says)."""
        ends = [*self.widths(), dims.hidden_size]
        return [(a, b) for a, b in zip(ends, ends[1:]) if transition_exists(a, b, dims.hidden_size)]

    def num_params(self, dims: Dims) -> int:
        """Exact parameter count of the extracted :class:`~nasbert.model.NasBertModel`."""
        e = self.embed
        total = (dims.vocab_size + dims.max_position_embeddings + dims.type_vocab_size) * e + 2 * e
        total += sum(a * b + b for a, b in self.transitions(dims))
        total += sum(dims.op_params(op, b.hidden) for b in self.blocks for op in b.ops)
        return total

    def flops(self, dims: Dims, seq_len: int = 128) -> int:
        """FLOPs of the matrix products and convolutions for one sequence of ``seq_len``."""
        total = sum(2 * seq_len * a * b for a, b in self.transitions(dims))
        total += sum(dims.op_flops(op, b.hidden, seq_len) for b in self.blocks for op in b.ops)
        return total

    def features(self, dims: Dims | None = None, seq_len: int = 128) -> dict[str, float]:
        """Named numeric features for predictors; the same names for every architecture
        with the same number of blocks. With ``dims``, adds parameters and FLOPs."""
        f: dict[str, float] = {"embed": self.embed}
        kinds = {"M": "attn", "F": "ffn", "S": "conv"}
        for kind in kinds.values():
            f[f"n_{kind}"] = f[f"sum_h_{kind}"] = f[f"sum_h2_{kind}"] = 0.0
        f["sum_kh_conv"] = 0.0
        for i, b in enumerate(self.blocks):
            f[f"b{i}_hidden"] = b.hidden
            f[f"b{i}_layers"] = len(b.layers)
            for op in b.layers:
                kind = kinds[op[0]]
                f[f"n_{kind}"] += 1
                f[f"sum_h_{kind}"] += b.hidden
                f[f"sum_h2_{kind}"] += b.hidden ** 2
                if kind == "conv":
                    f["sum_kh_conv"] += op_kernel(op) * b.hidden
        f["n_layers"] = f["n_attn"] + f["n_ffn"] + f["n_conv"]
        if dims is not None:
            f["n_proj"] = len(self.transitions(dims))
            f["sum_proj"] = float(sum(a * b for a, b in self.transitions(dims)))
            f["params"] = float(self.num_params(dims))
            f[f"flops_{seq_len}"] = float(self.flops(dims, seq_len))
        return f


# ----------------------------------------------------------------------------- search space


@dataclass(frozen=True)
class BlockSpace:
    """The choices of one block."""

    layers: int
    hidden_sizes: tuple[int, ...]
    teacher_layers: int = 1
    min_layers: int = 0  # fewest non-identity layers (NAS-BERT: 1, no empty blocks)

    def __post_init__(self) -> None:
        check(self.layers > 0, "must be a positive integer", field="layers")
        check(self.teacher_layers > 0, "must be a positive integer", field="teacher_layers")
        _check_sizes(self.hidden_sizes, "hidden_sizes")
        check(0 <= self.min_layers <= self.layers,
              f"{self.min_layers} exceeds what the block allows", field="min_layers")


def _check_sizes(sizes: Sequence[int], field: str) -> None:
    check(bool(sizes) and all(v > 0 for v in sizes), f"{list(sizes)} is not a non-empty list "
          "of positive integers", field=field)
    check(len(set(sizes)) == len(sizes), "a value is listed twice", field=field)


IdentityRule = Literal["anywhere", "block_end"]


# The YAML form of a search space (see search_spaces/): parsed by nasbert.schema, then
# turned into a SearchSpace.


@dataclass(frozen=True)
class _TeacherFields:
    hidden_size: int
    num_layers: int | None = None  # default: what the blocks stand for


@dataclass(frozen=True)
class _AttentionFields:
    head_size: int = 64
    heads: dict[int, int] = field(default_factory=dict)  # hidden size -> heads


@dataclass(frozen=True)
class _SpaceFile:
    teacher: _TeacherFields
    operations: tuple[str, ...]
    blocks: tuple[BlockSpace, ...]
    name: str | None = None
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    ffn_ratio: int = 4
    attention: _AttentionFields = _AttentionFields()
    embedding_sizes: tuple[int, ...] | None = None  # default: the teacher's width
    identity: IdentityRule = "anywhere"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_position_embeddings", "type_vocab_size", "ffn_ratio"):
            check(getattr(self, name) > 0, "must be a positive integer", field=name)
        check(self.attention.head_size > 0, "must be a positive integer",
              field="attention.head_size")
        check(all(n > 0 for n in self.attention.heads.values()), "must map a hidden size to a "
              "positive number of heads", field="attention.heads")
        for op in self.operations:
            check_op(op, source=None, field="operations")
        check(len(set(self.operations)) == len(self.operations),
              "an operation is listed twice; list each once", field="operations")
        check(any(op != IDENTITY for op in self.operations),
              "needs at least one operation other than I", field="operations")
        if self.embedding_sizes is not None:
            _check_sizes(self.embedding_sizes, "embedding_sizes")
        check(bool(self.blocks), "needs at least one block", field="blocks")
        for i, b in enumerate(self.blocks):
            check(IDENTITY in self.operations or b.min_layers in (0, b.layers),
                  f"{b.min_layers} exceeds what the block allows", field=f"blocks[{i}].min_layers")
        covered = sum(b.teacher_layers for b in self.blocks)
        if self.teacher.num_layers is not None:
            check(covered == self.teacher.num_layers,
                  f"blocks stand for {covered} teacher layers but the teacher has "
                  f"{self.teacher.num_layers}; make blocks[*].teacher_layers add up to it",
                  field="blocks")


@dataclass(frozen=True)
class SearchSpace:
    """A NAS-BERT search space. Build with :meth:`from_yaml` or :meth:`from_dict`.

    >>> space = SearchSpace.from_yaml("tiny")   # a shipped space, or a path
    >>> space.size()
    288
    """

    name: str
    dims: Dims
    embed_sizes: tuple[int, ...]
    ops: tuple[str, ...]
    blocks: tuple[BlockSpace, ...]
    identity: IdentityRule = "anywhere"
    source: str | None = field(default=None, compare=False)

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        """A search space from a YAML file, or a shipped one by name (``minilm_l6``,
        ``nasbert_base``, ``tiny``: see ``search_spaces/``)."""
        path = shipped("spaces", path)
        return cls.from_dict(load_yaml(path), source=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "search space") -> SearchSpace:
        f = parse(_SpaceFile, data, source=source)
        dims = Dims(vocab_size=f.vocab_size, hidden_size=f.teacher.hidden_size,
                    max_position_embeddings=f.max_position_embeddings,
                    type_vocab_size=f.type_vocab_size, head_size=f.attention.head_size,
                    heads=tuple(sorted(f.attention.heads.items())), ffn_ratio=f.ffn_ratio)
        space = cls(name=f.name or Path(source).stem, dims=dims,
                    embed_sizes=f.embedding_sizes or (f.teacher.hidden_size,),
                    ops=f.operations, blocks=f.blocks, identity=f.identity, source=source)
        space._check_heads()
        return space

    def _check_heads(self) -> None:
        for i, b in enumerate(self.blocks):
            for h in b.hidden_sizes:
                if not self.ops_at(h):
                    raise ConfigError(f"no operation exists at hidden size {h} (every pruned "
                                      "op is as large as the full one there); add M or F",
                                      source=self.source, field=f"blocks[{i}].hidden_sizes")
        if "M" not in self.op_families:
            return
        overrides = dict(self.dims.heads)
        for i, b in enumerate(self.blocks):
            for h in b.hidden_sizes:
                n = self.dims.num_heads(h)
                if h in overrides and h % n:
                    problem = f"{n} heads do not divide hidden size {h}"
                elif h not in overrides and h % self.dims.head_size:
                    problem = f"head_size {self.dims.head_size} does not divide hidden size {h}"
                else:
                    continue
                raise ConfigError(f"{problem}; choose a head_size (or attention.heads entry) "
                                  "that divides every hidden size",
                                  source=self.source, field=f"blocks[{i}].hidden_sizes")

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (``from_dict(space.to_dict()) == space``)."""
        d = self.dims
        return {
            "name": self.name,
            "teacher": {"hidden_size": d.hidden_size,
                        "num_layers": sum(b.teacher_layers for b in self.blocks)},
            "vocab_size": d.vocab_size,
            "max_position_embeddings": d.max_position_embeddings,
            "type_vocab_size": d.type_vocab_size,
            "ffn_ratio": d.ffn_ratio,
            "attention": {"head_size": d.head_size, "heads": {h: n for h, n in d.heads}},
            "embedding_sizes": list(self.embed_sizes),
            "operations": list(self.ops),
            "identity": self.identity,
            "blocks": [{"layers": b.layers, "hidden_sizes": list(b.hidden_sizes),
                        "teacher_layers": b.teacher_layers, "min_layers": b.min_layers}
                       for b in self.blocks],
        }

    # -- the set of architectures --------------------------------------------------------

    @property
    def compute_ops(self) -> tuple[str, ...]:
        return tuple(op for op in self.ops if op != IDENTITY)

    @property
    def op_families(self) -> tuple[str, ...]:
        """The supernet's weight sets per layer position (see :func:`op_family`)."""
        return tuple(dict.fromkeys(op_family(op) for op in self.compute_ops))

    def ops_at(self, hidden: int) -> tuple[str, ...]:
        """The computing ops that exist at ``hidden`` (a pruned op must be smaller than
        the full one there)."""
        return tuple(op for op in self.compute_ops if self.dims.op_fits(op, hidden))

    def _layer_counts(self, index: int, hidden: int) -> dict[int, int]:
        """For block ``index`` at ``hidden``: how many op sequences have exactly n
        computing layers."""
        b = self.blocks[index]
        k = len(self.ops_at(hidden))
        if IDENTITY not in self.ops:
            return {b.layers: k ** b.layers}
        anywhere = self.identity == "anywhere"
        return {n: (math.comb(b.layers, n) if anywhere else 1) * k ** n
                for n in range(b.min_layers, b.layers + 1)}

    def _paths_at(self, index: int, hidden: int) -> int:
        return sum(self._layer_counts(index, hidden).values())

    def block_size(self, index: int) -> int:
        return sum(self._paths_at(index, h) for h in self.blocks[index].hidden_sizes)

    def size(self) -> int:
        """The exact number of distinct architectures."""
        blocks = math.prod(self.block_size(i) for i in range(len(self.blocks)))
        return len(self.embed_sizes) * blocks

    def _placements(self, layers: int, n: int) -> Iterator[tuple[int, ...]]:
        """Positions of the n computing layers: any n positions, or the first n."""
        if self.identity == "anywhere":
            yield from itertools.combinations(range(layers), n)
        else:
            yield tuple(range(n))

    def _fill(self, layers: int, positions: tuple[int, ...], ops: Sequence[str]) -> tuple[str, ...]:
        seq = [IDENTITY] * layers
        for p, op in zip(positions, ops):
            seq[p] = op
        return tuple(seq)

    def block_paths(self, index: int) -> Iterator[BlockArch]:
        """Every choice for block ``index`` (what shrinking bins and prunes)."""
        b = self.blocks[index]
        for h in b.hidden_sizes:
            for n in self._layer_counts(index, h):
                for positions in self._placements(b.layers, n):
                    for ops in itertools.product(self.ops_at(h), repeat=n):
                        yield BlockArch(h, self._fill(b.layers, positions, ops))

    def enumerate(self) -> Iterator[Arch]:
        """Every architecture; only sensible for small spaces."""
        per_block = [list(self.block_paths(i)) for i in range(len(self.blocks))]
        for e in self.embed_sizes:
            for blocks in itertools.product(*per_block):
                yield Arch(e, tuple(blocks))

    def sample_block(self, index: int, rng: random.Random | int | None = None) -> BlockArch:
        """A uniformly random path of block ``index``."""
        rng = _as_rng(rng)
        b = self.blocks[index]
        # uniform over paths: pick the width and then how many layers compute, each
        # weighted by how many paths it has, then where they sit and what they run
        h = rng.choices(b.hidden_sizes, weights=[self._paths_at(index, h)
                                                 for h in b.hidden_sizes])[0]
        counts = self._layer_counts(index, h)
        n = rng.choices(list(counts), weights=list(counts.values()))[0]
        positions = (tuple(sorted(rng.sample(range(b.layers), n))) if self.identity == "anywhere"
                     else tuple(range(n)))
        ops = [rng.choice(self.ops_at(h)) for _ in range(n)]
        return BlockArch(h, self._fill(b.layers, positions, ops))

    def sample(self, rng: random.Random | int | None = None) -> Arch:
        """A uniformly random architecture. ``rng``: a ``random.Random``, a seed, or None."""
        rng = _as_rng(rng)
        return Arch(rng.choice(self.embed_sizes),
                    tuple(self.sample_block(i, rng) for i in range(len(self.blocks))))

    def _extreme(self, pick) -> Arch:
        blocks = []
        for i, b in enumerate(self.blocks):
            h = pick(b.hidden_sizes)
            op = pick(self.ops_at(h), key=lambda o: (self.dims.op_params(o, h), o))
            n = pick(self._layer_counts(i, h))
            blocks.append(BlockArch(h, self._fill(b.layers, tuple(range(n)), [op] * n)))
        return Arch(pick(self.embed_sizes), tuple(blocks))

    def teacher_block(self, index: int) -> BlockArch | None:
        """The path of block ``index`` with the teacher's shape (attention and feed-forward
        alternating at the teacher's width), if the space holds it."""
        spec, d = self.blocks[index], self.dims.hidden_size
        if spec.layers != 2 * spec.teacher_layers or d not in spec.hidden_sizes:
            return None
        path = BlockArch(d, ("M", "F") * spec.teacher_layers)
        try:
            self.validate_block(index, path)
        except ConfigError:
            return None
        return path

    def max_arch(self) -> Arch:
        """The architecture with the most parameters (largest sizes, heaviest op)."""
        return self._extreme(max)

    def min_arch(self) -> Arch:
        """The architecture with the fewest parameters."""
        return self._extreme(min)

    # -- checking ------------------------------------------------------------------------

    def validate(self, arch: Arch | str) -> Arch:
        """Return ``arch`` (parsed if a string) if it lies in this space, else raise."""
        if isinstance(arch, str):
            arch = Arch.parse(arch)
        src = f"{_ARCH_SOURCE} {str(arch)!r}"
        fix = f"; it must fit the space {self.name!r} ({self.source or 'in memory'})"
        if arch.embed not in self.embed_sizes:
            raise ConfigError(f"embedding size {arch.embed} is not one of {list(self.embed_sizes)}"
                              + fix, source=src, field="E")
        if len(arch.blocks) != len(self.blocks):
            raise ConfigError(f"has {len(arch.blocks)} blocks, the space has {len(self.blocks)}"
                              + fix, source=src, field="blocks")
        for i, block in enumerate(arch.blocks):
            self.validate_block(i, block, source=src)
        return arch

    def validate_block(self, index: int, a: BlockArch, *, source: str | None = None) -> None:
        """Raise unless ``a`` is a path of block ``index``."""
        s = self.blocks[index]
        src = source or f"block path {str(a)!r}"
        fix = f"; it must fit the space {self.name!r} ({self.source or 'in memory'})"
        if a.hidden not in s.hidden_sizes:
            raise ConfigError(f"hidden size {a.hidden} is not one of {list(s.hidden_sizes)}"
                              + fix, source=src, field=f"block {index}")
        if len(a.ops) != s.layers:
            raise ConfigError(f"has {len(a.ops)} layers, the space has {s.layers}" + fix,
                              source=src, field=f"block {index}")
        for op in a.ops:
            if op not in self.ops:
                raise ConfigError(f"operation {op!r} is not one of {list(self.ops)}" + fix,
                                  source=src, field=f"block {index}")
            if not self.dims.op_fits(op, a.hidden):
                raise ConfigError(f"operation {op!r} does not exist at hidden size {a.hidden} "
                                  f"(it must be smaller than {op[0]} there: "
                                  f"{self.dims.op_inner(op[0], a.hidden)} wide)" + fix,
                                  source=src, field=f"block {index}")
        if len(a.layers) < s.min_layers:
            raise ConfigError(f"has {len(a.layers)} computing layers, fewer than the "
                              f"space's min_layers {s.min_layers}" + fix, source=src,
                              field=f"block {index}")
        if self.identity == "block_end" and IDENTITY in a.ops:
            first = a.ops.index(IDENTITY)
            if any(op != IDENTITY for op in a.ops[first:]):
                raise ConfigError("identity layers must come last in a block" + fix,
                                  source=src, field=f"block {index}")

    def parse(self, text: str) -> Arch:
        """Parse an architecture string and check that it lies in this space."""
        return self.validate(Arch.parse(text))

    def num_params(self, arch: Arch) -> int:
        return arch.num_params(self.dims)

    def param_range(self) -> tuple[int, int]:
        return self.min_arch().num_params(self.dims), self.max_arch().num_params(self.dims)


def sample_archs(embeds: Sequence[int], choices: Sequence[Sequence[BlockArch]], n: int, *,
                 seed: int = 0) -> list[Arch]:
    """``n`` distinct random architectures built from ``embeds`` and one of ``choices[i]``
    per block (all of them, when there are no more than ``n``)."""
    rng = random.Random(seed)
    total = len(embeds) * math.prod(len(c) for c in choices)
    if total <= n:
        return [Arch(e, tuple(p)) for e in embeds for p in itertools.product(*choices)]
    seen: set[Arch] = set()
    while len(seen) < n:
        seen.add(Arch(rng.choice(list(embeds)), tuple(rng.choice(list(c)) for c in choices)))
    return sorted(seen, key=str)


def _as_rng(rng: random.Random | int | None) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    return random.Random(rng)
