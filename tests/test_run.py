"""The run directory: one owner of every path; clear errors for what a stage lacks."""

from __future__ import annotations

import json
import shutil

import pytest

from nasbert import BlockArch, ConfigError, RunDir


def test_an_empty_run_names_the_command_that_fills_it(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(ConfigError, match="run.yaml: is missing; run `nasbert train-supernet"):
        run.recipe()
    with pytest.raises(ConfigError, match="holds no trained supernet"):
        run.supernet()
    with pytest.raises(ConfigError, match="nasbert train-supernet"):
        run.corpus()
    assert run.survivors() == [] and run.subnet_ids() == []
    with pytest.raises(ConfigError, match="holds no subnets; run `nasbert search"):
        run.model_ids()


def test_a_trained_run_loads_every_stage_s_artefacts(tiny_run):
    run = RunDir(tiny_run)
    assert run.recipe().space.name == "tiny.yaml"
    space = run.space()
    assert space.dims.vocab_size == run.supernet().dims.vocab_size
    survivors = run.survivors()
    assert len(survivors) == len(space.blocks)
    for i, block in enumerate(survivors):
        for path, loss in block.items():
            assert isinstance(path, BlockArch) and loss >= 0
            space.validate_block(i, path)
    assert run.corpus().dev.shape[1] == 32
    assert run.teacher().boundaries == [0, 1, 2]
    assert run.latency_table() is not None


def test_a_corrupt_artefact_is_one_clear_error(tiny_run, tmp_path):
    run = RunDir(shutil.copytree(tiny_run, tmp_path / "run"))
    (run.shrink / "block1.json").write_text("{ not json")
    with pytest.raises(ConfigError, match="block1.json: is corrupt"):
        run.survivors()
    run.run_yaml.write_text(json.dumps(["not", "a", "recipe"]))
    with pytest.raises(ConfigError, match="run.yaml: is corrupt"):
        run.recipe()
    with pytest.raises(ConfigError, match="is not a model folder"):
        run.model_ids(["nope"])
