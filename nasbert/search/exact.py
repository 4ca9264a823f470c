"""The exact search: the approximator's score and the lookup table's latency (and the
parameter count) are sums over the embedding, the blocks and the projections between
consecutive stages, so choosing one path per block under a budget is a multiple-choice
knapsack along a chain. It is solved exactly by dynamic programming over the blocks,
whose state is the width of the last stage (the only thing a projection couples) and
whether an attention layer has been chosen yet (a classifier reads the first token,
which only attention lets see the whole sequence; the block-wise score does not see
that, so the solver requires one).

Per state the programme keeps the partial architectures that fewer than ``k`` others
dominate (no more costly and no worse), the *k-level Pareto set*: a partial solution
that ``k`` others dominate has ``k`` completions better than each of its own, so no
budget's ``k`` best can come from it. What comes out is therefore, for every budget at
once, exactly the ``k`` best architectures (``k = 1``: the Pareto front). No cost is
discretised.

>>> front = solve(embeds, choices, embed_losses, tables, cost, dims, k=10)  # doctest: +SKIP
>>> best_within(front, 8.0, k=3)                                            # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from nasbert.costs import AdditiveCost
from nasbert.space import Arch, BlockArch, Dims, transition_exists

T = TypeVar("T")


@dataclass(frozen=True)
class Solution:
    arch: Arch
    score: float
    cost: float  # after ``finish``


@dataclass
class _Partial:
    score: float
    cost: float  # raw sum so far
    width: int
    parts: tuple  # embed, then the chosen paths


def _k_level(partials: list[_Partial], k: int) -> list[_Partial]:
    """The partials that fewer than ``k`` others dominate (cost <= and score <=)."""
    partials.sort(key=lambda p: (p.cost, p.score))
    kept, best = [], []  # best: max-heap (negated) of the k lowest scores seen so far
    for p in partials:
        if len(best) == k and -best[0] <= p.score:
            continue  # k earlier ones cost no more and score no worse
        kept.append(p)
        if len(best) < k:
            heapq.heappush(best, -p.score)
        else:
            heapq.heapreplace(best, -p.score)
    return kept


def attends(path: BlockArch) -> bool:
    """Whether a path has an attention layer: what lets the first token, which a
    classifier reads, see the whole sequence. Feed-forward layers never move information
    between positions and convolutions only between neighbours (the space's kernels, 3
    to 7 wide over at most 12 layers, reach 73 positions at most). Measured: the results
    run's 8x model, chosen when one 3-wide convolution counted, scored 0.59 on SST-2
    (majority class 0.51) where the uniform 1-layer stack of the same latency learns the
    task; in the supernet its first token's output was 9x further from the teacher's than
    that token varies across sentences."""
    return any(op[0] == "M" for op in path.layers)


def solve(embeds: Sequence[int], choices: Sequence[Sequence[BlockArch]],
          embed_losses: Mapping[int, float], tables: Sequence[Mapping[BlockArch, float]],
          cost: AdditiveCost, dims: Dims, *, k: int = 1, limit: float | None = None,
          require: Callable[[BlockArch], bool] | None = attends) -> list[Solution]:
    """The k-level Pareto set of (score, cost) over every architecture made of one of
    ``embeds`` and one of ``choices[i]`` per block with at least one path that
    ``require`` accepts (default: one with attention; None: no condition), sorted by
    cost. ``limit`` (on the finished cost) drops what can only exceed it, for speed."""
    d = dims.hidden_size
    over = (lambda c: cost.finish(c) > limit) if limit is not None else (lambda c: False)
    # the state: the last width, and whether a required path has been taken yet
    states: dict[tuple[int, bool], list[_Partial]] = {}
    for e in embeds:
        p = _Partial(embed_losses[e], cost.embed(e), e, (e,))
        if not over(p.cost):
            states.setdefault((e, require is None), []).append(p)
    for i, paths in enumerate(choices):
        nxt: dict[tuple[int, bool], list[_Partial]] = {}
        path_cost = {p: cost.path(p) for p in paths}
        for (width, done), partials in states.items():
            for path in paths:
                h = path.hidden
                step = path_cost[path] + (cost.transition(width, h)
                                          if transition_exists(width, h, d) else 0.0)
                loss = tables[i][path]
                key = (h, done or bool(require and require(path)))
                for q in partials:
                    c = q.cost + step
                    if not over(c):
                        nxt.setdefault(key, []).append(_Partial(q.score + loss, c, h,
                                                                (*q.parts, path)))
        states = {key: _k_level(ps, k) for key, ps in nxt.items()}
    finished = []
    for (width, done), partials in states.items():
        if not done:
            continue
        tail = cost.transition(width, d) if width != d else 0.0
        for q in partials:
            finished.append(_Partial(q.score, q.cost + tail, width, q.parts))
    return [Solution(Arch(q.parts[0], tuple(q.parts[1:])), q.score, cost.finish(q.cost))
            for q in _k_level([q for q in finished if not over(q.cost)], k)]


def pareto(items: Sequence[T], cost: Callable[[T], float]) -> list[T]:
    """The items nothing beats on both ``cost`` and ``.score`` (lower is better), by cost."""
    front, best = [], float("inf")
    for item in sorted(items, key=lambda i: (cost(i), i.score)):
        if item.score < best:
            front.append(item)
            best = item.score
    return front


def best_within(front: Sequence[Solution], limit: float, *, k: int = 1) -> list[Solution]:
    """The ``k`` best-scoring solutions of a cost-sorted front within ``limit``."""
    costs = [s.cost for s in front]
    within = front[:bisect.bisect_right(costs, limit)]
    return sorted(within, key=lambda s: (s.score, s.cost))[:k]
