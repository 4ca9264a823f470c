"""Stage 1: block-wise supernet training with progressive shrinking, on one process or
Ray Train.

>>> from nasbert.recipe import load_recipe
>>> recipe = load_recipe("quickstart", ["train.max_steps=50"])  # doctest: +SKIP
>>> summary = train_supernet(recipe, "runs/qs")                # doctest: +SKIP

The run directory afterwards holds ``run.yaml`` (the resolved recipe), ``data/`` (the
packed corpus), ``supernet/checkpoints/`` or ``supernet/ray/`` (resumable),
``supernet/final/`` (weights and ``supernet.json``), ``supernet/summary.json``,
``shrink/`` (surviving paths per block and bin with their dev losses) and
``tensorboard/`` (see :class:`~nasbert.run.RunDir`). Re-running the same command on the
same run directory resumes from the last checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from nasbert.data.corpus import Corpus, build_corpus, corpus_key
from nasbert.distributed import ray_session
from nasbert.errors import ConfigError
from nasbert.io import atomic_write_text
from nasbert.provenance import provenance
from nasbert.recipe import Recipe
from nasbert.run import RunDir
from nasbert.space import SearchSpace
from nasbert.train.inherit import teacher_importance
from nasbert.train.loop import StepCallback, checkpoint_dirs, train_loop

__all__ = ["StepCallback", "prepare_run", "train_supernet"]

# fields a resumed run may change: how long, and on what
_MAY_CHANGE = {("train", "max_steps"), ("train", "log_every"), ("train", "checkpoint_every"),
               ("scaling",)}


def _differences(old: dict, new: dict, prefix: tuple = ()) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        path = (*prefix, key)
        if any(path[: len(m)] == m for m in _MAY_CHANGE):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, path)
        elif a != b:
            out.append(".".join(path))
    return out


def prepare_run(recipe: Recipe, run: RunDir | str | Path, *, progress: bool = True) -> RunDir:
    """Check the recipe against the run directory, write ``run.yaml`` and the packed
    corpus (once). Everything that can be wrong with the input fails here, before any
    worker starts."""
    from nasbert.teacher import load_tokenizer  # imports transformers: keep it local

    run = RunDir.of(run)
    space = SearchSpace.from_yaml(recipe.space)
    resolved = recipe.to_dict()
    if run.run_yaml.is_file():
        diff = _differences(run.recipe().to_dict(), resolved)
        if diff:
            raise ConfigError(f"the run was started with a different recipe ({', '.join(diff)} "
                              "differ); resume with the same recipe or start a new --run",
                              source=str(run.run_yaml))
    tokenizer = load_tokenizer(recipe.teacher, space)  # checks the teacher fits, too
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.run_yaml, yaml.safe_dump(
        {"recipe": resolved, "provenance": provenance()}, sort_keys=False))
    key = corpus_key(recipe.corpus, recipe.teacher)
    if not run.corpus_file.is_file() or Corpus.load(run.corpus_file).info.get("key") != key:
        corpus = build_corpus(recipe.corpus, tokenizer, progress=progress)
        corpus.info["key"] = key
        corpus.save(run.corpus_file)
    if recipe.train.init in ("fisher", "magnitude"):
        # scored once, here, so that every worker starts from the same permutation
        teacher_importance(recipe, run, space, progress=progress)
    return run


def train_supernet(recipe: Recipe, run: RunDir | str | Path, *, progress: bool = True,
                   callbacks: Sequence[StepCallback] = ()) -> dict:
    """Train (or resume) the supernet of ``recipe`` in ``run``; returns the summary
    (first and last block losses, steps, corpus and teacher). ``callbacks`` are called
    with the trainer after every step, in every worker (they travel to Ray's workers
    pickled)."""
    run = prepare_run(recipe, run, progress=progress)
    if run.has_supernet() and run.summary.is_file():
        summary = json.loads(run.summary.read_text())
        if summary.get("steps") == recipe.train.max_steps:
            if progress:
                print(f"{run}: already trained for {recipe.train.max_steps} steps")
            return summary
    config = {"recipe": recipe.to_dict(), "run_dir": str(run.path.resolve()),
              "progress": progress, "callbacks": list(callbacks)}
    if recipe.scaling.workers == 1 and recipe.scaling.address is None:
        return train_loop(config)
    _train_on_ray(recipe, config, run)
    return json.loads(run.summary.read_text())


def _train_on_ray(recipe: Recipe, config: dict, run: RunDir) -> None:
    from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig
    from ray.train import ScalingConfig as RayScaling
    from ray.train.torch import TorchConfig, TorchTrainer

    scaling = recipe.scaling
    found = checkpoint_dirs(run)  # the run's latest, whichever way it was written
    with ray_session(run.path, num_cpus=scaling.workers * scaling.cpus_per_worker + 1,
                     address=scaling.address):
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={**config, "ray": True, "progress": False},
            scaling_config=RayScaling(num_workers=scaling.workers, use_gpu=scaling.use_gpu,
                                      resources_per_worker={"CPU": scaling.cpus_per_worker}),
            torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
            run_config=RunConfig(
                name="supernet", storage_path=str(run.ray_storage.resolve()),
                failure_config=FailureConfig(max_failures=scaling.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=recipe.train.keep_checkpoints)),
            resume_from_checkpoint=Checkpoint.from_directory(found[-1]) if found else None,
        )
        trainer.fit()
