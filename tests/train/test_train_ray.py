"""Supernet training on Ray Train: two CPU workers, one of which dies mid-run; Ray's own
checkpoints bring it back."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from nasbert import RunDir, Supernet
from nasbert.recipe import load_recipe
from nasbert.train import train_supernet
from nasbert.train.loop import checkpoint_dirs

from conftest import tiny_recipe_text


class DieOnce:
    """A test-only step callback: the main worker dies after ``step`` steps, the first
    time only (a marker file remembers), as a machine would."""

    def __init__(self, step: int, marker: Path):
        self.step, self.marker = step, marker

    def __call__(self, trainer) -> None:
        if trainer.step == self.step and trainer.worker.main and not self.marker.exists():
            self.marker.touch()
            os._exit(1)


@pytest.fixture(scope="module")
def ray_run(tiny_teacher, tiny_corpus, tmp_path_factory):
    import ray.cloudpickle

    # the callback travels to Ray's workers by value: they cannot import this test module
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    folder = tmp_path_factory.mktemp("ray")
    recipe = folder / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_teacher, tiny_corpus, max_steps=20,
                                       checkpoint_every=5))
    single = train_supernet(load_recipe(recipe), folder / "single", progress=False)
    # worker 0 dies after step 12 on the first attempt; Ray restarts the group, which
    # resumes from Ray's step-10 checkpoint
    overrides = ["scaling.workers=2", "scaling.max_failures=2"]
    distributed = train_supernet(load_recipe(recipe, overrides), folder / "ray", progress=False,
                                 callbacks=[DieOnce(12, folder / "died")])
    return folder, single, distributed


def test_two_workers_survive_a_dead_worker_and_finish(ray_run):
    folder, _, distributed = ray_run
    assert (folder / "died").exists()  # the failure did happen
    assert distributed["steps"] == 20 and distributed["workers"] == 2
    run = RunDir(folder / "ray")
    # Ray kept its checkpoints (the last two), under the run's supernet/ray/
    kept = checkpoint_dirs(run)
    assert [p.name for p in kept] == ["step-00000015", "step-00000020"]
    assert all(p.is_relative_to(run.ray_storage) for p in kept)
    assert not run.checkpoints.exists()  # no hand-kept copies beside Ray's
    net = Supernet.load(run.final)
    arch = net.space.sample(0)
    ids = torch.randint(0, net.dims.vocab_size, (2, 16))
    with torch.no_grad():
        net.eval()
        assert torch.allclose(net(ids, arch=arch).last_hidden_state,
                              net.extract(arch).eval()(ids).last_hidden_state, atol=1e-5)
    shrink = json.loads((run.shrink / "summary.json").read_text())
    assert shrink["done"]


def test_two_workers_compute_what_one_process_does(ray_run):
    _, single, distributed = ray_run
    for key, value in single["dev_loss_end"].items():
        assert distributed["dev_loss_end"][key] == pytest.approx(value, rel=0.02), key
