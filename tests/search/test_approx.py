"""The performance approximator: block losses from the shrink tables, summed."""

from __future__ import annotations

import pytest

from nasbert import Arch, ConfigError, RunDir
from nasbert.search.approx import Approximator


def test_approximator_sums_block_losses_and_evaluates_missing_paths(tiny_run):
    approx = Approximator.from_run(tiny_run)
    choices = approx.choices()
    arch = Arch(32, tuple(c[0] for c in choices))
    expected = approx.embedding_loss(32) + sum(approx.tables[i][c[0]]
                                               for i, c in enumerate(choices))
    assert approx.score(arch) == pytest.approx(expected)
    assert approx.evaluated == 0
    outside = next(p for p in approx.space.block_paths(0) if p not in approx.tables[0])
    loss = approx.block_loss(0, outside)
    assert loss > 0 and approx.evaluated == 1 and approx.block_loss(0, outside) == loss
    assert approx.full_loss(arch) > 0


def test_block_losses_track_the_supernet(tiny_run):
    """A table entry is what the supernet's block scores on the dev batches (the tables
    were re-scored with the final weights)."""
    approx = Approximator.from_run(tiny_run)
    path = approx.choices()[1][0]
    stored = approx.tables[1].pop(path)
    assert approx.block_loss(1, path) == pytest.approx(stored, rel=1e-4)


def test_a_run_without_shrink_tables_says_what_to_run(tiny_run, tmp_path):
    import shutil

    run = RunDir(shutil.copytree(tiny_run, tmp_path / "run"))
    shutil.rmtree(run.shrink)
    with pytest.raises(ConfigError, match="no shrink tables"):
        Approximator.from_run(run)
    (run.final / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="nasbert train-supernet"):
        Approximator.from_run(run)
