"""Where a training runs: :func:`train_loop`, the per-worker entry point of both
trainers (a plain function of a ``config`` dict, the shape Ray Train wants), and
:func:`run_on_ray`, which runs it on Ray Train's workers."""

from __future__ import annotations

from pathlib import Path

import torch

from nasbert.recipe import ScalingConfig, recipe_from_dict
from nasbert.run import RunDir
from nasbert.schema import parse
from nasbert.train.embedding import EmbeddingTrainer, EmbedDistillConfig
from nasbert.train.loop import BlockwiseTrainer, Worker, checkpoint_dirs
from nasbert.train.stage_one import DistillConfig, EndToEndTrainer


def train_loop(config: dict) -> dict:
    """The per-worker entry point (one process, or each Ray Train worker). ``config``
    holds ``kind`` (``"supernet"``, the default, ``"distill"`` or ``"embed"``), the run
    directory, ``progress``, ``ray`` (on Ray Train) and ``callbacks`` (see
    :data:`StepCallback`); for the supernet the resolved ``recipe``, for stage one
    ``model_id`` and the ``distill`` configuration, for embedding distillation
    ``model_id`` and the ``embed`` configuration."""
    run = RunDir(config["run_dir"])
    common = {"progress": config.get("progress", True), "on_ray": bool(config.get("ray")),
              "callbacks": config.get("callbacks", ())}
    scaling = ScalingConfig(**config.get("scaling", {}))
    if config.get("kind", "supernet") == "supernet":
        recipe = recipe_from_dict(config["recipe"], source=str(run.run_yaml))
        scaling = recipe.scaling
    worker = Worker.current(scaling.use_gpu)
    if scaling.workers > 1:
        torch.set_num_threads(scaling.cpus_per_worker)
    if config.get("kind", "supernet") == "supernet":
        return BlockwiseTrainer(recipe, run, worker, **common).run()
    if config["kind"] == "embed":
        embed = parse(EmbedDistillConfig, config["embed"], source="embed")
        return EmbeddingTrainer(run, config["model_id"], embed, worker, **common).run()
    distill = parse(DistillConfig, config["distill"], source="distill")
    return EndToEndTrainer(run, config["model_id"], distill, worker, **common).run()


def run_on_ray(config: dict, scaling: ScalingConfig, run_path: Path, storage: Path, *,
               name: str, resume_from: Path, keep: int) -> None:
    """:func:`train_loop` on Ray Train with ``scaling``'s workers (a local Ray under
    ``run_path``, or the cluster at ``scaling.address``); Ray keeps its checkpoints under
    ``storage``. Resumes from the latest checkpoint under ``resume_from`` or ``storage``,
    whichever way it was written."""
    from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig
    from ray.train import ScalingConfig as RayScaling
    from ray.train.torch import TorchConfig, TorchTrainer

    from nasbert.distributed import ray_session

    found = checkpoint_dirs(resume_from, storage)
    with ray_session(run_path, num_cpus=scaling.workers * scaling.cpus_per_worker + 1,
                     address=scaling.address):
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={**config, "ray": True, "progress": False},
            scaling_config=RayScaling(num_workers=scaling.workers, use_gpu=scaling.use_gpu,
                                      resources_per_worker={"CPU": scaling.cpus_per_worker}),
            torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
            run_config=RunConfig(
                name=name, storage_path=str(storage.resolve()),
                failure_config=FailureConfig(max_failures=scaling.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=keep)),
            resume_from_checkpoint=Checkpoint.from_directory(found[-1]) if found else None,
        )
        trainer.fit()
