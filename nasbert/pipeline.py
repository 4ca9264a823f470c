"""The quickstart: every stage end to end, and the table that compares what came out.

:func:`quickstart` trains the supernet (with shrinking), profiles latency on this
device, plans the comparison (:func:`~nasbert.search.plan.plan_models`: hand-designed
baselines near fixed speedups over the teacher, a subnet searched under the measured
latency of each group's fastest), distils every one on the corpus (stage one),
fine-tunes everything on a task with distillation and prints the comparison. Each stage
skips what a previous call finished, so a stopped quickstart resumes;
``<run>/stages.json`` adds up each stage's wall time over the calls that worked on it.

>>> rows = quickstart("runs/quickstart")                      # doctest: +SKIP
>>> print(render(rows, "tweets", "accuracy"))                  # doctest: +SKIP

It calls the stages in order and keeps only what joins them: the comparison table
(:func:`compare`, :func:`render`) and the latencies it shows (:func:`side_by_side`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from nasbert.compress.ngram_distill import NgramStudentConfig, train_ngram_student
from nasbert.finetune.config import FinetuneConfig
from nasbert.finetune.record import FinetunedRecord
from nasbert.finetune.stage import finetune
from nasbert.io import atomic_write_text
from nasbert.latency.measure import Protocol, device_id, fingerprint, measure_clean
from nasbert.latency.stage import fit, profile
from nasbert.recipe import load_recipe
from nasbert.reporting import header
from nasbert.run import NGRAM, TEACHER, RunDir
from nasbert.search.plan import plan_ids, plan_models
from nasbert.train import DistillConfig, distill, train_supernet


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
    """Sized to finish in under 15 minutes on 2 CPU cores."""

    recipe: str = "quickstart"  # a shipped recipe (supernet/) or a YAML path
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
    # no labels needed: the Spearman (x 100) between the model's and the teacher's cosine
    # similarities of every pair of the task's dev texts (nasbert.embed.agreement), its
    # encoder as stage one left it; NaN where it has none (the n-gram student)
    agreement: float = float("nan")


def measure_side_by_side(run: RunDir | str | Path, ids: Sequence[str], protocol: Protocol,
                         *, others: Mapping[str, Path] | None = None) -> dict[str, float]:
    """The teacher's and each model's latency (subnets by id, ``others`` by folder),
    measured now, side by side in one clean process (interleaved rounds): the ratios a
    table shows."""
    run = RunDir.of(run)
    others = dict(others or {})
    paths = [run.teacher_name(), *(run.subnet_dir(i) for i in ids), *others.values()]
    return dict(zip([TEACHER, *ids, *others], measure_clean(paths, protocol, rounds=5)))


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
    ids = plan_ids(plan)
    results = finetune(run, task, data_dir=data_dir, models=ids, config=config,
                       progress=progress)
    ngram = run.finetune_dir(spec.name, NGRAM)
    ngram_record = FinetunedRecord.load(ngram)
    ngram = ngram if ngram_record is not None else None
    if ngram_record is not None:
        results[NGRAM] = ngram_record.to_dict()
    latency = dict(latencies) if latencies else side_by_side(
        run, ids, protocol, others={NGRAM: ngram / "model"} if ngram else None)
    base_ms = latency[TEACHER]
    dev, metric = spec.dev_splits[0], spec.metric
    teacher_metric = results[TEACHER][dev][metric]

    def others(model_id: str) -> dict[str, float]:
        return {m: results[model_id][dev][m] for m in spec.metrics if m != metric}

    agree = _agreement(run, ids, spec.name, data_dir, config)

    rows = [Row("teacher", TEACHER, "teacher", "", results[TEACHER]["params"], base_ms, 1.0,
                teacher_metric, 1.0, others(TEACHER), agree[TEACHER])]
    for name, group in plan.items():
        for kind, model_id in group.items():
            r = results[model_id]
            label = f"searched {name}" if kind == "searched" else f"{model_id} ({name})"
            rows.append(Row(label, model_id, kind, name, r["params"], latency[model_id],
                            base_ms / latency[model_id], r[dev][metric],
                            r[dev][metric] / teacher_metric if teacher_metric else float("nan"),
                            others(model_id), agree[model_id]))
    if ngram is not None and NGRAM in latency:
        r = results[NGRAM]
        rows.append(Row("n-gram student (task-specific)", NGRAM, NGRAM, "", r["params"],
                        latency[NGRAM], base_ms / latency[NGRAM], r[dev][metric],
                        r[dev][metric] / teacher_metric if teacher_metric else float("nan"),
                        others(NGRAM)))
    return rows


def _agreement(run: RunDir, ids: Sequence[str], task: str, data_dir, config: FinetuneConfig
               ) -> dict[str, float]:
    """Each model's agreement with the teacher on the task's dev texts (its first dev
    split, as many as the schedule evaluates), the teacher's pooling."""
    from nasbert.data.tasks import load_task
    from nasbert.embed import agreement, run_encoders
    from nasbert.pooling import Pooling

    data = load_task(task, data_dir, seed=config.seed)
    examples = data.split(data.spec.dev_splits[0]).subset(config.max_dev_examples, config.seed)
    texts = [" ".join(t) for t in examples.texts]
    return agreement(run_encoders(run, ids), texts, reference=TEACHER,
                     pooling=Pooling.of(run.teacher_name()), tokenizer=run.tokenizer())


def render(rows: Sequence[Row], task: str, metric: str) -> str:
    """The comparison as a Markdown table (the task's other metrics, then the agreement
    with the teacher, in the last columns)."""
    extra = list(rows[0].others) if rows else []
    lines = [f"| model ({task}) | parameters | latency ms | speedup | dev {metric} | "
             "of teacher |" + "".join(f" dev {m} |" for m in extra)
             + " agreement with teacher |",
             "| --- | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * (len(extra) + 1)]
    for r in rows:
        agree = "-" if r.agreement != r.agreement else f"{r.agreement:.1f}"
        lines.append(f"| {r.model} | {r.params / 1e6:.2f}M | {r.latency_ms:.2f} | "
                     f"{r.speedup:.2f}x | {r.metric:.4f} | {r.share:.1%} |"
                     + "".join(f" {r.others.get(m, float('nan')):.4f} |" for m in extra)
                     + f" {agree} |")
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
            distill(run, plan_ids(plan), config.distill, scaling=scaling, progress=progress)
    finetune_config = config.finetune
    if not config.stage_one:
        finetune_config = dataclasses.replace(finetune_config, init="extracted")
    with clock.stage("fine-tuning"):
        finetune(run, config.task, data_dir=config.data_dir, models=plan_ids(plan),
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
