"""Every stage end to end, and the table that compares what came out.

:func:`quickstart` trains the supernet (with shrinking), profiles latency on this
device, builds hand-designed baselines near fixed speedups over the teacher,
searches a subnet under the measured latency of each group's fastest, distils every one on
the corpus (stage one), fine-tunes everything on a task with distillation and prints
the comparison. :func:`build_results` does the same at the size of the results tables
(several tasks, students over seeds). Each stage skips what a previous call finished,
so a stopped pipeline resumes; ``<run>/stages.json`` adds up each stage's wall time
over the calls that worked on it.

>>> rows = quickstart("runs/quickstart")                      # doctest: +SKIP
>>> print(render(rows, "tweets", "accuracy"))                  # doctest: +SKIP

It calls the stages in order and keeps only what joins them: the plan of which models
to compare (:func:`plan_models`) and the comparison table (:func:`compare`,
:func:`render`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from nasbert.compress.ngram_distill import NgramStudentConfig, train_ngram_student
from nasbert.digest import digest
from nasbert.errors import ConfigError
from nasbert.finetune.augment import AugmentConfig
from nasbert.finetune.config import FinetuneConfig
from nasbert.finetune.stage import finetune
from nasbert.io import atomic_write_text, cached_record
from nasbert.latency.measure import Protocol, device_id, fingerprint, measure_clean
from nasbert.latency.stage import fit, profile, teacher_ms
from nasbert.recipe import load_recipe
from nasbert.reporting import header
from nasbert.run import NGRAM, TEACHER, RunDir
from nasbert.search.baselines import Baselines, build_baselines
from nasbert.search.searchers import Budget
from nasbert.search.stage import search
from nasbert.train import DistillConfig, distill, train_supernet


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
    """Sized to finish in under 15 minutes on 2 CPU cores."""

    recipe: str = "quickstart"  # a shipped recipe (nasbert/recipes/) or a YAML path
    task: str = "tweets"
    data_dir: str | None = None
    speedups: tuple[float, ...] = (2.0, 4.0, 8.0)
    latency_samples: int = 32
    search_trials: int = 150
    top_k: int = 4
    refine: int = 0  # architectures per budget (nasbert.search.refine); measured not to pay
    baselines: bool = True
    reach: float = 2.0  # how far from a speedup's target a baseline may set its budget
    # stage one: every model distilled on the corpus with the same token budget
    stage_one: bool = True
    distill: DistillConfig = DistillConfig(tokens=16_384, batch_size=16, lr=2e-4,
                                           checkpoint_every=4, log_every=2, dev_batches=1)
    finetune: FinetuneConfig = FinetuneConfig(
        epochs=2, lr=3e-4, batch_size=32, alpha=0.5, temperature=2.0, teacher_epochs=1,
        teacher_lr=1e-4, max_seq_len=64, max_train_examples=1000, max_dev_examples=600)
    # a sparse n-gram student of the task, distilled on its training text (the tweets
    # the teacher did not see read without labels); None: none
    ngram: NgramStudentConfig | None = NgramStudentConfig(task_texts=5000)
    # train the supernet and stage one on a CUDA GPU (fine-tuning takes one when there
    # is one); latency is still measured on the protocol's device
    gpu: bool = False


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the comparison table."""

    model: str  # what a person reads: "searched 4x", "uniform-L3-H192 (4x)"
    model_id: str
    kind: str  # teacher | searched | uniform | teacher-first-k | ngram
    target: str  # the speedup group, "" for the teacher
    params: int
    latency_ms: float
    speedup: float
    metric: float
    share: float  # of the teacher's metric
    others: dict[str, float] = dataclasses.field(default_factory=dict)  # the task's other metrics


def measure_side_by_side(run: RunDir | str | Path, ids: Sequence[str], protocol: Protocol,
                         *, others: Mapping[str, Path] | None = None) -> dict[str, float]:
    """The teacher's and each model's latency (subnets by id, ``others`` by folder),
    measured now, side by side in one clean process (interleaved rounds): the ratios a
    table shows."""
    run = RunDir.of(run)
    others = dict(others or {})
    paths = [run.teacher_name(), *(run.subnet_dir(i) for i in ids), *others.values()]
    return dict(zip([TEACHER, *ids, *others], measure_clean(paths, protocol, rounds=5)))


def speedup_name(speedup: float) -> str:
    return f"{speedup:g}x"


class StageClock:
    """Wall time per stage, added up over the calls that worked on it (a resumed stage
    adds what it spent this time), in ``<run>/stages.json``."""

    def __init__(self, run: RunDir, *, progress: bool = True):
        self.path, self.progress = run.path / "stages.json", progress
        self.start = time.time()
        self.this_call: dict[str, float] = {}

    def total(self) -> dict[str, float]:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    @contextlib.contextmanager
    def stage(self, name: str):
        t0 = time.time()
        yield
        spent = time.time() - t0
        self.this_call[name] = round(spent, 1)
        totals = self.total()
        totals[name] = round(totals.get(name, 0.0) + spent, 1)
        atomic_write_text(self.path, json.dumps(totals, indent=1))
        if self.progress:
            print(f"[{time.time() - self.start:6.0f} s] {name} done ({spent:.0f} s)",
                  flush=True)


def plan_models(run: RunDir | str | Path, speedups: Sequence[float], protocol: Protocol, *,
                trials: int = 150, top_k: int = 5, refine: int = 0, baselines: bool = True,
                tolerance: float = 0.05, reach: float = 2.0,
                budgets_ms: Mapping[str, float] | None = None,
                progress: bool = True) -> dict[str, dict[str, str]]:
    """The models to compare at about each speedup over the teacher, at equal measured
    latency. Returns speedup name -> {kind: model id}.

    With ``baselines``, they come first: the uniform stack and the teacher prefix whose
    latency, measured side by side, is nearest to the teacher's over the speedup (kept
    in ``search/baselines.json``, so that a plan cut short is made again from the same
    figures); then the search, under the latency of the group's fastest baseline within
    ``reach`` times of that target (or, where the search reaches no model that fast, the
    next), so that the searched model is no slower than what it is compared with and has
    all the room that baseline has. (Matched the other way
    round, search first, then the nearest hand shapes, every baseline of the results run
    of 2026-11-23 was slower than the searched model it was compared with, up to 1.49x:
    those comparisons were not at equal latency.) A baseline further off (a teacher
    prefix is a coarse family: 1 to 5 of 6 layers) is still compared but sets no budget;
    a speedup with no baseline within ``reach`` is left out, with a note. Without
    baselines, the search works under the teacher's latency over the speedup, plus
    ``tolerance`` (the slack within which a budget counts as honoured); or under
    ``budgets_ms`` (speedup name -> ms), where given (a run searched at another's
    budgets, as the supernet trained longer is; no baselines are built then).

    Every budget is searched with no guard band (the picks are measured side by side and
    the first within the budget kept: the search may pick the uniform stack itself, which
    lies in the space); one whose picks all measured over it is searched again with the
    predictor's held-out error as the band. A speedup no candidate reaches is left out,
    with a note.

    The plan, its budgets and the latencies that set them and that its searched models
    measured are stored in ``search/plan.json`` and reused while the request is the same,
    so that a resumed run (or a later script) compares the same models, not a fresh
    match made with noisier or quieter latency measurements."""
    if budgets_ms is not None and baselines:
        raise ValueError("budgets_ms replaces the baselines' budgets: give baselines=False")
    run = RunDir.of(run)
    stored = run.search / "plan.json"
    request = {"speedups": list(speedups), "tolerance": tolerance, "baselines": baselines,
               "match": "search under the fastest baseline", "reach": reach,
               "budgets_ms": dict(budgets_ms) if budgets_ms is not None else None,
               "device": device_id(fingerprint(protocol))}
    if stored.is_file():  # matched once: a resumed run compares the same models
        previous = json.loads(stored.read_text())
        if previous["request"] == request and all(
                (run.subnet_dir(i) / "config.json").is_file()
                for group in previous["plan"].values() for i in group.values()):
            return previous["plan"]
        if progress:
            why = ("was made for another request" if previous["request"] != request
                   else "names a model no longer under subnets/")
            print(f"planning      anew: {stored} {why}", flush=True)
    base = teacher_ms(run, protocol)
    targets = {speedup_name(s): base / s for s in speedups}
    groups: dict[str, dict[str, str]] = {}
    measured: dict[str, float] = {}  # what set the budgets, and what met them
    notes = []
    options: dict[str, list[float]] = {}  # per speedup, the budgets to try, in order
    if budgets_ms is not None:
        options = {name: [budgets_ms[name]] for name in targets if name in budgets_ms}
        notes += [f"{name}: no budget given" for name in targets if name not in options]
    elif baselines:
        matched = _baselines(run, targets, protocol, progress=progress)
        for name, target in targets.items():
            ms = {i: matched.latency_ms[i] for i in matched.groups[name].values()}
            near = sorted(t for t in ms.values() if max(t / target, target / t) <= reach)
            if not near:
                notes.append(f"{name}: the nearest hand-designed models take "
                             + " and ".join(f"{t:.2f}" for t in sorted(ms.values()))
                             + f" ms, over {reach:g}x from its {target:.2f} ms")
                continue
            groups[name], options[name] = matched.groups[name], near
            measured.update(ms)
    else:
        options = {name: [target * (1 + tolerance)] for name, target in targets.items()}
    budgets = _search_budgets(run, options, notes, trials=trials, top_k=top_k, refine=refine,
                              protocol=protocol, progress=progress, teacher_ms=base)
    plan = {name: {"searched": b.name, **groups.get(name, {})} for name, b in budgets.items()}
    chosen = _chosen(run)
    for name, ids in plan.items():
        ms = chosen[ids["searched"]].get("measured_ms")
        if ms is not None:
            measured[ids["searched"]] = ms
            if ms > budgets[name].latency_ms:
                notes.append(f"{name}: its searched model measured {ms:.2f} ms, over its "
                             f"{budgets[name].latency_ms:g} ms")
    if progress and notes:
        left = [name for name in targets if name not in plan]
        print((f"skipped       {', '.join(left)}: " if left else "note          ")
              + "; ".join(notes), flush=True)
    if not plan:
        raise ConfigError(f"no subnet was found for any of the speedups {list(targets)} ("
                          + "; ".join(notes) + "); lower them or train the supernet with "
                          "more bins (shrink.spacing: log keeps small paths)", source=str(run))
    atomic_write_text(stored, json.dumps({
        "request": request, "teacher_ms": base,
        "budgets_ms": {name: budgets[name].latency_ms for name in plan},
        "measured_ms": measured, "notes": notes, "plan": plan},
        indent=1))
    return plan


def _chosen(run: RunDir) -> dict[str, dict]:
    path = run.search / "chosen.json"
    return json.loads(path.read_text())["chosen"] if path.is_file() else {}


def _search_budgets(run: RunDir, options: Mapping[str, list[float]], notes: list[str], *,
                    teacher_ms: float, progress: bool, **settings) -> dict[str, Budget]:
    """Search each speedup under the first of its ``options`` (ms, in order) that the
    search reaches, with no guard band, then with the predictor's band where every pick
    measured over; a speedup none reaches is left out. Returns speedup name -> the
    budget its searched model (``subnets/<budget name>/``) was found under."""
    def found(b: Budget, chosen: Mapping[str, dict]) -> bool:
        return b.name in chosen and (run.subnet_dir(b.name) / "config.json").is_file()

    def over(b: Budget, chosen: Mapping[str, dict]) -> bool:
        ms = chosen.get(b.name, {}).get("measured_ms")
        return ms is not None and ms > b.latency_ms

    left = {name: [Budget(latency_ms=float(f"{ms:.4g}")) for ms in ms_list]
            for name, ms_list in options.items()}
    out: dict[str, Budget] = {}
    while left:
        current = {name: tried[0] for name, tried in left.items()}
        chosen = _chosen(run)
        todo = list({b.name: b for b in current.values() if not found(b, chosen)}.values())
        for guard in (0.0, None):  # measurement decides; the band where all measured over
            if not todo:
                break
            if progress:
                print(f"searching     {', '.join(b.name for b in todo)} (teacher: "
                      f"{teacher_ms:.2f} ms" + (")" if guard == 0 else
                                                "; again, with the predictor's guard band)"),
                      flush=True)
            try:
                search(run, todo, guard=guard, progress=progress, **settings)
            except ConfigError as e:  # some budget had no candidate: go on with the others
                notes.append(str(e))
            chosen = _chosen(run)
            todo = [b for b in todo if over(b, chosen)]
        for name, b in current.items():
            left[name].pop(0)
            if found(b, chosen):
                out[name] = b
                del left[name]
            elif left[name]:
                notes.append(f"{name}: no model reached {b.name}; held to the next baseline's "
                             f"{left[name][0].latency_ms:g} ms")
            else:
                del left[name]
    return out


def _baselines(run: RunDir, targets: Mapping[str, float], protocol: Protocol, *,
               progress: bool) -> Baselines:
    """:func:`build_baselines` at ``targets``, measured once: kept in
    ``search/baselines.json`` and read back while the targets, the device and the
    models are the same."""
    path = run.search / "baselines.json"
    request = {"targets_ms": dict(targets), "device": device_id(fingerprint(protocol))}
    kept = cached_record(path, digest(request))
    if kept and all((run.subnet_dir(i) / "config.json").is_file()
                    for group in kept["groups"].values() for i in group.values()):
        return Baselines(kept["groups"], kept["latency_ms"])
    matched = build_baselines(run, targets, protocol=protocol, progress=progress)
    atomic_write_text(path, json.dumps({"key": digest(request), "request": request,
                                        **dataclasses.asdict(matched)}, indent=1))
    return matched


def _plan_ids(plan: Mapping[str, Mapping[str, str]]) -> list[str]:
    return list(dict.fromkeys(i for group in plan.values() for i in group.values()))


def compare(run: RunDir | str | Path, task: str, plan: Mapping[str, Mapping[str, str]], *,
            data_dir: str | Path | None = None, config: FinetuneConfig | None = None,
            protocol: Protocol | None = None, latencies: Mapping[str, float] | None = None,
            progress: bool = True) -> list[Row]:
    """Fine-tune the teacher and every planned model on ``task`` and tabulate them with
    their latencies on this device: ``latencies`` (model id -> ms, the teacher's under
    ``"teacher"``) or, by default, measured side by side after the fine-tuning (once:
    :func:`side_by_side`, which a resumed run reads back). The
    task's n-gram student, when the run has one, is the last row."""
    from nasbert.data.tasks import task_spec

    run = RunDir.of(run)
    protocol = protocol or Protocol()
    config = config or FinetuneConfig()
    spec = task_spec(task)
    ids = _plan_ids(plan)
    results = finetune(run, task, data_dir=data_dir, models=ids, config=config,
                       progress=progress)
    ngram = run.finetune_dir(spec.name, NGRAM)
    ngram = ngram if (ngram / "metrics.json").is_file() else None
    if ngram is not None:
        results[NGRAM] = json.loads((ngram / "metrics.json").read_text())
    latency = dict(latencies) if latencies else side_by_side(
        run, ids, protocol, others={NGRAM: ngram / "model"} if ngram else None)
    base_ms = latency[TEACHER]
    dev, metric = spec.dev_splits[0], spec.metric
    teacher_metric = results[TEACHER][dev][metric]

    def others(model_id: str) -> dict[str, float]:
        return {m: results[model_id][dev][m] for m in spec.metrics if m != metric}

    rows = [Row("teacher", TEACHER, "teacher", "", results[TEACHER]["params"], base_ms, 1.0,
                teacher_metric, 1.0, others(TEACHER))]
    for name, group in plan.items():
        for kind, model_id in group.items():
            r = results[model_id]
            label = f"searched {name}" if kind == "searched" else f"{model_id} ({name})"
            rows.append(Row(label, model_id, kind, name, r["params"], latency[model_id],
                            base_ms / latency[model_id], r[dev][metric],
                            r[dev][metric] / teacher_metric if teacher_metric else float("nan"),
                            others(model_id)))
    if ngram is not None and NGRAM in latency:
        r = results[NGRAM]
        rows.append(Row("n-gram student (task-specific)", NGRAM, NGRAM, "", r["params"],
                        latency[NGRAM], base_ms / latency[NGRAM], r[dev][metric],
                        r[dev][metric] / teacher_metric if teacher_metric else float("nan"),
                        others(NGRAM)))
    return rows


def render(rows: Sequence[Row], task: str, metric: str) -> str:
    """The comparison as a Markdown table (the task's other metrics in the last columns)."""
    extra = list(rows[0].others) if rows else []
    lines = [f"| model ({task}) | parameters | latency ms | speedup | dev {metric} | "
             "of teacher |" + "".join(f" dev {m} |" for m in extra),
             "| --- | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * len(extra)]
    for r in rows:
        lines.append(f"| {r.model} | {r.params / 1e6:.2f}M | {r.latency_ms:.2f} | "
                     f"{r.speedup:.2f}x | {r.metric:.4f} | {r.share:.1%} |"
                     + "".join(f" {r.others.get(m, float('nan')):.4f} |" for m in extra))
    return "\n".join(lines)


def quickstart(run: RunDir | str | Path = "runs/quickstart",
               config: QuickstartConfig | None = None, *, protocol: Protocol | None = None,
               progress: bool = True) -> list[Row]:
    """Supernet, latency, search, baselines and fine-tuning on the embedded default;
    writes ``<run>/results.md`` and returns the table's rows."""
    from nasbert.data.tasks import task_spec

    run = RunDir.of(run)
    protocol = protocol or Protocol()
    config = config or QuickstartConfig()
    recipe = load_recipe(config.recipe)
    scaling = dataclasses.replace(recipe.scaling, use_gpu=config.gpu or recipe.scaling.use_gpu)
    recipe = dataclasses.replace(recipe, scaling=scaling)
    spec = task_spec(config.task)
    clock = StageClock(run, progress=progress)
    with clock.stage("supernet"):
        train_supernet(recipe, run, progress=progress)
    with clock.stage("latency"):
        profile(run, protocol, samples=config.latency_samples, progress=progress)
        fit(run, protocol)
    with clock.stage("search and baselines"):
        plan = plan_models(run, config.speedups, protocol, trials=config.search_trials,
                           top_k=config.top_k, refine=config.refine,
                           baselines=config.baselines, reach=config.reach,
                           progress=progress)
    if config.stage_one:
        with clock.stage("stage one"):
            distill(run, _plan_ids(plan), config.distill, scaling=scaling, progress=progress)
    finetune_config = config.finetune
    if not config.stage_one:
        finetune_config = dataclasses.replace(finetune_config, init="extracted")
    with clock.stage("fine-tuning"):
        finetune(run, config.task, data_dir=config.data_dir, models=_plan_ids(plan),
                 config=finetune_config, progress=progress)
    if config.ngram is not None:
        from nasbert.data.tasks import load_task

        with clock.stage("n-gram student"):
            data = load_task(config.task, config.data_dir, seed=finetune_config.seed)
            train_ngram_student(run, data, config.ngram, progress=progress)
    with clock.stage("latency of the table"):
        rows = compare(run, config.task, plan, data_dir=config.data_dir,
                       config=finetune_config, protocol=protocol, progress=progress)

    table = render(rows, spec.name, spec.metric)
    stage_line = ", ".join(f"{k} {v:.0f} s" for k, v in clock.this_call.items())
    atomic_write_text(run.results, header(
        "Quickstart results", "nasbert quickstart" + (" --device cuda" if config.gpu else ""),
        run=f"`{run}`",
        task=f"{spec.name} (dev split; {config.finetune.max_train_examples or 'all'} "
             "training examples)",
        latency=f"batch {protocol.batch}, sequence {protocol.seq}, this machine; all models "
                "measured side by side in one clean process (5 interleaved rounds, median)",
        stage_one=(f"every model distilled on the corpus, {config.distill.tokens:,} tokens each"
                   if config.stage_one else "none (fine-tuned from the extracted weights)"),
        wall_time=f"{time.time() - clock.start:.0f} s ({stage_line})") + f"\n{table}\n")
    return rows


# ----------------------------------------------------------------------------- results run


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


def side_by_side(run: RunDir, ids: Sequence[str], protocol: Protocol, *,
                 others: Mapping[str, Path] | None = None) -> dict[str, float]:
    """Every planned model's latency and the teacher's (and ``others``'), measured once
    side by side and kept in ``search/side_by_side.json`` (a resumed run reports the
    same figures)."""
    path = run.search / "side_by_side.json"
    request = {"ids": list(ids), "device": device_id(fingerprint(protocol))}
    if others:
        request["others"] = {k: str(v) for k, v in others.items()}
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored["request"] == request:
            return stored["ms"]
    ms = measure_side_by_side(run, ids, protocol, others=others)
    atomic_write_text(path, json.dumps({"request": request, "ms": ms}, indent=1))
    return ms


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


def copied_id(study: RunDir, model_id: str) -> str:
    """The id under which the run holds ``study``'s model ``model_id``."""
    return f"{model_id}-{study.path.name}"


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
    stored = run.search / "plan.json"  # the run's budgets, where its plan recorded them
    budgets = json.loads(stored.read_text()).get("budgets_ms") if stored.is_file() else None
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
        model_id = copied_id(study, theirs)
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
        train_supernet(load_recipe(config.recipe), run, progress=progress)
    with clock.stage("latency"):
        profile(run, protocol, samples=config.latency_samples, progress=progress)
        fit(run, protocol)
    with clock.stage("search and baselines"):
        plan = plan_models(run, config.speedups, protocol, top_k=config.top_k,
                           refine=config.refine, progress=progress)
        latency = side_by_side(run, _plan_ids(plan), protocol)
    with clock.stage("stage one"):
        distill(run, _plan_ids(plan), config.distill, progress=progress)
    data = {task: load_task(task, None if task == "tweets" else config.glue_dir,
                            seed=config.schedule(task).seed) for task in config.tasks}

    def train(task: str, model_id: str, schedule: FinetuneConfig) -> None:
        with clock.stage(f"fine-tuning {task}"):
            finetune_student(run, model_id, data[task], schedule, progress=progress)

    for task in config.tasks:  # every task at seed 0
        with clock.stage(f"fine-tuning {task}"):
            finetune_teacher(run, data[task], config.schedule(task), progress=progress)
        for model_id in _plan_ids(plan):
            train(task, model_id, config.schedule(task))
    if config.estimate_task:  # every model of the run, for the estimate's ranking
        others = [i for i in run.subnet_ids() if i not in _plan_ids(plan)]
        if others:  # (none given: distill would take every model)
            with clock.stage("stage one"):
                distill(run, others, config.distill, progress=progress)
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
                distill(run, changed, config.distill, progress=progress)
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
