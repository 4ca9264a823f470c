"""Block-wise supernet training with progressive shrinking, on one process or Ray Train.

>>> from nasbert.train import load_recipe, train_supernet
>>> recipe = load_recipe("supernet/quickstart.yaml", ["train.max_steps=50"])  # doctest: +SKIP
>>> summary = train_supernet(recipe, "runs/qs")                              # doctest: +SKIP

The run directory afterwards holds ``run.yaml`` (the resolved recipe), ``data/`` (the
packed corpus), ``supernet/checkpoints/`` (resumable), ``supernet/final/`` (weights and
``supernet.json``), ``supernet/summary.json``, ``shrink/`` (surviving paths per block
and bin with their dev losses) and ``tensorboard/``. Re-running the same command on
the same run directory resumes from the last checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from nasbert.data import Corpus, build_corpus, corpus_key
from nasbert.distributed import ray_session
from nasbert.errors import ConfigError
from nasbert.io import atomic_write_text
from nasbert.provenance import provenance
from nasbert.space import SearchSpace
from nasbert.train.config import (
    Recipe,
    ScalingConfig,
    ShrinkConfig,
    TrainConfig,
    load_recipe,
    recipe_from_dict,
)
from nasbert.train.loop import FINAL, train_loop

__all__ = ["Recipe", "ScalingConfig", "ShrinkConfig", "TrainConfig", "load_recipe",
           "load_run_recipe", "prepare_run", "run_space", "train_supernet"]

# fields a resumed run may change: how long, and on what
_MAY_CHANGE = {("train", "max_steps"), ("train", "log_every"), ("train", "checkpoint_every"),
               ("scaling",), ("debug_fail_at_step",)}


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


def prepare_run(recipe: Recipe, run_dir: str | Path, *, progress: bool = True) -> Path:
    """Check the recipe against the run directory, write ``run.yaml`` and the packed
    corpus (once). Everything that can be wrong with the input fails here, before any
    worker starts."""
    run_dir = Path(run_dir)
    from nasbert.teacher import load_tokenizer  # imports transformers: keep it local

    space = SearchSpace.from_yaml(recipe.space)
    resolved = recipe.to_dict()
    run_yaml = run_dir / "run.yaml"
    if run_yaml.is_file():
        try:
            stored = yaml.safe_load(run_yaml.read_text())["recipe"]
        except (yaml.YAMLError, KeyError, TypeError):
            raise ConfigError("is corrupt; start a new --run", source=str(run_yaml)) from None
        diff = _differences(stored, resolved)
        if diff:
            raise ConfigError(f"the run was started with a different recipe ({', '.join(diff)} "
                              "differ); resume with the same recipe or start a new --run",
                              source=str(run_yaml))
    tokenizer = load_tokenizer(recipe.teacher, space)  # checks the teacher fits, too
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_yaml, yaml.safe_dump(
        {"recipe": resolved, "provenance": provenance()}, sort_keys=False))
    corpus_path = run_dir / "data" / "corpus.pt"
    key = corpus_key(recipe.corpus, recipe.teacher)
    if not corpus_path.is_file() or Corpus.load(corpus_path).info.get("key") != key:
        corpus = build_corpus(recipe.corpus, tokenizer, progress=progress)
        corpus.info["key"] = key
        corpus.save(corpus_path)
    return run_dir


def train_supernet(recipe: Recipe, run_dir: str | Path, *, progress: bool = True) -> dict:
    """Train (or resume) the supernet of ``recipe`` in ``run_dir``; returns the summary
    (first and last block losses, steps, corpus and teacher)."""
    run_dir = prepare_run(recipe, run_dir, progress=progress)
    summary_path = run_dir / "supernet" / "summary.json"
    if (run_dir / FINAL / "model.safetensors").is_file() and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("steps") == recipe.train.max_steps:
            if progress:
                print(f"{run_dir}: already trained for {recipe.train.max_steps} steps")
            return summary
    config = {"recipe": recipe.to_dict(), "run_dir": str(run_dir.resolve()),
              "progress": progress}
    if recipe.scaling.workers == 1 and recipe.scaling.address is None:
        return train_loop(config)
    _train_on_ray(recipe.scaling, config, run_dir)
    return json.loads(summary_path.read_text())


def _train_on_ray(scaling: ScalingConfig, config: dict, run_dir: Path) -> None:
    from ray.train import FailureConfig, RunConfig
    from ray.train import ScalingConfig as RayScaling
    from ray.train.torch import TorchConfig, TorchTrainer

    with ray_session(run_dir, num_cpus=scaling.workers * scaling.cpus_per_worker + 1,
                     address=scaling.address):
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={**config, "ray": True, "progress": False},
            scaling_config=RayScaling(num_workers=scaling.workers, use_gpu=scaling.use_gpu,
                                      resources_per_worker={"CPU": scaling.cpus_per_worker}),
            torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
            run_config=RunConfig(name="supernet", storage_path=str((run_dir / "ray").resolve()),
                                 failure_config=FailureConfig(max_failures=scaling.max_failures)),
        )
        trainer.fit()


def run_space(run_dir: str | Path) -> SearchSpace:
    """The search space of a run, fitted to its teacher's vocabulary and positions (from
    the trained supernet when there is one, else from the recipe and the teacher's
    config: latency can be profiled before training)."""
    final = Path(run_dir) / FINAL / "supernet.json"
    if final.is_file():
        return SearchSpace.from_dict(json.loads(final.read_text())["space"], source=str(final))
    from transformers import AutoConfig

    from nasbert.teacher import fit_space, resolve

    recipe = load_run_recipe(run_dir)
    return fit_space(SearchSpace.from_yaml(recipe.space),
                     AutoConfig.from_pretrained(resolve(recipe.teacher)))


def load_run_recipe(run_dir: str | Path) -> Recipe:
    """The resolved recipe a run was started with."""
    path = Path(run_dir) / "run.yaml"
    if not path.is_file():
        raise ConfigError("is missing; run `nasbert train-supernet RECIPE --run DIR` first",
                          source=str(path))
    return recipe_from_dict(yaml.safe_load(path.read_text())["recipe"], source=str(path))
