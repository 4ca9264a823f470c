"""The exact search against brute force on the tiny space."""

from __future__ import annotations

import random
import time

import pytest

from nasbert.costs import AdditiveCost, params_cost, total
from nasbert.search.exact import attends, best_within, solve


def _problem(space, seed: int):
    rng = random.Random(seed)
    choices = [sorted(space.block_paths(i), key=str) for i in range(len(space.blocks))]
    tables = [{p: rng.uniform(0.1, 1.0) for p in c} for c in choices]
    embed_losses = {e: rng.uniform(0.0, 0.2) for e in space.embed_sizes}
    ops = {(op, h): rng.uniform(0.2, 1.0) for b in space.blocks for h in b.hidden_sizes
           for op in space.compute_ops}
    proj = {}
    latency = AdditiveCost(
        "latency_ms", lambda e: 0.05 * e / 16,
        lambda p: sum(ops[op, p.hidden] for op in p.layers),
        lambda a, b: proj.setdefault((a, b), rng.uniform(0.05, 0.3)),
        lambda x: 1.1 * x + 0.2)
    return choices, tables, embed_losses, latency


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("which", ["latency", "params"])
def test_exact_solution_equals_brute_force(tiny_space, seed, which):
    choices, tables, embed_losses, latency = _problem(tiny_space, seed)
    cost = latency if which == "latency" else params_cost(tiny_space.dims)
    archs = list(tiny_space.enumerate())
    assert len(archs) == tiny_space.size()
    scored = [(embed_losses[a.embed] + sum(t[b] for t, b in zip(tables, a.blocks)),
               total(cost, a, tiny_space.dims), a) for a in archs
              if any(attends(b) for b in a.blocks)]  # what the solver requires
    assert len(scored) < len(archs)
    if which == "params":  # the additive parameter count is the model's exact one
        assert all(c == a.num_params(tiny_space.dims) for _, c, a in scored)
    k = 5
    front = solve(tiny_space.embed_sizes, choices, embed_losses, tables, cost,
                  tiny_space.dims, k=k)
    costs = sorted(c for _, c, _ in scored)
    for q in (0.02, 0.1, 0.3, 0.5, 0.8, 1.0):
        limit = costs[int(q * (len(costs) - 1))]
        brute = sorted((s, c) for s, c, _ in scored if c <= limit)[:k]
        got = best_within(front, limit, k=k)
        assert [round(s.score, 9) for s in got] == [round(s, 9) for s, _ in brute]
        for s in got:  # the solver's sums are the architecture's own
            assert s.cost == pytest.approx(total(cost, s.arch, tiny_space.dims))
            assert s.score == pytest.approx(embed_losses[s.arch.embed] + sum(
                t[b] for t, b in zip(tables, s.arch.blocks)))
    # k = 1 is the Pareto front: nothing in the space beats a member on both
    for s in solve(tiny_space.embed_sizes, choices, embed_losses, tables, cost,
                   tiny_space.dims, k=1):
        assert not any(c <= s.cost and sc < s.score - 1e-12 for sc, c, _ in scored)
        assert any(attends(b) for b in s.arch.blocks)
    # without the condition, the front is that of every architecture
    free = solve(tiny_space.embed_sizes, choices, embed_losses, tables, cost, tiny_space.dims,
                 k=1, require=None)
    best = min(embed_losses[a.embed] + sum(t[b] for t, b in zip(tables, a.blocks))
               for a in archs)
    assert min(s.score for s in free) == pytest.approx(best)


def test_exact_search_is_fast_on_the_default_space(minilm_prune_space):
    """Six blocks of 16 surviving paths (17 million architectures): well under a second."""
    space = minilm_prune_space
    rng = random.Random(0)
    choices = [rng.sample(sorted(space.block_paths(i), key=str), 16)
               for i in range(len(space.blocks))]
    tables = [{p: rng.uniform(0.1, 1.0) for p in c} for c in choices]
    embed_losses = {e: 0.1 for e in space.embed_sizes}
    t = time.perf_counter()
    front = solve(space.embed_sizes, choices, embed_losses, tables, params_cost(space.dims),
                  space.dims, k=10)
    assert time.perf_counter() - t < 1.0
    assert front and all(a.cost <= b.cost for a, b in zip(front, front[1:]))


def test_only_attention_lets_the_first_token_see_the_sequence():
    from nasbert.space import BlockArch

    assert attends(BlockArch(64, ("M", "I"))) and attends(BlockArch(64, ("F", "M4")))
    # a convolution reaches neighbours only: the results run's 8x model had one, no
    # attention, and classified SST-2 at 0.59
    assert not attends(BlockArch(64, ("S3", "F"))) and not attends(BlockArch(64, ("F", "I")))
