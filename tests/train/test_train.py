"""Block-wise distillation on a tiny teacher and corpus built by the tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nasbert import ConfigError, RunDir, SearchSpace, Supernet
from nasbert.recipe import load_recipe
from nasbert.train import train_supernet
from nasbert.train.loop import STATE, checkpoint_dirs

from conftest import SPACES, tiny_recipe_text


@pytest.fixture(scope="module")
def trained(tiny_teacher, tiny_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    recipe_path = folder / "recipe.yaml"
    recipe_path.write_text(tiny_recipe_text(tiny_teacher, tiny_corpus))
    run = folder / "run"
    summary = train_supernet(load_recipe(recipe_path), run, progress=False)
    return run, summary


def test_training_lowers_the_block_losses(trained):
    _, summary = trained
    start, end = summary["dev_loss_start"], summary["dev_loss_end"]
    assert set(start) == {"embeddings", "block0", "block1"}
    for key in start:
        # 40 steps on the tiny corpus's real vocabulary. The reference paths start from
        # the teacher's permuted weights and principal-direction bases, near the teacher
        # already: ratios of 0.85 to 0.93 measured (numerics vary with the thread count)
        assert end[key] < 0.97 * start[key], (key, start[key], end[key])
    assert summary["steps"] == 40
    assert summary["initialised_from_teacher"] == ["embeddings", "block 0", "block 1",
                                                   "basis 0", "basis 1"]


def test_shrinking_leaves_m_paths_per_bin_with_losses(trained):
    run, _ = trained
    for i in range(2):
        data = json.loads((run / "shrink" / f"block{i}.json").read_text())
        sizes = [len(b["paths"]) for b in data["bins"] if b["paths"]]
        assert sizes and all(n == 2 for n in sizes), sizes
        for b in data["bins"]:
            for p in b["paths"]:
                assert p["loss"] is not None and p["loss"] >= 0
                assert b["range"][0] <= p["size"] <= b["range"][1]
    summary = json.loads((run / "shrink" / "summary.json").read_text())
    assert summary["done"] and summary["rounds"] >= 1
    survivors = RunDir(run).survivors()
    assert len(survivors) == 2 and all(len(s) == sum(sizes_for(run, i)) for i, s in
                                       enumerate(survivors))


def sizes_for(run: Path, i: int) -> list[int]:
    data = json.loads((run / "shrink" / f"block{i}.json").read_text())
    return [len(b["paths"]) for b in data["bins"]]


def test_written_supernet_reloads_and_extracts(trained):
    run, _ = trained
    net = Supernet.load(run / "supernet" / "final").eval()
    space = net.space
    from nasbert.space import Arch

    survivors = RunDir(run).survivors()
    arch = space.validate(Arch(space.embed_sizes[0], tuple(next(iter(s)) for s in survivors)))
    ids = torch.randint(0, net.dims.vocab_size, (2, 16))
    with torch.no_grad():
        want = net(ids, arch=arch).last_hidden_state
        got = net.extract(arch).eval()(ids).last_hidden_state
    assert torch.allclose(want, got, atol=1e-5)
    meta = json.loads((run / "supernet" / "final" / "supernet.json").read_text())
    assert meta["provenance"]["recipe"]["teacher"].endswith("teacher0")
    assert (run / "run.yaml").is_file() and list((run / "tensorboard").iterdir())


def test_rerun_of_finished_run_does_nothing(trained, tiny_teacher, tiny_corpus, tmp_path):
    run, summary = trained
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_teacher, tiny_corpus))
    before = sorted(p.name for p in checkpoint_dirs(RunDir(run)))
    again = train_supernet(load_recipe(recipe), run, progress=False)
    assert again["steps"] == 40 and sorted(p.name for p in checkpoint_dirs(RunDir(run))) == before


def test_a_run_linked_to_a_folder_not_made_yet_is_made_where_the_link_points(
        tiny_teacher, tiny_corpus, tmp_path):
    """A run kept off a clone that is made anew: ``runs/x`` a link to a folder elsewhere,
    not made yet (once, a bare FileExistsError)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_teacher, tiny_corpus, max_steps=4,
                                       checkpoint_every=2))
    target = tmp_path / "kept" / "x"
    link = tmp_path / "runs" / "x"
    link.parent.mkdir()
    link.symlink_to(target)
    summary = train_supernet(load_recipe(recipe), link, progress=False)
    assert summary["steps"] == 4 and link.is_symlink()
    assert (target / "run.yaml").is_file() and RunDir(link).has_supernet()


def test_kill_and_resume(tiny_teacher, tiny_corpus, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_recipe_text(tiny_teacher, tiny_corpus, max_steps=60,
                                       checkpoint_every=5))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "nasbert", "train-supernet", str(run), "--recipe", str(recipe),
           "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and not any(
            int(p.stem.split("-")[1]) >= 15 for p in checkpoint_dirs(RunDir(run))):
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p.stem.split("-")[1]) for p in checkpoint_dirs(RunDir(run)))
    assert 15 <= killed_at < 60
    assert not (run / "supernet" / "final").exists()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resuming from step {killed_at}" in out.stdout
    summary = json.loads((run / "supernet" / "summary.json").read_text())
    assert summary["steps"] == 60
    leftovers = list(run.rglob(".*"))
    assert leftovers == [], leftovers  # no half-written file or folder anywhere


def test_resume_reproduces_an_uninterrupted_run(tiny_teacher, tiny_corpus, tmp_path):
    import shutil

    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_teacher, tiny_corpus, max_steps=30,
                                       checkpoint_every=10))
    straight = tmp_path / "straight"
    train_supernet(load_recipe(recipe), straight, progress=False)
    # a second run dir holding what the first had at step 20, as if killed just after
    resumed = tmp_path / "resumed"
    (resumed / "supernet" / "checkpoints").mkdir(parents=True)
    shutil.copy(straight / "run.yaml", resumed / "run.yaml")
    shutil.copytree(straight / "data", resumed / "data")
    shutil.copytree(straight / "supernet" / "checkpoints" / "step-00000020",
                    resumed / "supernet" / "checkpoints" / "step-00000020")
    summary = train_supernet(load_recipe(recipe), resumed, progress=False)
    assert summary["steps"] == 30
    a = Supernet.load(straight / "supernet" / "final").state_dict()
    b = Supernet.load(resumed / "supernet" / "final").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / "shrink" / "block0.json").read_text() == \
        (resumed / "shrink" / "block0.json").read_text()


# ----------------------------------------------------------------------------- bad input


def _cli(*args):
    """``nasbert ARGS`` in this process (a fresh one costs seconds of imports per case;
    test_cli checks the same path in a subprocess)."""
    import contextlib
    import io
    import types

    from nasbert.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def _one_line_error(proc, words):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasbert: error:"), proc.stderr
    assert words in lines[0], lines[0]


@pytest.mark.parametrize("change, words", [
    (("teacher: ", "teacher: no-such-teacher-xyz  #"), "teacher 'no-such-teacher-xyz'"),
    (("seq_len: 32", "seq_len: 32\n  text_field: 3"), "corpus.text_field"),
    (("max_steps: 40", "max_steps: -1"), "train.max_steps"),
    (("bins: 3", "binz: 3"), "unknown key 'binz'"),
])
def test_bad_recipes(tiny_teacher, tiny_corpus, tmp_path, change, words):
    text = tiny_recipe_text(tiny_teacher, tiny_corpus)
    old, new = change
    if old == "teacher: ":
        text = text.replace(f"teacher: {tiny_teacher}", "teacher: no-such-teacher-xyz")
    else:
        text = text.replace(old, new)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    _one_line_error(_cli("train-supernet", tmp_path / "run", "--recipe", recipe), words)
    assert not (tmp_path / "run").exists()


def test_teacher_that_does_not_fit_the_space(tiny_teacher, tiny_corpus, tmp_path):
    text = tiny_recipe_text(tiny_teacher, tiny_corpus).replace(
        str(SPACES / "tiny.yaml"), "minilm_l6")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    _one_line_error(_cli("train-supernet", tmp_path / "run", "--recipe", recipe),
                    "has hidden size 32 but the space 'minilm_l6' expects 384")


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_missing_or_empty_corpus(tiny_teacher, tmp_path, kind):
    corpus = tmp_path / "corpus"
    if kind == "empty":
        corpus.mkdir()
        (corpus / "a.txt").write_text("   \n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_teacher, corpus))
    words = "does not exist" if kind == "missing" else "is empty"
    _one_line_error(_cli("train-supernet", tmp_path / "run", "--recipe", recipe), words)


def test_unreadable_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("space: [unclosed\n")
    _one_line_error(_cli("train-supernet", tmp_path / "run", "--recipe", recipe), "malformed YAML")
    _one_line_error(_cli("train-supernet", tmp_path / "run", "--recipe", tmp_path / "nope.yaml"),
                    "no such file")


def test_corrupt_checkpoint_is_reported_and_kept(tiny_teacher, tiny_corpus, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_teacher, tiny_corpus, max_steps=10,
                                       checkpoint_every=5))
    run = tmp_path / "run"
    train_supernet(load_recipe(recipe), run, progress=False)
    ckpt = checkpoint_dirs(RunDir(run))[-1] / STATE
    ckpt.write_bytes(b"not a checkpoint")
    recipe.write_text(tiny_recipe_text(tiny_teacher, tiny_corpus, max_steps=20,
                                       checkpoint_every=5))
    proc = _cli("train-supernet", run, "--recipe", recipe, "--quiet")
    _one_line_error(proc, f"{ckpt}: is corrupt")
    assert ckpt.read_bytes() == b"not a checkpoint"  # nothing already written is damaged


def test_changed_recipe_on_existing_run(trained, tiny_teacher, tiny_corpus, tmp_path):
    run, _ = trained
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_teacher, tiny_corpus, lr=0.1))
    with pytest.raises(ConfigError, match="train.lr"):
        train_supernet(load_recipe(recipe), run, progress=False)


def test_overrides_reach_the_recipe(tiny_recipe):
    recipe = load_recipe(tiny_recipe, ["train.max_steps=7", "shrink.bins=5", "train.lr=1e-4"])
    assert recipe.train.max_steps == 7 and recipe.shrink.bins == 5 and recipe.train.lr == 1e-4
    assert isinstance(SearchSpace.from_yaml(recipe.space), SearchSpace)


def test_candidate_pool_keeps_the_largest_smallest_and_teacher_paths(minilm_space):
    from nasbert.recipe import ShrinkConfig
    from nasbert.train.shrink import Shrinker

    config = ShrinkConfig(candidates=16, bins=4, keep_per_bin=2)
    shrinker = Shrinker(minilm_space, config,
                        lambda i, p: float(p.num_params(minilm_space.dims)))
    for i in range(3):
        paths = shrinker.paths(i)
        assert len(paths) == 16 and len(set(paths)) == 16
        assert minilm_space.max_arch().blocks[i] in paths
        assert minilm_space.min_arch().blocks[i] in paths
        assert str(minilm_space.teacher_block(i)) == "H384:M,F,M,F"
        assert minilm_space.teacher_block(i) in paths


def test_log_spaced_bins_give_small_paths_a_bin_of_their_own(minilm_space):
    from nasbert.recipe import ShrinkConfig
    from nasbert.train.shrink import Shrinker

    def size(i, p):
        return float(p.num_params(minilm_space.dims))

    smallest = minilm_space.min_arch().blocks[0]
    first = {}
    for spacing in ("linear", "log"):
        config = ShrinkConfig(candidates=64, bins=5, keep_per_bin=2, spacing=spacing)
        block = Shrinker(minilm_space, config, size).blocks[0]
        assert smallest in block.bins[0]
        assert sum(map(len, block.bins)) == 64
        first[spacing] = max(size(0, p) for p in block.bins[0])
        # every path lies below its bin's upper edge and above the one before
        for b, paths in enumerate(block.bins):
            for p in paths:
                assert size(0, p) <= block.edges[b] * (1 + 1e-9)
                assert b == 0 or size(0, p) > block.edges[b - 1] * (1 - 1e-9)
    top = max(size(0, p) for p in minilm_space.block_paths(0))
    assert first["linear"] > top / 5 * 0.5  # a fifth of the range: paths of 4 layers
    assert first["log"] < top / 20  # the smallest sizes only
