"""End-to-end refinement: the local search on the end-to-end loss over the whole space,
seeded with the re-scored pool and the hand-designed shapes that fit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from nasbert import RunDir
from nasbert.cli import main
from nasbert.latency.stage import load_predictor
from nasbert.search.approx import Approximator
from nasbert.search.exact import attends
from nasbert.search.refine import _neighbours, _valid, hand_designed, refine
from nasbert.search.searchers import Candidate
from nasbert.search.stage import query, search
from nasbert.space import sample_archs

from conftest import budget_at_a_third


@pytest.fixture(scope="module")
def setting(tiny_run, protocol):
    """The tiny run, its approximator and a budget at a third of its usable candidates'
    predicted latencies, as search judges them."""
    run = RunDir(tiny_run)
    predictor = load_predictor(run, protocol, "table")
    approx = Approximator.from_run(run)
    budget = budget_at_a_third(predictor, approx)

    def cost(arch):
        return Candidate(arch, float("nan"), float(predictor.predict([arch])[0]),
                         arch.num_params(approx.space.dims))

    return run, approx, budget, cost


def test_hand_designed_shapes_are_the_deepest_that_fit(setting):
    run, approx, budget, cost = setting
    shapes = hand_designed(approx.space, lambda a: budget.fits(cost(a)))
    assert shapes and all(budget.fits(cost(a)) for a in shapes)
    everything = hand_designed(approx.space, lambda a: True)
    # with no budget: the deepest uniform stack of each width, and the whole teacher
    widths = {a.blocks[0].hidden for a in everything}
    assert len(everything) == len(widths) + 1
    assert len(shapes) <= len(everything)


def test_refinement_never_loses_to_its_seeds_end_to_end(setting):
    run, approx, budget, cost = setting
    feasible = [c for c in (cost(a) for a in sample_archs(approx.space.embed_sizes,
                                                          approx.choices(), 200, seed=1))
                if budget.fits(c) and any(attends(b) for b in c.arch.blocks)]
    pool = sorted((_scored(approx, c) for c in feasible[:3]), key=lambda c: c.full_loss)
    out = refine(approx, pool, cost, budget.fits, evaluations=12, seed=0)
    losses = [c.full_loss for c in out]
    assert losses == sorted(losses)
    assert all(budget.fits(c) and any(attends(b) for b in c.arch.blocks) for c in out)
    origins = [c.origin for c in out]
    assert origins.count("refined") == 12 and "hand-designed" in origins
    assert len({str(c.arch) for c in out}) == len(out)  # nothing evaluated twice
    seeds = [c for c in out if c.origin != "refined"]
    assert out[0].full_loss <= min(c.full_loss for c in seeds)
    # scores are real (block-wise, evaluated on demand for paths shrinking dropped)
    assert all(np.isfinite(c.score) and c.full_loss == pytest.approx(
        approx.full_loss(c.arch)) for c in out[:3])


def test_refinement_goes_on_past_local_optima_until_nothing_within_reach_is_left(setting):
    run, approx, budget, cost = setting
    feasible = [c for c in (cost(a) for a in sample_archs(approx.space.embed_sizes,
                                                          approx.choices(), 200, seed=1))
                if budget.fits(c) and any(attends(b) for b in c.arch.blocks)]
    pool = [_scored(approx, feasible[0])]
    out = refine(approx, pool, cost, budget.fits, evaluations=100_000, seed=0)
    tried = {str(c.arch) for c in out}
    assert len(tried) == len(out) > 50
    # closed: no neighbour of anything it tried is a model within the budget left untried
    paths = [list(approx.space.block_paths(i)) for i in range(len(approx.space.blocks))]
    for c in out:
        for a in _neighbours(c.arch, approx.space, paths):
            usable = (any(attends(b) for b in a.blocks) and _valid(approx.space, a)
                      and budget.fits(cost(a)))
            assert not usable or str(a) in tried


def _scored(approx, c):
    import dataclasses

    return dataclasses.replace(c, score=approx.score(c.arch), full_loss=approx.full_loss(c.arch))


def test_search_with_refinement_keeps_the_best_end_to_end_and_query_finds_it(
        setting, protocol, tmp_path):
    run, _, budget, _ = setting
    copy = RunDir(shutil.copytree(run.path, tmp_path / "run"))
    plain = search(copy, [budget], top_k=3, protocol=protocol, export=False,
                   progress=False)[budget.name]
    refined = search(copy, [budget], top_k=3, protocol=protocol, export=False, refine=10,
                     progress=False)[budget.name]
    assert refined.full_loss <= plain.full_loss
    stored = json.loads((copy.search / "candidates.json").read_text())["candidates"]
    assert sum(c["origin"] == "refined" for c in stored) == 10
    assert query(copy, budget).full_loss == pytest.approx(refined.full_loss)


def test_a_negative_refinement_is_one_clear_error(setting, capsys):
    run, _, budget, _ = setting
    code = main(["search", str(run.path), "--latency-ms", str(budget.latency_ms),
                 "--refine", "-1", "--no-export"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "refine" in err and "negative" in err


def test_end_to_end_losses_of_another_definition_are_not_compared(setting, protocol, tmp_path):
    """A store written when the end-to-end loss meant something else answers from the
    block-wise scores until searched again, not from incomparable losses."""
    run, _, budget, _ = setting
    copy = RunDir(shutil.copytree(run.path, tmp_path / "run"))
    search(copy, [budget], top_k=3, protocol=protocol, export=False, refine=4, progress=False)
    assert query(copy, budget).full_loss is not None
    path = copy.search / "candidates.json"
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, "end_to_end": "token MSE + first-token MSE"}))
    answer = query(copy, budget)
    assert answer.full_loss is None and answer.origin is None
