"""The results run behind ``results/glue.md`` (and the runs ``results_deploy.py`` and
``results_ngram.py`` build on): an experiment, not part of the package. It calls
nasbert's public API only, stage by stage, and resumes where it stopped.

The scripts beside it import it (``from results_run import build_results``); as a
command it only builds the run::

    python scripts/results_run.py runs/wiki --data-dir ../shared/data/glue
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from nasbert.errors import ConfigError
from nasbert.finetune.augment import AugmentConfig
from nasbert.finetune.config import FinetuneConfig
from nasbert.finetune.stage import student_variant
from nasbert.latency.measure import Protocol
from nasbert.latency.stage import fit, profile
from nasbert.pipeline import StageClock, side_by_side
from nasbert.recipe import load_recipe
from nasbert.run import RunDir, Variant
from nasbert.search.plan import Plan, plan_ids, plan_models
from nasbert.train import DistillConfig, distill, train_supernet


def _tweets_schedule() -> FinetuneConfig:
    return FinetuneConfig(max_seq_len=64, epochs=2, lr=1e-4, teacher_epochs=2, teacher_lr=3e-5,
                          alpha=0.5, temperature=2.0, max_train_examples=10_000)


@dataclasses.dataclass(frozen=True)
class ResultsConfig:
    """The run behind ``results/glue.md``: the ``minilm_wiki`` recipe, every planned
    model distilled on the corpus, then fine-tuned on GLUE's whole training sets (and
    the default tweets task), the searched and uniform students over ``seeds``, the
    teacher prefixes over ``baseline_seeds``. Then two studies at seed 0: every model
    under ``subnets/`` (the uniform stacks short-listed and every teacher prefix too) on
    ``estimate_task``, to rank them against the search's estimate; and on
    ``ablation_tasks``, the ``ablation_group``'s models without stage one, with transfer
    data (``augment``), and with both. Then the supernet trained ``longer`` times the
    recipe's steps: searched again at the same budgets, and each pick that changed
    distilled and fine-tuned on ``estimate_task`` at seed 0."""

    recipe: str = "minilm_wiki"
    glue_dir: str | None = None  # the GLUE root (SST-2/, MRPC/, CoLA/); None: the hub
    tasks: tuple[str, ...] = ("sst2", "mrpc", "cola", "tweets")
    speedups: tuple[float, ...] = (2.0, 4.0, 8.0)
    latency_samples: int = 120
    top_k: int = 10
    refine: int = 0  # nasbert.search.refine: off, as measured (README, "search")
    # 224 steps of 32 sequences of 128 tokens for every model: 10 minutes for the largest
    # (2x) here, 2.7 s a step (teacher with attention maps, student forward and backward)
    distill: DistillConfig = DistillConfig(tokens=917_504)
    seeds: tuple[int, ...] = (0, 1, 2)
    baseline_seeds: tuple[int, ...] = (0,)
    estimate_task: str | None = "sst2"
    ablation_tasks: tuple[str, ...] = ("mrpc", "cola")
    ablation_group: str = "4x"
    augment: AugmentConfig = AugmentConfig(per_example=8, corpus_sentences=2000)
    # the supernet trained this many times the recipe's steps (0: not): twice minilm_wiki's
    # 2,000, about 90 minutes more here (glue.md's stage times)
    longer: float = 2.0
    # a task's schedule; default: GLUE_SCHEDULES, and for tweets 10,000 examples, 2 epochs
    schedules: Mapping[str, FinetuneConfig] = dataclasses.field(default_factory=dict)
    # train the supernet and stage one on a CUDA GPU (fine-tuning takes one when there is
    # one); latency is still measured on the CPU, as the protocol says
    gpu: bool = False

    def longer_steps(self, run: RunDir) -> int:
        """The steps of the supernet trained longer: ``longer`` times the run's."""
        return round(self.longer * run.recipe().train.max_steps)

    def schedule(self, task: str) -> FinetuneConfig:
        from nasbert.finetune.config import GLUE_SCHEDULES

        return (self.schedules.get(task) or GLUE_SCHEDULES.get(task)
                or _tweets_schedule())

    def variants(self, task: str) -> dict[str, FinetuneConfig]:
        """The ablation's schedules of ``task``, by name (``"+stage one"`` is the main
        schedule)."""
        main = self.schedule(task)
        return {"without": dataclasses.replace(main, init="extracted"),
                "+augmentation": dataclasses.replace(main, init="extracted",
                                                     augment=self.augment),
                "+stage one": main,
                "both": dataclasses.replace(main, augment=self.augment)}


def seeded(config: FinetuneConfig, seed: int) -> FinetuneConfig:
    """``config`` for another student seed (the default seed keeps the plain folder)."""
    return config if seed == config.seed else dataclasses.replace(config, student_seed=seed)


def longer_supernet(run: RunDir | str | Path, steps: int, *, progress: bool = True) -> RunDir:
    """The run's supernet trained on to ``steps`` steps, in a run of its own
    (``studies/supernet-<steps>-steps/``): set up once from the run's packed corpus,
    teacher importance and last checkpoint (the recipe's ``train.max_steps`` is the
    field changed, and ``shrink.by`` is pinned to what the run's bins were measured in),
    then trained with :func:`~nasbert.train.train_supernet`, which resumes it. The
    linear learning-rate decay is planned anew to the later end, so after the
    checkpoint's step the rate rises again (to ``(steps - s) / (steps - warmup)`` of its
    peak) and decays to zero; shrinking goes on at every epoch end. What the study then
    searches needs the run's latency tables, copied by :func:`longer_picks`."""
    from nasbert.io import atomic_dir
    from nasbert.recipe import updated
    from nasbert.train.loop import checkpoint_dirs

    run = RunDir.of(run)
    recipe = run.recipe()
    if steps <= recipe.train.max_steps:
        raise ConfigError(f"{steps} steps is not longer than the run's {recipe.train.max_steps}",
                          source=str(run.run_yaml), field="train.max_steps")
    study = longer_study(run, steps)
    for stale in study.path.parent.glob(f".{study.path.name}.*"):  # a set-up a kill cut
        shutil.rmtree(stale, ignore_errors=True)
    if study.path.is_dir() and not (study.has_supernet() or checkpoint_dirs(study)):
        shutil.rmtree(study.path)  # nothing to resume from: set up again, never from scratch
    if not study.path.is_dir():  # set up in one piece: a kill leaves nothing half-copied
        found = checkpoint_dirs(run)
        if not run.has_supernet() or not found:
            raise ConfigError("has no trained supernet and checkpoint to train on from; "
                              "run `nasbert train-supernet` on it first", source=str(run))
        with atomic_dir(study.path) as tmp:
            fork = RunDir(tmp)
            for src, dst in ((run.corpus_file, fork.corpus_file),
                             (run.importance, fork.importance)):
                if src.is_file():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
            shutil.copytree(found[-1], fork.checkpoints / found[-1].name)
    binned = run.shrink / "block0.json"
    by = (json.loads(binned.read_text()).get("binned_by") if binned.is_file() else None)
    changes = {"train.max_steps": steps,
               "shrink.by": {"params": "params", "latency_ms": "latency"}.get(by)}
    train_supernet(updated(recipe, changes), study, progress=progress)
    return study


def longer_study(run: RunDir | str | Path, steps: int) -> RunDir:
    """The study of the run's supernet trained on to ``steps`` steps."""
    return RunDir.of(run).study(f"supernet-{steps}-steps")


def longer_picks(run: RunDir | str | Path, study: RunDir, plan: Mapping[str, Mapping[str, str]],
                 protocol: Protocol, *, speedups: Sequence[float], top_k: int, refine: int = 0,
                 progress: bool = True) -> dict[str, str]:
    """Search ``study`` (the supernet trained longer) at the run's budgets (those its
    ``search/plan.json`` records; else the teacher's latency over each speedup); each pick
    whose architecture differs from the run's searched one is copied into the run as
    ``<budget>-<study>`` (to be distilled and fine-tuned beside the others). Returns
    speedup name -> the model id to compare with the run's pick (the run's own where
    the two searches agree)."""
    from nasbert.io import atomic_dir

    run = RunDir.of(run)
    for folder in sorted(run.latency.glob("*/")):  # the same device: its tables hold
        if not (study.latency / folder.name).is_dir():
            with atomic_dir(study.latency / folder.name) as tmp:
                shutil.copytree(folder, tmp, dirs_exist_ok=True)
    stored = Plan.load(run)  # the run's budgets, where its plan recorded them
    budgets = stored.budgets_ms if stored is not None else None
    picks = plan_models(study, speedups, protocol, top_k=top_k, refine=refine, baselines=False,
                        budgets_ms=budgets, progress=progress)
    out = {}
    for name, ids in picks.items():
        if name not in plan:
            continue
        ours, theirs = plan[name]["searched"], ids["searched"]
        if arch_of(run.subnet_dir(ours)) == arch_of(study.subnet_dir(theirs)):
            out[name] = ours
            continue
        model_id = run.study_copy_id(study, theirs)
        if not (run.subnet_dir(model_id) / "config.json").is_file():
            with atomic_dir(run.subnet_dir(model_id)) as tmp:
                shutil.copytree(study.subnet_dir(theirs), tmp, dirs_exist_ok=True)
        out[name] = model_id
    return out


def arch_of(folder: Path) -> str:
    """The architecture string an extracted model's card records."""
    return json.loads((folder / "nasbert.json").read_text())["arch"]


def build_results(run: RunDir | str | Path, config: ResultsConfig | None = None, *,
                  protocol: Protocol | None = None, progress: bool = True) -> dict:
    """Every stage of the results run, resumed where it stopped: supernet, latency,
    search and baselines, their latencies side by side, stage one for every planned
    model, then fine-tuning in phases, so that a stopped run has the most telling
    figures first: every task at seed 0; the estimate study; the ablation; the supernet
    trained longer; the other seeds. Returns ``{"plan", "latency_ms", "stages"}``; the
    fine-tuned records are under ``finetune/<task>/``, stage one's under ``distill/``."""
    from nasbert.data.tasks import load_task
    from nasbert.finetune.stage import finetune_student, finetune_teacher

    run = RunDir.of(run)
    protocol = protocol or Protocol()
    config = config or ResultsConfig()
    clock = StageClock(run, progress=progress)
    with clock.stage("supernet"):
        recipe = load_recipe(config.recipe)
        scaling = dataclasses.replace(recipe.scaling,
                                      use_gpu=config.gpu or recipe.scaling.use_gpu)
        train_supernet(dataclasses.replace(recipe, scaling=scaling), run, progress=progress)
    with clock.stage("latency"):
        profile(run, protocol, samples=config.latency_samples, progress=progress)
        fit(run, protocol)
    with clock.stage("search and baselines"):
        plan = plan_models(run, config.speedups, protocol, top_k=config.top_k,
                           refine=config.refine, progress=progress)
        latency = side_by_side(run, plan_ids(plan), protocol)
    with clock.stage("stage one"):
        distill(run, plan_ids(plan), config.distill, scaling=scaling, progress=progress)
    data = {task: load_task(task, None if task == "tweets" else config.glue_dir,
                            seed=config.schedule(task).seed) for task in config.tasks}

    def train(task: str, model_id: str, schedule: FinetuneConfig) -> None:
        with clock.stage(f"fine-tuning {task}"):
            finetune_student(run, model_id, data[task], schedule, progress=progress)

    for task in config.tasks:  # every task at seed 0
        with clock.stage(f"fine-tuning {task}"):
            finetune_teacher(run, data[task], config.schedule(task), progress=progress)
        for model_id in plan_ids(plan):
            train(task, model_id, config.schedule(task))
    if config.estimate_task:  # every model of the run, for the estimate's ranking
        others = [i for i in run.subnet_ids() if i not in plan_ids(plan)]
        if others:  # (none given: distill would take every model)
            with clock.stage("stage one"):
                distill(run, others, config.distill, scaling=scaling, progress=progress)
        for model_id in others:
            train(config.estimate_task, model_id, config.schedule(config.estimate_task))
    group = plan.get(config.ablation_group, {})
    for task in config.ablation_tasks:
        for schedule in config.variants(task).values():
            for model_id in group.values():
                train(task, model_id, schedule)
    if config.longer and config.estimate_task:
        try:
            with clock.stage("supernet trained longer"):
                study = longer_supernet(run, config.longer_steps(run), progress=progress)
                picks = longer_picks(run, study, plan, protocol, speedups=config.speedups,
                                     top_k=config.top_k, refine=config.refine,
                                     progress=progress)
        except ConfigError as e:  # a study that cannot run holds up none of the seeds
            print(f"skipped       the supernet trained longer: {e}", flush=True)
            picks = {}
        changed = [i for name, i in picks.items() if i != plan[name]["searched"]]
        if changed:
            with clock.stage("stage one"):
                distill(run, changed, config.distill, scaling=scaling, progress=progress)
        for model_id in changed:
            train(config.estimate_task, model_id, config.schedule(config.estimate_task))
    for seed in config.seeds:
        for task in config.tasks:
            for group_ids in plan.values():
                for kind, model_id in group_ids.items():
                    seeds = config.baseline_seeds if kind == "teacher-first-k" else config.seeds
                    if seed in seeds:
                        train(task, model_id, seeded(config.schedule(task), seed))
    return {"plan": plan, "latency_ms": latency, "stages": clock.total()}


def seed_variant(model_id: str, schedule: FinetuneConfig, seed: int) -> Variant:
    """The fine-tuned folder of ``model_id`` at student seed ``seed`` under ``schedule``."""
    return student_variant(model_id, seeded(schedule, seed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="the run directory (created or resumed)")
    parser.add_argument("--data-dir", help="the GLUE root (SST-2/, MRPC/, CoLA/); default: the hub")
    args = parser.parse_args(argv)
    try:
        out = build_results(args.run, ResultsConfig(glue_dir=args.data_dir))
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    print(json.dumps(out["stages"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
