"""Hyper-parameter sweeps of a run's students on Ray Tune: ``OptunaSearch`` proposes,
ASHA stops poor trials early, each trial is :func:`~nasbert.finetune.stage.finetune_student`.

>>> records = sweep("runs/qs", "sst2", data_dir="glue/SST-2")   # doctest: +SKIP
>>> records["latency-8ms"]["best"]                              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from nasbert.data.tasks import TaskData
from nasbert.distributed import ray_session
from nasbert.errors import ConfigError
from nasbert.families import family_of
from nasbert.finetune.config import FinetuneConfig, SweepConfig
from nasbert.finetune.stage import finetune_student, finetune_teacher, student_variant
from nasbert.io import atomic_write_text
from nasbert.provenance import provenance
from nasbert.run import RunDir


def set_threads(n: int) -> None:
    """Intra-op threads for this process (Ray workers: their CPU share)."""
    if n > 0:
        torch.set_num_threads(n)
        os.environ["OMP_NUM_THREADS"] = str(n)


def _sweep_trial(params: dict, *, run: str, model_id: str, data: TaskData,
                 base: FinetuneConfig, threads: int) -> None:
    from ray import tune

    set_threads(threads)
    config = dataclasses.replace(base, **params)
    metric = f"eval_{data.spec.metric}"
    trial_dir = Path(tune.get_context().get_trial_dir())

    def report(metrics: dict) -> None:
        tune.report({"score": metrics[metric], "epoch": metrics["epoch"],
                     **{k[5:]: v for k, v in metrics.items() if k.startswith("eval_")}})

    finetune_student(run, model_id, data, config, out_dir=trial_dir / "result",
                     on_epoch=report, progress=False, save_model=False,
                     checkpoint_seconds=None)  # ASHA ends trials by killing them


def sweep(run: RunDir | str | Path, task: str, *, data_dir: str | Path | None = None,
          models: Sequence[str] | None = None, base: FinetuneConfig | None = None,
          config: SweepConfig | None = None, progress: bool = True) -> dict[str, dict]:
    """Sweep each model's fine-tuning hyper-parameters on Ray Tune; writes every trial
    and the best to ``finetune/<task>/<id>/sweep.json`` and returns those records (each
    with its ``path``)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    run = RunDir(RunDir.of(run).path.resolve())
    base = base or FinetuneConfig()
    config = config or SweepConfig()
    data = family_of(task).load(task, data_dir, seed=base.seed, fold=base.fold,
                                folds=base.folds)
    ids = run.model_ids(models)
    finetune_teacher(run, data, base, progress=progress)  # once, before the trials
    space = {"lr": tune.loguniform(*config.lr), "epochs": tune.choice(list(config.epochs)),
             "batch_size": tune.choice(list(config.batch_size)),
             "alpha": tune.uniform(*config.alpha),
             "temperature": tune.uniform(*config.temperature)}
    out: dict[str, dict] = {}
    with ray_session(run.path, num_cpus=config.num_cpus, address=config.address,
                     log_to_driver=progress):
        for model_id in ids:
            folder = run.finetune_dir(data.name, student_variant(model_id, base))
            trainable = tune.with_resources(
                tune.with_parameters(_sweep_trial, run=str(run.path), model_id=model_id,
                                     data=data, base=base, threads=config.cpus_per_trial),
                {"cpu": config.cpus_per_trial})
            tuner = tune.Tuner(
                trainable, param_space=space,
                tune_config=tune.TuneConfig(
                    search_alg=OptunaSearch(metric="score", mode="max", seed=config.seed),
                    scheduler=ASHAScheduler(metric="score", mode="max",
                                            time_attr="training_iteration",
                                            max_t=max(config.epochs),
                                            grace_period=config.grace_period,
                                            reduction_factor=config.reduction_factor),
                    num_samples=config.trials,
                    max_concurrent_trials=config.max_concurrent or None),
                run_config=tune.RunConfig(name=f"sweep-{data.name}-{model_id}",
                                          storage_path=str(folder / "sweep"),
                                          verbose=1 if progress else 0))
            grid = tuner.fit()
            out[model_id] = _sweep_record(grid, model_id, data, base, config)
            atomic_write_text(folder / "sweep.json", json.dumps(out[model_id], indent=1))
            out[model_id]["path"] = str(folder / "sweep.json")
            if progress:
                best = out[model_id]["best"]
                print(f"{model_id:<24} best {data.spec.metric} {best['score']:.4f} with "
                      + ", ".join(f"{k} {v:.3g}" for k, v in best["config"].items()),
                      flush=True)
    return out


def _sweep_record(grid, model_id: str, data: TaskData, base: FinetuneConfig,
                  config: SweepConfig) -> dict:
    trials = []
    for r in grid:
        df = r.metrics_dataframe
        scores = [] if df is None or "score" not in df else [float(v) for v in df["score"]]
        params = {k: (float(v) if isinstance(v, float) else v) for k, v in r.config.items()}
        trials.append({"trial": r.path.rsplit("/", 1)[-1], "config": params,
                       "epochs_run": len(scores), "scores": scores,
                       "best": max(scores) if scores else None,
                       "stopped_early": len(scores) < params["epochs"],
                       "error": str(r.error).splitlines()[0][:300] if r.error else None})
    done = [t for t in trials if t["best"] is not None]
    if not done:
        raise ConfigError(f"no trial finished ({trials[0]['error'] if trials else 'none ran'})",
                          source=f"sweep of {model_id}")
    best = max(done, key=lambda t: t["best"])
    return {"model": model_id, "task": data.spec.name, "metric": data.spec.metric,
            "best": {"score": best["best"], "config": best["config"], "trial": best["trial"]},
            "trials": trials, "base": dataclasses.asdict(base),
            "sweep": dataclasses.asdict(config), **provenance()}
