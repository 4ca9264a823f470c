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


def test_a_variant_s_folder_name_is_built_and_read_back_by_the_run_alone(tmp_path):
    from nasbert.run import NGRAM, Variant, is_ngram, ngram_id

    cases = [Variant("uniform-L3-H192"), Variant("latency-8.1ms", seed=2),
             Variant("a-b", seed=1, extracted=True, augmented=True),
             Variant("4x", extracted=True, augmented=True),
             Variant("x-seed", form="length-adaptive"), Variant("m", form="quantisation-aware"),
             Variant("latency-8ms-supernet-40-steps", seed=0), Variant("teacher", bi=True),
             Variant("4x-bi", seed=2, extracted=True, augmented=True, bi=True)]
    for v in cases:
        assert Variant.parse(v.folder) == v, v
    assert Variant("4x", seed=1, extracted=True, augmented=True).folder == "4x-seed1-extracted-aug"
    assert Variant("4x").plain and not Variant("4x", augmented=True).plain
    assert Variant.parse("teacher") == Variant("teacher")
    with pytest.raises(ValueError, match="unknown form"):
        Variant("x", form="int8")
    assert is_ngram(NGRAM) and is_ngram(ngram_id("Wiki text")) and not is_ngram("ngrams")
    assert ngram_id("Wiki text!") == "ngram-wiki-text" and ngram_id() == NGRAM
    # what a task folder holds, read back as variants; a folder without a record is not one
    run = RunDir(tmp_path / "run")
    for v in cases[:3]:
        folder = run.finetune_dir("sst2", v)
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text("{}")
    run.finetune_dir("sst2", "half-done").mkdir()
    assert sorted(run.finetuned("sst2"), key=str) == sorted(cases[:3], key=str)
    assert run.finetune_dir("sst2", "4x") == run.finetune_dir("sst2", Variant("4x"))
    assert run.study_copy_id(run.study("supernet-40-steps"), "4x") == "4x-supernet-40-steps"
