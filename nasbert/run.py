"""The run directory: one owner for every path of a run, and the one road between stages.

Every stage takes a :class:`RunDir`, writes its artefacts where the run directory says
and reads the earlier stages' artefacts through it; no stage imports another (nor the
trainer) to find a file. The layout::

    runs/<name>/
      run.yaml                 the resolved recipe, with versions
      data/corpus.pt           the packed corpus (train and dev splits)
      supernet/checkpoints/    resumable training state (one process)
      supernet/ray/            Ray Train's storage: its checkpoints (workers > 1)
      supernet/importance.safetensors  the teacher's head and neuron importance
      supernet/final/          weights + supernet.json;  supernet/summary.json
      shrink/                  block<i>.json: surviving paths per bin with their dev loss
      latency/<device-id>/     protocol, table, samples, fitted predictors
      search/                  Optuna study, candidates, Pareto set, chosen, plan
      subnets/<id>/            extracted models and baselines
      distill/<id>/model/      stage one: each model distilled end to end on the corpus
      embed/<id>/model/        embedding distillation: a sentence-transformers folder
      finetune/<task>/<id>/    fine-tuned models, metrics, predictions, sweeps
      studies/<name>/          a run of its own forked from this one (the supernet
                               trained longer), read beside it
      results.md               the quickstart's table

Importing this module is cheap (no torch): ``nasbert query`` answers through it.

>>> run = RunDir("runs/qs")
>>> run.subnet_dir("latency-8ms")
PosixPath('runs/qs/subnets/latency-8ms')
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from nasbert.errors import ConfigError
from nasbert.recipe import Recipe, recipe_from_dict
from nasbert.space import BlockArch, SearchSpace

if TYPE_CHECKING:
    from nasbert.data.corpus import Corpus
    from nasbert.latency.measure import Protocol
    from nasbert.latency.predictors import TablePredictor
    from nasbert.supernet import Supernet
    from nasbert.teacher import Teacher

TEACHER = "teacher"  # the fine-tuned teacher's id beside the students under finetune/<task>/
NGRAM = "ngram"  # the task's sparse n-gram student's id there (nasbert.compress.ngram_distill)
STATIC = "static"  # the static embedding student's id under embed/ (nasbert.static)
# the task name under which embedding students deploy (`deploy` / `query --task embeddings`)
EMBEDDINGS = "embeddings"

# the folder name's parts under finetune/<task>/, in the order they are appended
_SEED, _EXTRACTED, _AUGMENTED, _BI = "-seed", "-extracted", "-aug", "-bi"
_FORMS = {"length-adaptive": "-lat", "quantisation-aware": "-qat"}


def is_ngram(model_id: str) -> bool:
    """Whether ``model_id`` names a task's n-gram student (``ngram`` or ``ngram-<name>``)."""
    return model_id == NGRAM or model_id.startswith(NGRAM + "-")


def ngram_id(name: str | None = None) -> str:
    """The id of a task's n-gram student: ``ngram``, or ``ngram-<name>`` for another one
    beside it (``name`` reduced to lower-case letters, digits and dashes)."""
    if not name:
        return NGRAM
    clean = "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()
    return f"{NGRAM}-{clean}" if clean else NGRAM


@dataclasses.dataclass(frozen=True)
class Variant:
    """What one folder under ``finetune/<task>/`` holds: a model (a subnet's id, the
    teacher, an n-gram student) fine-tuned one way. Its folder name is built
    (:attr:`folder`) and read back (:meth:`parse`) here alone, so no other module
    encodes or decodes what a folder holds in its name::

        <model_id>[-seed<n>][-extracted][-aug][-bi][-lat|-qat]

    >>> Variant("4x", seed=1, extracted=True).folder
    '4x-seed1-extracted'
    >>> Variant.parse("latency-8ms-qat").form
    'quantisation-aware'
    >>> Variant.parse("teacher-bi").bi
    True
    """

    model_id: str
    seed: int | None = None  # a student seed other than the schedule's own
    extracted: bool = False  # fine-tuned from the extracted weights (no stage one)
    augmented: bool = False  # with teacher-labelled transfer data
    # a form derived from the plain fine-tuned model: "length-adaptive" (LengthDrop,
    # nasbert.compress.length) or "quantisation-aware" (nasbert.compress.qat); "": none
    form: str = ""
    # a sentence-pair task as a bi-encoder (each sentence pooled alone,
    # nasbert.families.pairs), not a cross-encoder (the pair in one sequence)
    bi: bool = False

    def __post_init__(self) -> None:
        if self.form and self.form not in _FORMS:
            raise ValueError(f"unknown form {self.form!r}; one of {sorted(_FORMS)}")

    @property
    def folder(self) -> str:
        return (self.model_id + (f"{_SEED}{self.seed}" if self.seed is not None else "")
                + (_EXTRACTED if self.extracted else "") + (_AUGMENTED if self.augmented else "")
                + (_BI if self.bi else "") + _FORMS.get(self.form, ""))

    @property
    def plain(self) -> bool:
        """The model's main fine-tuned form: not a seed's, an ablation's or a derived form."""
        return self == Variant(self.model_id)

    @classmethod
    def parse(cls, folder: str) -> Variant:
        """The variant a folder name holds (the inverse of :attr:`folder`)."""
        name, form, seed = folder, "", None
        for kind, suffix in _FORMS.items():
            if name.endswith(suffix) and len(name) > len(suffix):
                name, form = name[:-len(suffix)], kind
                break
        bi = name.endswith(_BI) and len(name) > len(_BI)
        name = name[:-len(_BI)] if bi else name
        augmented = name.endswith(_AUGMENTED) and len(name) > len(_AUGMENTED)
        name = name[:-len(_AUGMENTED)] if augmented else name
        extracted = name.endswith(_EXTRACTED) and len(name) > len(_EXTRACTED)
        name = name[:-len(_EXTRACTED)] if extracted else name
        head, sep, digits = name.rpartition(_SEED)
        if sep and head and digits.isdigit():
            name, seed = head, int(digits)
        return cls(name, seed, extracted, augmented, form, bi)


def _path(*parts: str) -> property:
    return property(lambda self: self.path.joinpath(*parts), doc="/".join(parts))


class RunDir:
    """The paths of one run and loaders for what each stage left in them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def of(cls, run: RunDir | str | Path) -> RunDir:
        return run if isinstance(run, RunDir) else cls(run)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- the layout ----------------------------------------------------------------------

    run_yaml = _path("run.yaml")
    corpus_file = _path("data", "corpus.pt")
    checkpoints = _path("supernet", "checkpoints")
    ray_storage = _path("supernet", "ray")
    final = _path("supernet", "final")
    importance = _path("supernet", "importance.safetensors")
    summary = _path("supernet", "summary.json")
    tensorboard = _path("tensorboard")
    shrink = _path("shrink")
    latency = _path("latency")
    search = _path("search")
    subnets = _path("subnets")
    distill = _path("distill")
    embed = _path("embed")
    studies = _path("studies")
    results = _path("results.md")

    def latency_dir(self, protocol: Protocol) -> Path:
        """``latency/<device-id>/``: what was measured under ``protocol`` on this device."""
        from nasbert.latency.measure import device_id, fingerprint

        return self.latency / device_id(fingerprint(protocol))

    def latency_table(self) -> TablePredictor | None:
        """A lookup table of the run measured on this machine (any batch and sequence),
        or None: what shrinking bins by when the run has one."""
        from nasbert.latency.measure import Protocol, fingerprint
        from nasbert.latency.predictors import LatencyPredictor, TablePredictor

        for folder in sorted(self.latency.glob("*/")):
            meta, path = folder / "protocol.json", folder / "table_raw.json"
            if not (meta.is_file() and path.is_file()):
                continue
            stored = json.loads(meta.read_text())
            if fingerprint(Protocol(**stored["protocol"])) == stored["fingerprint"]:
                table = LatencyPredictor.load(path)
                assert isinstance(table, TablePredictor)
                return table
        return None

    def subnet_dir(self, model_id: str) -> Path:
        return self.subnets / model_id

    def distill_dir(self, model_id: str) -> Path:
        """``distill/<model_id>/``: stage one's checkpoints and, in ``model/``, its result."""
        return self.distill / model_id

    def distilled_dir(self, model_id: str) -> Path:
        return self.distill / model_id / "model"

    def embed_dir(self, model_id: str) -> Path:
        """``embed/<model_id>/``: embedding distillation's checkpoints and, in ``model/``,
        its result (a sentence-transformers folder)."""
        return self.embed / model_id

    def embedded_dir(self, model_id: str) -> Path:
        return self.embed / model_id / "model"

    def study(self, name: str) -> RunDir:
        """``studies/<name>/``: a run of its own, forked from this one."""
        return RunDir(self.studies / name)

    def study_copy_id(self, study: RunDir, model_id: str) -> str:
        """The id under which this run holds ``study``'s model ``model_id``
        (``<model_id>-<study>`` under ``subnets/``)."""
        return f"{model_id}-{study.path.name}"

    def finetune_dir(self, task: str, model: str | Variant | None = None) -> Path:
        """``finetune/<task>/``, or the folder of one fine-tuned model in it: a
        :class:`Variant`, or a model id (its plain variant)."""
        folder = self.path / "finetune" / task
        if model is None:
            return folder
        return folder / (model.folder if isinstance(model, Variant) else model)

    def forms_dir(self, task: str) -> Path:
        """Where a task's deployable forms are measured (``<id>/deploy.json``, the
        ``latency.json`` bounds): ``finetune/<task>/``, or ``embed/`` for the
        embedding students (task ``embeddings``)."""
        return self.embed if task == EMBEDDINGS else self.finetune_dir(task)

    def finetuned(self, task: str) -> list[Variant]:
        """Every model fine-tuned on ``task`` (a folder holding ``metrics.json``), as the
        variants their folders hold, the teacher and n-gram students included."""
        folder = self.finetune_dir(task)
        if not folder.is_dir():
            return []
        return [Variant.parse(p.name) for p in sorted(folder.iterdir())
                if (p / "metrics.json").is_file()]

    # -- stage 1: the recipe, the teacher, the corpus, the supernet -----------------------

    def recipe(self) -> Recipe:
        """The resolved recipe the run was started with."""
        if not self.run_yaml.is_file():
            raise ConfigError("is missing; run `nasbert train-supernet DIR --recipe RECIPE` first",
                              source=str(self.run_yaml))
        try:
            stored = yaml.safe_load(self.run_yaml.read_text())["recipe"]
        except (yaml.YAMLError, KeyError, TypeError):
            raise ConfigError("is corrupt; start a new run directory",
                              source=str(self.run_yaml)) from None
        return recipe_from_dict(stored, source=str(self.run_yaml))

    def teacher_name(self) -> str:
        """The run's teacher as transformers loads it: a local folder or a hub id."""
        from nasbert.teacher import resolve

        return resolve(self.recipe().teacher)

    def teacher(self) -> Teacher:
        """The frozen teacher, split into the run's blocks."""
        from nasbert.teacher import Teacher

        recipe = self.recipe()
        return Teacher.load(recipe.teacher, SearchSpace.from_yaml(recipe.space))

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.teacher_name())

    def corpus(self) -> Corpus:
        from nasbert.data.corpus import Corpus

        if not self.corpus_file.is_file():
            raise ConfigError(f"is missing; run `nasbert train-supernet {self.path} --recipe "
                              "RECIPE` first", source=str(self.corpus_file))
        return Corpus.load(self.corpus_file)

    def corpus_key(self) -> str:
        """The digest the packed corpus was built under (what caches built on it depend
        on), from the recipe: no need to load the corpus."""
        from nasbert.data.corpus import corpus_key

        recipe = self.recipe()
        return corpus_key(recipe.corpus, recipe.teacher)

    def space(self) -> SearchSpace:
        """The search space fitted to the teacher's vocabulary and positions: from the
        trained supernet when there is one, else from the recipe and the teacher's config
        (latency can be profiled before training)."""
        meta = self.final / "supernet.json"
        if meta.is_file():
            return SearchSpace.from_dict(json.loads(meta.read_text())["space"], source=str(meta))
        from transformers import AutoConfig

        from nasbert.teacher import fit_space

        return fit_space(SearchSpace.from_yaml(self.recipe().space),
                         AutoConfig.from_pretrained(self.teacher_name()))

    def has_supernet(self) -> bool:
        return (self.final / "model.safetensors").is_file()

    def supernet(self) -> Supernet:
        """The trained supernet (``supernet/final/``)."""
        from nasbert.supernet import Supernet

        if not self.has_supernet():
            raise ConfigError(f"holds no trained supernet; run `nasbert train-supernet {self.path} "
                              "--recipe RECIPE` first", source=str(self.path))
        return Supernet.load(self.final)

    def survivors(self) -> list[dict[BlockArch, float]]:
        """Per block, the surviving paths of shrinking and their dev losses (from
        ``shrink/block<i>.json``, as :meth:`nasbert.train.shrink.Shrinker.write` wrote
        them); empty when the run has not shrunk."""
        out = []
        while (self.shrink / f"block{len(out)}.json").is_file():
            path = self.shrink / f"block{len(out)}.json"
            try:
                data = json.loads(path.read_text())
                out.append({BlockArch.parse(p["path"]): p["loss"]
                            for b in data["bins"] for p in b["paths"]})
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError("is corrupt; re-run `nasbert train-supernet` on this run",
                                  source=str(path)) from None
        return out

    def require_survivors(self) -> list[dict[BlockArch, float]]:
        survivors = self.survivors()
        if not survivors:
            raise ConfigError("holds no shrink tables (shrink/block0.json); run `nasbert "
                              f"train-supernet {self.path} --recipe RECIPE` with shrinking "
                              "enabled",
                              source=str(self.path))
        return survivors

    # -- later stages ---------------------------------------------------------------------

    def subnet_ids(self) -> list[str]:
        """The model ids under ``subnets/`` (searched subnets and baselines)."""
        if not self.subnets.is_dir():
            return []
        return sorted(p.name for p in self.subnets.iterdir()
                      if p.is_dir() and not p.name.startswith(".")
                      and (p / "config.json").is_file())

    def model_ids(self, models: list[str] | tuple[str, ...] | None = None) -> list[str]:
        """``models`` (default: every model under ``subnets/``), each checked to be a model
        folder, before any work starts."""
        have = self.subnet_ids()
        ids = list(models) if models else have
        if not ids:
            raise ConfigError("holds no subnets; run `nasbert search RUN_DIR --latency-ms ...` "
                              "first, or give --subnet", source=str(self.subnets))
        for model_id in ids:
            if not (self.subnet_dir(model_id) / "config.json").is_file():
                raise ConfigError(f"is not a model folder (subnets here: "
                                  f"{', '.join(have) or 'none; run `nasbert search` first'})",
                                  source=str(self.subnet_dir(model_id)))
        return ids
