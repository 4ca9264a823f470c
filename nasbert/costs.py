"""Costs that add up along an architecture: the embedding, each block's layers, and
the projection between two consecutive stages. The parameter count is one
(:func:`params_cost`), the latency lookup table another
(:meth:`nasbert.latency.predictors.TablePredictor.additive`); the exact search
(:mod:`nasbert.search.exact`) solves with any of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nasbert.space import Arch, BlockArch, Dims, transition_exists


@dataclass(frozen=True)
class AdditiveCost:
    """A cost that adds up along the chain: the embedding, each block's layers, and a
    projection between two consecutive stages where one exists (and out to the
    teacher's width after the last); ``finish`` maps the sum to the reported cost (the
    latency table's calibration; it must be increasing)."""

    name: str
    embed: Callable[[int], float]
    path: Callable[[BlockArch], float]
    transition: Callable[[int, int], float]
    finish: Callable[[float], float] = lambda x: x


def params_cost(dims: Dims) -> AdditiveCost:
    """Exact parameter count (:meth:`Arch.num_params`) as an additive cost."""
    def embed(e: int) -> float:
        return (dims.vocab_size + dims.max_position_embeddings + dims.type_vocab_size) * e + 2 * e

    return AdditiveCost("params", embed,
                        lambda p: sum(dims.op_params(op, p.hidden) for op in p.ops),
                        lambda a, b: a * b + b)


def total(cost: AdditiveCost, arch: Arch, dims: Dims) -> float:
    """The finished cost of one architecture (what the search's sums must equal)."""
    ends = [*arch.widths(), dims.hidden_size]
    raw = cost.embed(arch.embed) + sum(cost.path(b) for b in arch.blocks)
    raw += sum(cost.transition(a, b) for a, b in zip(ends, ends[1:])
               if transition_exists(a, b, dims.hidden_size))
    return cost.finish(raw)
