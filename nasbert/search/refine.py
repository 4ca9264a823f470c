"""End-to-end refinement of a budget's candidates: a local search on the loss the search
re-scores by, over the whole space rather than the survivors of shrinking.

The block-wise score (the sum of each block's dev loss on the teacher's own inputs)
ranks architectures well when every block computes. At small budgets, where most blocks
are identities, it ranks them badly: on the results run at 8x (4.3 ms) it put the
searched model (block-wise 0.312) ahead of the uniform one-layer stack (0.366) while end
to end the uniform stack was closer to the teacher (every token's MSE 0.0599 against
0.0691, the first token's 0.099 against 0.168), as SST-2 and MRPC then agreed; and
shrinking had left no small attention path but one, so no re-scoring of the block-wise
best could find a better model.

So, per budget, the pool re-scored end to end is widened with the space's hand-designed
shapes that fit (the deepest uniform ``M, F`` stack of each width, the teacher's longest
prefix), and a first-improvement local search starts from the pool's best: it tries, in
random order, the neighbours within the budget (one block's path changed to any path of
the space, or the embedding size), moves to the first whose end-to-end loss is lower and
looks around there. At a local optimum it goes on from the best architecture evaluated
whose neighbours it has not looked at yet, so it evaluates ``evaluations`` new
architectures unless fewer are within reach of the budget. What it returns never loses,
on that loss, to a hand design the space can express.

Measured on the results run, it does not pay, so it is off by default (``nasbert search
--refine N`` turns it on): it lowered the end-to-end loss and lost accuracy at 2x and
4x (SST-2 0.8796 and 0.8612 against 0.8853 and 0.8693 without it, seed 0) and did not
beat the uniform stack at 8x; within a budget the end-to-end loss does not separate the
close models a local search finds.

>>> refined = refine(approx, rescored, cost, budget.fits, evaluations=60)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from nasbert.errors import ConfigError
from nasbert.search.baselines import prefix_arch, uniform_archs
from nasbert.search.exact import attends
from nasbert.search.searchers import Candidate
from nasbert.space import IDENTITY, Arch, SearchSpace

if TYPE_CHECKING:
    from nasbert.search.approx import Approximator

__all__ = ["hand_designed", "refine"]


def hand_designed(space: SearchSpace, fits: Callable[[Arch], bool]) -> list[Arch]:
    """The hand-designed shapes that fit: for each width, the uniform stack with the most
    layers, and the teacher's longest prefix."""
    deepest: dict[int, tuple[int, Arch]] = {}
    for arch in uniform_archs(space).values():
        layers = sum(op != IDENTITY for b in arch.blocks for op in b.layers)
        width = arch.blocks[0].hidden
        if fits(arch) and layers > deepest.get(width, (0, None))[0]:
            deepest[width] = (layers, arch)
    out = [a for _, a in deepest.values()]
    for k in range(sum(b.teacher_layers for b in space.blocks), 0, -1):
        arch = prefix_arch(space, k)
        if arch is not None and fits(arch):
            out.append(arch)
            break
    return out


def _neighbours(arch: Arch, space: SearchSpace, paths: list[list]) -> Iterator[Arch]:
    """``arch`` with one block's path, or the embedding size, changed."""
    for e in space.embed_sizes:
        if e != arch.embed:
            yield Arch(e, arch.blocks)
    for i, options in enumerate(paths):
        for path in options:
            if path != arch.blocks[i]:
                yield Arch(arch.embed, (*arch.blocks[:i], path, *arch.blocks[i + 1:]))


def refine(approx: Approximator, pool: Sequence[Candidate], cost: Callable[[Arch], Candidate],
           fits: Callable[[Candidate], bool], *, evaluations: int, seed: int = 0,
           progress: str | None = None) -> list[Candidate]:
    """``pool`` (re-scored end to end), the hand-designed shapes that fit and what the
    local search evaluated, each with its ``full_loss``, best first. ``cost`` makes an
    unscored candidate (latency and parameters) of an architecture, ``fits`` says whether
    one is within the budget."""
    space = approx.space
    seen = {str(c.arch): c for c in pool}

    def evaluated(arch: Arch, origin: str) -> Candidate:
        c = dataclasses.replace(cost(arch), score=approx.score(arch),
                                full_loss=approx.full_loss(arch), origin=origin)
        seen[str(arch)] = c
        return c

    for arch in hand_designed(space, lambda a: fits(cost(a))):
        if str(arch) not in seen:
            evaluated(arch, "hand-designed")
    paths = [list(space.block_paths(i)) for i in range(len(space.blocks))]
    rng = random.Random(seed)

    def untried(around: Arch) -> list[Arch]:
        """The neighbours not yet evaluated that are models (they attend) within the
        budget, in random order."""
        out = [a for a in _neighbours(around, space, paths)
               if str(a) not in seen and any(attends(b) for b in a.blocks)
               and _valid(space, a) and fits(cost(a))]
        rng.shuffle(out)
        return out

    expanded: set[str] = set()

    def around(c: Candidate) -> list[Arch]:
        expanded.add(str(c.arch))
        return untried(c.arch)

    best = min(seen.values(), key=lambda c: c.full_loss)
    queue = around(best)
    bar = tqdm(total=evaluations, desc=progress, disable=not progress, leave=False)
    for _ in range(evaluations):
        queue = [a for a in queue if str(a) not in seen]
        while not queue:  # a local optimum: go on from the best not yet looked around
            rest = [c for c in seen.values() if str(c.arch) not in expanded]
            if not rest:
                break  # every architecture within reach of the budget tried
            queue = around(min(rest, key=lambda c: c.full_loss))
        if not queue:
            break
        c = evaluated(queue.pop(), "refined")
        bar.update()
        if c.full_loss < best.full_loss:  # first improvement: move, look around there
            best = c
            queue = around(best)
            bar.set_postfix(loss=f"{best.full_loss:.4f}")
    bar.close()
    return sorted(seen.values(), key=lambda c: c.full_loss)


def _valid(space: SearchSpace, arch: Arch) -> bool:
    try:
        space.validate(arch)
    except ConfigError:
        return False
    return True
