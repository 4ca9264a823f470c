"""The latency stage: the protocol, the clean process, the lookup table and the learned
predictor (stored with their fingerprint and held-out error), on a tiny trained run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from nasbert import ConfigError, RunDir
from nasbert.latency.measure import (
    Reference,
    cached_ms,
    corrected,
    fingerprint,
    measure,
    measure_clean,
)
from nasbert.latency.predictors import LatencyPredictor, LearnedPredictor, TablePredictor
from nasbert.latency.stage import fit, load_predictor, measured, profile, reference, teacher_ms
from nasbert.recipe import load_recipe
from nasbert.train import train_supernet

from conftest import tiny_recipe_text


@pytest.fixture(scope="module")
def run(tiny_run):
    return RunDir(tiny_run)


def test_predictors_round_trip_with_fingerprint_and_error(run, protocol, tmp_path):
    space = run.space()
    archs = [space.sample(i) for i in range(20)]
    for kind in ("table", "learned"):
        predictor = load_predictor(run, protocol, kind)
        assert predictor.fingerprint == fingerprint(protocol)
        assert set(predictor.error) >= {"mape", "rmse", "tau", "n"}
        predictor.save(tmp_path / f"{kind}.json")
        again = LatencyPredictor.load(tmp_path / f"{kind}.json")
        assert again.fingerprint == predictor.fingerprint and again.error == predictor.error
        assert np.allclose(again.predict(archs), predictor.predict(archs))
        assert (predictor.predict(archs) > 0).all()
    assert load_predictor(run, protocol).kind in ("table", "learned")


def test_predictor_refuses_a_foreign_fingerprint(run, protocol):
    predictor = load_predictor(run, protocol, "table")
    foreign = {**predictor.fingerprint, "cpu": "Some Other CPU", "threads": 64}
    arch = run.space().sample(0)
    with pytest.raises(ConfigError, match="measured on another device.*Some Other CPU"):
        predictor.predict([arch], fingerprint=foreign)
    assert predictor.predict([arch], fingerprint=foreign, allow_foreign=True)[0] > 0
    predictor.predict([arch], fingerprint=fingerprint(protocol))  # its own: fine


def test_the_cpu_in_a_fingerprint_tells_apart_what_changes_the_kernels(protocol):
    """A virtual machine names several CPU generations "AMD EPYC"; on one the kernels are
    AVX2, on another AVX512, and latencies differ by half (results/inference.md): the
    fingerprint carries the vector instructions PyTorch dispatches to, and the family and
    model where the kernel tells them."""
    import torch

    cpu = fingerprint(protocol)["cpu"]
    assert torch.backends.cpu.get_cpu_capability() in cpu
    info = Path("/proc/cpuinfo")
    if info.is_file() and "cpu family" in info.read_text():
        family = next(line.split(":")[1].strip() for line in info.read_text().splitlines()
                      if line.startswith("cpu family"))
        assert f"family {family} model " in cpu


def test_table_sums_its_entries(run, protocol):
    table = load_predictor(run, protocol, "table")
    assert isinstance(table, TablePredictor)
    arch = run.space().parse("E16|H16:M,F|H24:S3,I")
    t = table.table
    want = (t["embed:16"] + t["proj:16:16"] + t["op:M:16"] + t["op:F:16"] + t["proj:16:24"]
            + t["op:S3:24"] + t["proj:24:32"])
    assert table.raw([arch])[0] == pytest.approx(want)
    assert run.latency_table() is not None  # shrinking of a later run would bin by latency


def test_learned_predictor_fits_a_known_law_and_picks_the_better_regressor(run, protocol):
    """scikit-learn's ridge regression recovers a latency that is linear in the features
    (on log scale: exp of a line); the fit chooses between ridge and MLP by validation
    error and says which it kept."""
    space = run.space()
    archs = [space.sample(i) for i in range(80)]
    truth = np.array([np.exp(0.5 + 1e-3 * a.features(space.dims, 32)["sum_h_attn"]
                             + 2e-3 * a.features(space.dims, 32)["sum_h_ffn"]) for a in archs])
    fp = fingerprint(protocol)
    model = LearnedPredictor.fit(archs[:60], truth[:60], space.dims, fp, seq=32)
    assert model.estimator in ("Ridge", "MLPRegressor")
    held_out = model.predict(archs[60:])
    assert np.mean(np.abs(held_out - truth[60:]) / truth[60:]) < 0.02


def test_measure_clean_measures_side_by_side_in_a_fresh_process(run, protocol):
    supernet = run.supernet()
    space = run.space()
    small, large = supernet.extract(space.min_arch()), supernet.extract(space.max_arch())
    path = run.subnet_dir("small")
    small.save_pretrained(path)
    # in-memory models and saved folders alike, in one child process
    fast, slow = measure_clean([path, large], protocol, rounds=2)
    assert 0 < fast < slow
    assert measure(small, protocol) > 0
    first = cached_ms(path, protocol)
    assert json.loads((path / "latency.json").read_text())  # cached by device id
    assert cached_ms(path, protocol) == first  # read back, not measured again


def test_the_reference_rescales_measurements_for_slow_spells(run, protocol, tmp_path):
    """The profile times the teacher every few subnets; later measurements are taken
    beside it and rescaled by its profiled time over its time then."""
    ref = reference(run, protocol)
    rows = [json.loads(line) for line in
            (run.latency_dir(protocol) / "samples.jsonl").read_text().splitlines()]
    assert ref is not None and ref.model == run.teacher_name()
    assert all(r["ref_ms"] > 0 for r in rows) and ref.ms == pytest.approx(
        float(np.median([r["ref_ms"] for r in rows])))
    # a slow spell: the same subnet twice as slow while the teacher was too
    folder = tmp_path / "dev"
    folder.mkdir()
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"arch": "a", "ms": 2.0, "round": 0, "ref_ms": 10.0},
        {"arch": "a", "ms": 4.0, "round": 1, "ref_ms": 20.0},
        {"arch": "a", "ms": 2.0, "round": 2, "ref_ms": 10.0},
        {"arch": "b", "ms": 3.0, "round": 0}]))  # a row from before references: as is
    assert measured(folder) == {"a": pytest.approx(2.0), "b": 3.0}
    assert corrected([2.0, 4.0, 2.2], [10.0, 20.0, 10.0], Reference("t", 10.0)) == \
        pytest.approx(2.0)
    assert corrected([2.0, 4.0, 2.2], [10.0, 20.0, 10.0], None) == 2.2
    # the teacher measured beside itself: about its profiled time, whatever the machine
    # does now (loose: a tiny model's times in microseconds, on a busy machine)
    again = measure_clean([run.teacher_name()], protocol, rounds=5, reference=ref)[0]
    assert 0.5 * ref.ms < again < 2.0 * ref.ms
    assert teacher_ms(run, protocol) == ref.ms


def test_profile_resumes_and_fit_needs_ten_samples(run, protocol, tmp_path):
    folder = run.latency_dir(protocol)
    lines = (folder / "samples.jsonl").read_text().splitlines()
    (folder / "samples.jsonl").write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:10])
    profile(run, protocol, samples=30, progress=False)  # the cut line is measured again
    again = (folder / "samples.jsonl").read_text().splitlines()
    assert len(again) == len(lines) and again[:-2] == lines[:-2]
    few = dataclasses.replace(protocol, seq=16)
    profile(run, few, samples=3, progress=False)
    with pytest.raises(ConfigError, match="fewer than 10"):
        fit(run, few)
    with pytest.raises(ConfigError, match="nasbert latency profile"):
        fit(run, dataclasses.replace(protocol, seq=8))


def test_profiled_subnets_spread_over_the_size_range(run, protocol):
    from nasbert.latency.stage import _spread_archs
    from nasbert.space import Arch

    table = LatencyPredictor.load(run.latency_dir(protocol) / "table_raw.json")
    chosen = _spread_archs(run, table, 12, seed=0)
    space = run.space()
    assert chosen[:2] == [space.max_arch(), space.min_arch()] and len(set(chosen)) == 12
    cost = np.log(table.raw(chosen))
    uniform = np.log(table.raw([space.sample(s) for s in range(200)]))
    lo, hi = cost[1], cost[0]
    # a quarter of the chosen lie in the lowest quarter of the log range, where uniform
    # draws rarely go
    low = lo + (hi - lo) / 4
    assert np.mean(cost[2:] <= low) >= 0.2 > np.mean(uniform <= low) - 0.05
    profiled = [Arch.parse(a) for a in measured(run.latency_dir(protocol))]
    assert set(chosen[:2]) <= set(profiled)


def test_calibration_fits_relative_error():
    from nasbert.space import Dims

    table = TablePredictor(Dims(vocab_size=8, hidden_size=8, max_position_embeddings=8),
                           {}, {})
    # large models flatter than the sums say, as measured on this machine: one small
    raw = np.array([1.0, 10, 11, 12, 13, 14, 15])
    measured_ms = np.array([1.2, 13, 13.5, 14, 14.5, 15, 15.5])
    table.raw = lambda archs: raw  # the calibration only reads the sums
    table.calibrate(list(range(7)), measured_ms)
    small = table.scale * 1.0 + table.offset
    assert abs(small / 1.2 - 1) < 0.05  # 1.21 ms
    a, b = np.polyfit(raw, measured_ms, 1)
    assert (a + b) / 1.2 > 1.6  # unweighted: 2.04 ms


def test_shrinking_bins_by_latency_once_the_run_has_a_table(run, tiny_teacher, tiny_corpus,
                                                            tmp_path):
    import shutil

    from nasbert.space import BlockArch

    fresh = RunDir(tmp_path / "run")
    fresh.path.mkdir()
    shutil.copytree(run.latency, fresh.latency)  # measured on this machine
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_teacher, tiny_corpus, max_steps=10,
                                       checkpoint_every=10))
    train_supernet(load_recipe(recipe), fresh, progress=False)
    summary = json.loads((fresh.shrink / "summary.json").read_text())
    assert summary["binned_by"] == "latency_ms"
    table = fresh.latency_table()
    block = json.loads((fresh.shrink / "block0.json").read_text())
    for b in block["bins"]:
        for p in b["paths"]:
            assert p["size"] == pytest.approx(table.block_ms(BlockArch.parse(p["path"])))
    # by: latency without a table is a clear error
    with pytest.raises(ConfigError, match="no latency table"):
        train_supernet(load_recipe(recipe, ["shrink.by=latency"]), tmp_path / "other",
                       progress=False)
