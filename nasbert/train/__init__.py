"""Stage 1: block-wise supernet training with progressive shrinking, on one process or
Ray Train (:func:`train_supernet`); stage one of the two-stage distillation, every
extracted model distilled end to end on the corpus (:func:`distill`); and embedding
distillation, a model trained to reproduce the teacher's sentence embeddings
(:func:`distill_embeddings`); all in the same loop.

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

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from nasbert.data.corpus import Corpus, build_corpus, corpus_key
from nasbert.errors import ConfigError
from nasbert.io import atomic_write_text
from nasbert.provenance import provenance
from nasbert.recipe import Recipe, ScalingConfig
from nasbert.run import STATIC, RunDir
from nasbert.space import SearchSpace
from nasbert.train.embedding import EmbedDistillConfig, embedded
from nasbert.train.inherit import teacher_importance
from nasbert.train.launch import run_on_ray, train_loop
from nasbert.train.loop import StepCallback
from nasbert.train.stage_one import DistillConfig, distilled

__all__ = ["DistillConfig", "EmbedDistillConfig", "StepCallback", "distill",
           "distill_embeddings", "make_static", "prepare_run", "train_supernet"]

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
                              "differ); resume with the same recipe or start a new run directory",
                              source=str(run.run_yaml))
    if run.path.exists() and not run.path.is_dir():
        raise ConfigError("is a file; name a folder for the run", source=str(run.path))
    tokenizer = load_tokenizer(recipe.teacher, space)  # checks the teacher fits, too
    key = corpus_key(recipe.corpus, recipe.teacher)
    if not run.corpus_file.is_file() or Corpus.load(run.corpus_file).info.get("key") != key:
        # before run.yaml: a corpus that cannot be read leaves no run behind to clash with
        corpus = build_corpus(recipe.corpus, tokenizer, progress=progress)
        corpus.info["key"] = key
        # resolved: a run folder that is a link to a folder not made yet (a run kept off
        # a clone that is made anew) is made where the link points
        run.path.resolve().mkdir(parents=True, exist_ok=True)
        corpus.save(run.corpus_file)
    atomic_write_text(run.run_yaml, yaml.safe_dump(
        {"recipe": resolved, "provenance": provenance()}, sort_keys=False))
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
        return train_loop(config)  # checks the teacher's path before its first step
    if recipe.train.init != "random":
        from nasbert.train.inherit import preflight

        preflight(recipe, run)
    run_on_ray(config, recipe.scaling, run.path, run.ray_storage, name="supernet",
               resume_from=run.checkpoints, keep=recipe.train.keep_checkpoints)
    return json.loads(run.summary.read_text())


def distill(run: RunDir | str | Path, models: Sequence[str] | None = None,
            config: DistillConfig | None = None, *, scaling: ScalingConfig | None = None,
            progress: bool = True, callbacks: Sequence[StepCallback] = ()) -> dict[str, dict]:
    """Stage one for ``models`` (default: every model under ``subnets/``), one after the
    other, each with the same token budget; returns each one's record. A model already
    distilled with this configuration is skipped; one stopped midway resumes from its
    last checkpoint. ``scaling.workers > 1`` runs each on Ray Train."""
    run = RunDir.of(run)
    config = config or DistillConfig()
    ids = run.model_ids(models)
    run.corpus()  # fails here, before any work, when the run has none
    return _each_model(run, ids, "distill", config, lambda i: distilled(run, i, config),
                       run.distill_dir, run.distilled_dir, scaling, progress, callbacks)


def distill_embeddings(run: RunDir | str | Path, models: Sequence[str] | None = None,
                       config: EmbedDistillConfig | None = None, *,
                       scaling: ScalingConfig | None = None, progress: bool = True,
                       callbacks: Sequence[StepCallback] = ()) -> dict[str, dict]:
    """Embedding distillation for ``models`` (default: every model under ``subnets/``;
    ``"static"`` names the static student, :func:`make_static`), one after the other
    (:mod:`nasbert.train.embedding`); returns each one's record. A
    model already distilled with this configuration, from the same weights and text, is
    skipped; one stopped midway resumes. Each result is a sentence-transformers folder,
    ``embed/<id>/model/``."""
    from nasbert.train.embedding import source_dir

    run = RunDir.of(run)
    config = config or EmbedDistillConfig()
    others = [m for m in (models or ()) if m != STATIC]
    ids = run.model_ids(others) if others or not models else []
    if models and STATIC in models:
        ids.append(STATIC)
    for model_id in ids:  # every start is there before any work
        source_dir(run, model_id, config)
    if config.texts is None:
        run.corpus()
    elif not Path(config.texts).is_file():
        raise ConfigError("is missing; give a text file, one text per line",
                          source=config.texts)
    return _each_model(run, ids, "embed", config, lambda i: embedded(run, i, config),
                       run.embed_dir, run.embedded_dir, scaling, progress, callbacks)


def make_static(run: RunDir | str | Path, *, progress: bool = True) -> Path:
    """The static embedding student's table as the teacher makes it (one row per token:
    the teacher's pooled embedding of the token alone; :func:`nasbert.static
    .static_from_teacher`), written once to ``embed/static/init/``; train it with
    ``distill_embeddings(run, ["static"], config)``."""
    from nasbert.io import atomic_dir
    from nasbert.pooling import Pooling
    from nasbert.static import static_from_teacher
    from nasbert.teacher import Teacher

    run = RunDir.of(run)
    out = run.embed_dir(STATIC) / "init"
    if (out / "config.json").is_file():
        return out
    recipe = run.recipe()
    teacher = Teacher.load(recipe.teacher, SearchSpace.from_yaml(recipe.space))
    tokenizer = run.tokenizer()
    pooling = Pooling.of(run.teacher_name())
    if progress:
        print(f"static student: the teacher embeds each of {len(tokenizer):,} tokens alone",
              flush=True)
    model = static_from_teacher(teacher.model, tokenizer, pooling, provenance=provenance(
        teacher=recipe.teacher, made="each token's row: the teacher's pooled embedding of "
        "[CLS] token [SEP]"))
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def _each_model(run: RunDir, ids: Sequence[str], kind: str, config,
                done: Callable[[str], dict | None], folder: Callable[[str], Path],
                result: Callable[[str], Path], scaling: ScalingConfig | None, progress: bool,
                callbacks: Sequence[StepCallback]) -> dict[str, dict]:
    """One training per model in the one loop (one process, or Ray Train), skipping the
    ones ``done`` finds; each one's record, with its dev loss before and after."""
    scaling = scaling or ScalingConfig()
    out = {}
    for model_id in ids:
        record = done(model_id)
        if record:
            out[model_id] = record
            continue
        start = time.time()
        loop_config = {"kind": kind, "run_dir": str(run.path.resolve()),
                       "model_id": model_id, kind: dataclasses.asdict(config),
                       "scaling": dataclasses.asdict(scaling), "progress": progress,
                       "callbacks": list(callbacks)}
        if scaling.workers == 1 and scaling.address is None:
            train_loop(loop_config)
        else:
            run_on_ray(loop_config, scaling, run.path, folder(model_id) / "ray",
                       name=f"{kind}-{model_id}", resume_from=folder(model_id) / "checkpoints",
                       keep=config.keep_checkpoints)
            shutil.rmtree(folder(model_id) / "ray", ignore_errors=True)
        record = done(model_id)
        if record is None:
            raise ConfigError(f"was not written; the {kind} run stopped early",
                              source=str(result(model_id)))
        out[model_id] = record
        if progress:
            first = record.get("dev_loss_start") or record["dev_start"]
            last = record.get("dev_loss_end") or record["dev_end"]
            name = {"distill": "stage one", "embed": "embeddings"}[kind]
            print(f"{model_id:<24} {name}: dev loss {first['loss']:.4f} -> {last['loss']:.4f} "
                  f"({record['steps']} steps, {time.time() - start:.0f} s)", flush=True)
    return out
