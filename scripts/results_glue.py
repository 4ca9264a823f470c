"""GLUE results at real size: searched subnets at about 2x, 4x and 8x measured CPU
speedup against hand-designed baselines of the same latency, every one distilled on the
corpus (stage one) and then fine-tuned with distillation on the whole training sets.

One command builds the whole results run (``scripts/results_run.py``: supernet
on the ``minilm_wiki`` recipe, latency, search, baselines, stage one, fine-tuning over
seeds, the estimate study and the ablation) and resumes it where it stopped; the table
is then written from what the run holds, so a run still going gives a partial table
that says what is pending.

    python scripts/results_glue.py --run runs/wiki --data-dir ../shared/data/glue
    python scripts/results_glue.py --run runs/wiki --render-only   # the table, now

Writes results/glue.md and results/glue.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections import Counter
from pathlib import Path

from results_run import ResultsConfig, arch_of, build_results, longer_study, seed_variant

from nasbert.compress.forms import FormsRecord
from nasbert.data.metrics import compute_metrics
from nasbert.data.tasks import load_task, task_spec
from nasbert.errors import ConfigError
from nasbert.finetune.stage import student_variant
from nasbert.io import atomic_write_bytes, atomic_write_text
from nasbert.latency.measure import Protocol
from nasbert.reporting import header, md_cell
from nasbert.run import NGRAM, TEACHER, RunDir, Variant
from nasbert.search.plan import Plan, speedup_name
from nasbert.search.stage import load_chosen

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = {"sst2": ("MiniLM-L6-H384 (microsoft/unilm README)", 0.915)}
KEPT = {"2x": 0.99, "4x": 0.97, "8x": 0.94}  # SST-2 share of the teacher to keep


def title(spec) -> str:
    """The task's name in headings: GLUE's own, or what the default task is."""
    return "Tweets (the default task)" if spec.name == "tweets" \
        else spec.folder


def record(run: RunDir, task: str, folder: str | Variant) -> dict | None:
    path = run.finetune_dir(task, folder) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def scores(run: RunDir, task: str, model_id: str, config: ResultsConfig,
           seeds: tuple[int, ...]) -> list[float]:
    """The main metric of every seed fine-tuned so far."""
    spec, schedule = task_spec(task), config.schedule(task)
    out = []
    for seed in seeds:
        r = record(run, spec.name, seed_variant(model_id, schedule, seed))
        if r is not None:
            out.append(r[spec.dev_splits[0]][spec.metric])
    return out


def cell(values: list[float], wanted: int) -> str:
    if not values:
        return "pending"
    text = f"{statistics.mean(values):.4f}"
    if len(values) > 1:
        text += f" ± {statistics.stdev(values):.4f}"
    return text + (f" ({len(values)} of {wanted} seeds)" if len(values) < wanted else "")


def majority(task: str, data_dir: str | None) -> str:
    """What always predicting the training set's most frequent class scores on dev."""
    data = load_task(task, None if task == "tweets" else data_dir)
    train, dev = data.split("train"), data.split(data.spec.dev_splits[0])
    label = Counter(train.labels).most_common(1)[0][0]
    return ", ".join(f"{m} {v:.4f}" for m, v in compute_metrics(
        data.spec, [label] * len(dev), dev.labels).items())


def task_section(run, task, plan, latency, config, data_dir
                 ) -> tuple[list[str], dict, dict]:
    """The task's table and what the goals read: {(group, kind): mean over the seeds}
    (models with every seed done) and {(group, kind): the first seed's value}."""
    spec = task_spec(task)
    teacher = record(run, spec.name, TEACHER)
    means: dict = {}
    firsts: dict = {}
    if teacher is None:
        return ([f"## {title(spec)}", "", "pending: the teacher is not fine-tuned yet.", ""],
                means, firsts)
    t_metric = teacher[spec.dev_splits[0]][spec.metric]
    means[("", "teacher")] = t_metric
    base = latency[TEACHER]
    schedule = config.schedule(task)
    published = PUBLISHED.get(spec.name)
    lines = [f"## {title(spec)}", "",
             f"{teacher['train_examples']:,} training examples, the whole dev set. Teacher "
             f"{spec.metric} {t_metric:.4f}"
             + (f" (published {published[0]}: {published[1]:.3f})" if published else "")
             + f"; always predicting the majority class: {majority(task, data_dir)}. "
             f"Schedule: {_schedule_text(schedule)}.", "",
             f"| model | parameters | latency ms | speedup | dev {spec.metric} | of teacher |",
             "| --- | ---: | ---: | ---: | ---: | ---: |",
             f"| teacher | {teacher['params'] / 1e6:.2f}M | {base:.2f} | 1.00x | "
             f"{t_metric:.4f} | 100.0% |"]
    for group, ids in plan.items():
        for kind, model_id in ids.items():
            seeds = config.baseline_seeds if kind == "teacher-first-k" else config.seeds
            values = scores(run, task, model_id, config, seeds)
            r = record(run, spec.name, seed_variant(model_id, schedule, seeds[0]))
            params = f"{r['params'] / 1e6:.2f}M" if r else "?"
            label = f"searched {group}" if kind == "searched" else f"{model_id} ({group})"
            share = f"{statistics.mean(values) / t_metric:.1%}" if values and t_metric else "—"
            lines.append(f"| {label} | {params} | {latency[model_id]:.2f} | "
                         f"{base / latency[model_id]:.2f}x | {cell(values, len(seeds))} | "
                         f"{share} |")
            if len(values) == len(seeds):
                means[(group, kind)] = statistics.mean(values)
            if r is not None:  # the first seed alone: what the goals say while seeds run
                firsts[(group, kind)] = r[spec.dev_splits[0]][spec.metric]
    ngram = record(run, spec.name, NGRAM)
    deploy = FormsRecord.load(run.finetune_dir(spec.name, NGRAM) / "deploy.json")
    if ngram is not None and deploy is not None:  # `nasbert ngram` measured it (its own call)
        ms = deploy.candidates[0].ms
        value = ngram[spec.dev_splits[0]][spec.metric]
        lines.append(f"| n-gram student (task-specific; results/ngram.md) | "
                     f"{ngram['params'] / 1e6:.2f}M, sparse | {ms:.3f} | {base / ms:,.0f}x | "
                     f"{value:.4f} (1 seed) | {value / t_metric:.1%} |")
    return lines + [""], means, firsts


def _schedule_text(schedule) -> str:
    keep = ("epochs", "lr", "batch_size", "hidden_epochs", "alpha", "temperature",
            "teacher_epochs", "teacher_lr", "max_seq_len", "max_train_examples")
    return ", ".join(f"{k} {getattr(schedule, k)}" for k in keep
                     if getattr(schedule, k) not in (None, 0, 0.0))


def comparisons(values_by_task: dict[str, dict], plan: dict):
    """``(task, group, baseline kind, searched, baseline)`` for every planned comparison;
    a value is None while its model is not done."""
    for task, values in values_by_task.items():
        for group, ids in plan.items():
            for kind in ("uniform", "teacher-first-k"):
                if kind in ids:
                    yield (task, group, kind, values.get((group, "searched")),
                           values.get((group, kind)))


def goals(means_by_task: dict[str, dict], firsts_by_task: dict[str, dict], plan: dict,
          smallest: str) -> list[str]:
    lines = []
    below, pending, margins = [], [], []
    for task, group, kind, searched, other in comparisons(means_by_task, plan):
        if searched is None or other is None:
            pending.append(f"{task} {group} {kind}")
            continue
        diff = (searched - other) * 100
        if diff < 0:
            below.append(f"{task} {group} vs {kind} ({diff:+.2f} points)")
        if task == "sst2" and group == smallest:
            margins.append(f"vs {kind} {diff:+.2f}")
    state = "pending" if pending and not below else ("met" if not below else "missed")
    lines.append(f"- searched >= both baselines at every budget on every task (mean of "
                 f"seeds): **{state}**" + (f"; below: {'; '.join(below)}" if below else "")
                 + (f"; pending: {len(pending)} comparisons" if pending else ""))
    if pending:  # meanwhile, the first seed's comparisons
        done = [c for c in comparisons(firsts_by_task, plan) if None not in c[3:]]
        behind = [f"{task} {group} vs {kind} ({(searched - other) * 100:+.2f} points)"
                  for task, group, kind, searched, other in done if searched < other]
        if done:
            lines.append(f"  - on the first seed so far: searched >= the baseline in "
                         f"{len(done) - len(behind)} of {len(done)} comparisons"
                         + (f"; below: {'; '.join(behind)}" if behind else ""))
    sst2 = means_by_task.get("sst2", {})
    if margins:
        ok = all(float(m.split()[-1]) >= 1 for m in margins)
        lines.append(f"- SST-2 at {smallest}: searched at least +1 point over each baseline: "
                     f"**{'met' if ok else 'missed'}** ({', '.join(margins)})")
    firsts = firsts_by_task.get("sst2", {})
    teacher = sst2.get(("", "teacher"))
    for group, want in KEPT.items():
        line = _share_goal(f"SST-2 searched {group}", " accuracy", sst2.get((group, "searched")),
                           firsts.get((group, "searched")), teacher, want)
        if line:
            lines.append(line)
    mrpc = means_by_task.get("mrpc", {})
    if mrpc.get(("", "teacher")):
        t = mrpc[("", "teacher")]
        students = {k: v for k, v in mrpc.items() if k[1] != "teacher"}
        worst = min(students.items(), key=lambda kv: kv[1]) if students else None
        if worst:
            ok = worst[1] > 0.8122 and worst[1] >= 0.95 * t
            lines.append(f"- MRPC: every student above the majority-class F1 (0.8122) and "
                         f">= 95 % of the teacher's F1 ({0.95 * t:.4f}): **"
                         f"{'met' if ok else 'missed'}** (lowest: {worst[0][0]} {worst[0][1]} "
                         f"{worst[1]:.4f})")
    cola, first_cola = means_by_task.get("cola", {}), firsts_by_task.get("cola", {})
    line = _share_goal("CoLA searched 2x", " Matthews correlation", cola.get(("2x", "searched")),
                       first_cola.get(("2x", "searched")),
                       cola.get(("", "teacher")), 0.8)
    if line:
        lines.append(line)
    return lines


def _share_goal(what: str, metric: str, mean: float | None, first: float | None,
                teacher: float | None, want: float) -> str | None:
    """A "kept at least this share of the teacher" goal: judged on the mean of seeds,
    pending (with the first seed's share) until every seed is in."""
    if not teacher or (mean is None and first is None):
        return None
    if mean is None:
        return (f"- {what}: {first / teacher:.1%} of the teacher's{metric} on the first "
                f"seed; goal >= {want:.0%}: **pending** (the mean of seeds)")
    return (f"- {what}: {mean / teacher:.1%} of the teacher's{metric}; goal >= {want:.0%}: "
            f"**{'met' if mean / teacher >= want else 'missed'}**")


def stage_one_loss(record: dict) -> float:
    """Stage one's final dev loss without its attention term, comparable across models."""
    end = record["dev_loss_end"]
    return end.get("hidden", 0.0) + end.get("output", 0.0)


def estimate_models(run: RunDir, config: ResultsConfig, space) -> list[tuple]:
    """``(label, arch, stage-one loss, dev metric)`` of every model fine-tuned on the
    estimate task at seed 0: the run's (a teacher prefix as its architecture in the
    space: the teacher's layers, then identity blocks) and the attic's."""
    from nasbert.search.baselines import prefix_arch
    from nasbert.space import Arch

    spec = task_spec(config.estimate_task)
    rows = []
    for model_id in run.subnet_ids():
        r = record(run, spec.name, model_id)
        if r is None:
            continue
        if model_id.startswith("teacher-first-"):
            arch = prefix_arch(space, int(model_id.rsplit("-", 1)[1]))
        else:
            arch = Arch.parse(arch_of(run.subnet_dir(model_id)))
        stage_one = run.distilled_dir(model_id) / "stage_one.json"
        s1 = (stage_one_loss(json.loads(stage_one.read_text()))
              if stage_one.is_file() else float("nan"))
        rows.append((model_id, arch, s1, r[spec.dev_splits[0]][spec.metric]))
    for folder, r, stage_one in superseded(run):  # more points for the ranking
        if r["task"] != spec.name or not r.get("arch"):
            continue
        s1 = stage_one_loss(stage_one) if stage_one else float("nan")
        rows.append((f"{r['id']} (attic/{folder})", Arch.parse(r["arch"]), s1,
                     r[spec.dev_splits[0]][spec.metric]))
    return rows


def tau_lines(name: str, rows: list[tuple], metric: str, *, goal: bool = False) -> list[str]:
    """Kendall's tau of ``(label, loss, dev metric)`` rows (the loss negated), over every
    row and without the teacher prefixes. The supernet's paths are trained to reproduce
    the teacher's output; a prefix's identity blocks are not, so its scores say how far
    its layer k is from the teacher's last layer, not how well it fine-tunes."""
    from scipy.stats import kendalltau

    lines = []
    for every in (True, False):
        pairs = [(-loss, m) for label, loss, m in rows
                 if loss == loss and (every or not label.startswith("teacher-first-"))]
        if len(pairs) < 3:
            continue
        tau = kendalltau(*zip(*pairs)).statistic
        if every:
            verdict = ""
            if goal:
                state = ("pending" if len(pairs) < 12  # the verdict is over the whole study
                         else "met" if tau >= 0.6 else "missed")
                verdict = f"; goal >= 0.6 over at least 12 models: **{state}**"
            lines.append(f"- Kendall tau of the {name} (negated) with dev {metric}, "
                         f"{len(pairs)} models: {tau:.3f}{verdict}")
        else:
            lines.append(f"  - without the teacher prefixes, {len(pairs)} models: {tau:.3f}")
    return lines


def estimate_section(run: RunDir, config: ResultsConfig) -> list[str]:
    """Every model fine-tuned on the estimate task at seed 0 against the search's
    block-wise score (and the supernet's end-to-end loss, and stage one's): Kendall's
    tau of each with the dev metric."""
    from nasbert.search.approx import Approximator
    from nasbert.space import IDENTITY, BlockArch

    task = config.estimate_task
    if not task:
        return []
    spec = task_spec(task)
    approx = Approximator.from_run(run)
    nan = float("nan")
    # a block's loss over the loss of skipping it (the identity path at the teacher's
    # width): in the results run, skipping the last block costs the sum twice what
    # skipping the first does (0.199 against 0.097), which steers small budgets late
    width = approx.space.dims.hidden_size
    skipped = [approx.block_loss(i, BlockArch(width, (IDENTITY,) * b.layers))
               for i, b in enumerate(approx.space.blocks)]

    def relative(arch) -> float:
        return sum(approx.block_loss(i, b) / s for i, (b, s) in
                   enumerate(zip(arch.blocks, skipped))) if arch else nan

    rows = [(label, approx.score(arch) if arch else nan, approx.full_loss(arch) if arch else nan,
             s1, metric, relative(arch))
            for label, arch, s1, metric in estimate_models(run, config, approx.space)]
    lines = ["## The search's estimate against the fine-tuned result", "",
             f"Every model of the run fine-tuned on {spec.folder} (seed 0): the searched "
             "subnets (those of earlier searches too, kept under `attic/`), every uniform "
             "stack the baselines short-listed and every teacher prefix (scored as its "
             "architecture in the space: the teacher's layers, then identity blocks). "
             "Block-wise score: the performance approximator's sum of "
             "block distillation losses (what the search ranks by); end-to-end: the "
             "supernet's output against the teacher's on the corpus's dev split (every "
             "token's MSE, what the search re-scores by); stage one: the model's dev loss "
             "after stage one, its hidden-state and "
             "output terms (every model has those; attention maps are distilled only "
             "where the heads match the teacher's); relative: the block-wise score with "
             "each block's loss divided by the loss of skipping that block (the identity "
             f"path at width {width}: "
             + ", ".join(f"{x:.3g}" for x in skipped) + " from the first block to the "
             "last), the embedding left out. Lower is better for all four.", "",
             f"| model | block-wise score | end-to-end loss | stage-one loss | relative | "
             f"dev {spec.metric} |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for model_id, score, full, s1, metric, rel in sorted(rows, key=lambda x: x[1]):
        lines.append(f"| {model_id} | {score:.4f} | {full:.4f} | {s1:.4f} | {rel:.3f} | "
                     f"{metric:.4f} |")
    lines.append("")
    metric = [x[4] for x in rows]
    for name, col in (("block-wise score", 1), ("end-to-end loss", 2), ("stage-one loss", 3),
                      ("relative block-wise score", 5)):
        lines += tau_lines(name, [(x[0], x[col], x[4]) for x in rows], spec.metric,
                           goal=col == 1)
    if len(metric) < 12:
        lines.append(f"- {len(metric)} models fine-tuned so far (12 or more when the run "
                     "finishes)")
    return lines + [""]


def longer_section(run: RunDir, plan: dict, config: ResultsConfig) -> list[str]:
    """The supernet trained longer (``results_run.longer_supernet``): what the search
    picks from it at the same budgets, and how its block-wise score ranks the models the
    estimate study fine-tuned."""
    from nasbert.search.approx import Approximator
    from nasbert.space import Arch

    if not config.longer or not config.estimate_task:
        return []
    train = run.recipe().train
    steps, longer = train.max_steps, config.longer_steps(run)
    study = longer_study(run, longer)
    rise = (longer - steps) / (longer - train.warmup_steps)
    lines = ["## The supernet trained longer", ""]
    picked = study.search / "plan.json"
    if not (study.has_supernet() and picked.is_file()):
        return lines + [f"Pending: the run's supernet trained on from step {steps:,} to "
                        f"{longer:,} (`{study.path.relative_to(run.path)}/`), searched again "
                        "at the same budgets.", ""]
    spec = task_spec(config.estimate_task)
    ours, theirs = Approximator.from_run(run), Approximator.from_run(study)
    lines += [f"The run's supernet trained on from its last checkpoint (step {steps:,}) to "
              f"step {longer:,} on the same corpus (`results_run.longer_supernet`; the "
              "learning rate's linear decay re-planned to the later end, so after step "
              f"{steps:,} it rises again to {rise:.0%} of its peak; shrinking goes on at "
              "every epoch end), then searched again at the same budgets. A pick that "
              f"changed is distilled (stage one) and fine-tuned on {spec.folder} (seed 0) "
              "like the others.", "",
              f"| budget | supernet | architecture | block-wise score, {steps:,} steps | "
              f"{longer:,} steps | dev {spec.metric} |",
              "| --- | --- | --- | ---: | ---: | ---: |"]
    for name, ids in json.loads(picked.read_text())["plan"].items():
        if name not in plan:
            continue
        mine = plan[name]["searched"]
        arch, arch_mine = arch_of(study.subnet_dir(ids["searched"])), arch_of(run.subnet_dir(mine))
        # a changed pick is compared as its copy in the run (pending until it is there)
        copied = mine if arch == arch_mine else run.study_copy_id(study, ids["searched"])
        for label, model_id, a in ((f"{steps:,} steps", mine, arch_mine),
                                   (f"{longer:,} steps", copied, arch)):
            r = record(run, spec.name, model_id)
            got = f"{r[spec.dev_splits[0]][spec.metric]:.4f}" if r else "pending"
            parsed = Arch.parse(a)
            lines.append(f"| {name} | {label} | `{md_cell(a)}` | {ours.score(parsed):.4f} | "
                         f"{theirs.score(parsed):.4f} | {got} |")
    models = estimate_models(run, config, ours.space)
    lines.append("")
    for label, approx in ((f"{steps:,} steps", ours), (f"{longer:,} steps", theirs)):
        lines += tau_lines(f"block-wise score of the supernet at {label}",
                           [(m, approx.score(a) if a else float("nan"), metric)
                            for m, a, _, metric in models], spec.metric)
    return lines + [""]


def ablation_section(run: RunDir, plan: dict, config: ResultsConfig) -> list[str]:
    group = plan.get(config.ablation_group)
    if not group or not config.ablation_tasks:
        return []
    lines = ["## Ablation: stage one and transfer data", "",
             f"The {config.ablation_group} models, seed 0: fine-tuned from the extracted "
             "weights (without), with teacher-labelled transfer data "
             f"({config.augment.per_example} augmented examples per training example and "
             f"{config.augment.corpus_sentences:,} corpus sentences; "
             "`nasbert.finetune.augment`), from the stage-one model, and with both.", ""]
    for task in config.ablation_tasks:
        spec = task_spec(task)
        variants = config.variants(task)
        lines += [f"| {spec.folder} | " + " | ".join(variants) + " |",
                  "| --- |" + " ---: |" * len(variants)]
        for kind, model_id in group.items():
            cells = []
            for schedule in variants.values():
                r = record(run, spec.name, student_variant(model_id, schedule))
                cells.append(f"{r[spec.dev_splits[0]][spec.metric]:.4f}" if r else "pending")
            lines.append(f"| {kind} ({model_id}) | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def superseded(run: RunDir):
    """``(attic folder, fine-tuning record, stage-one record or None)`` of every seed-0
    student the re-plans moved under ``<run>/attic/``."""
    attic = run.path / "attic"
    for folder in sorted(p for p in attic.iterdir() if p.is_dir()) if attic.is_dir() else []:
        stage_one = {}  # id -> record, read once per re-plan
        for path in sorted(folder.rglob("stage_one.json")):
            s = json.loads(path.read_text())
            stage_one.setdefault(s.get("id"), s)
        for path in sorted(folder.rglob("metrics.json")):
            r = json.loads(path.read_text())
            if r.get("id") == TEACHER or r.get("config", {}).get("student_seed") not in (None, 0):
                continue  # seed 0's students only
            yield folder.name, r, stage_one.get(r["id"])


def superseded_section(run: RunDir, config: ResultsConfig) -> list[str]:
    """Searched models an earlier search chose and a later one replaced, with what they
    scored at seed 0: each folder of ``<run>/attic/`` keeps one such re-plan's models."""
    rows = {}
    for folder, r, _ in superseded(run):
        spec = task_spec(r["task"])
        key = (folder, r["id"], r.get("arch", ""))
        rows.setdefault(key, {})[spec.name] = r["dev"][spec.metric]
    if not rows:
        return []
    tasks = [task_spec(t).name for t in config.tasks]
    lines = ["## Superseded searched models", "",
             "What earlier searches chose for the same budgets, before the search changed "
             "(the folder of `attic/` says why), and what they scored at seed 0.", "",
             "| attic | budget | architecture | " + " | ".join(tasks) + " |",
             "| --- | --- | --- |" + " ---: |" * len(tasks)]
    for (folder, model_id, arch), got in rows.items():
        cells = [f"{got[t]:.4f}" if t in got else "" for t in tasks]
        lines.append(f"| {folder} | {model_id} | `{md_cell(arch)}` | " + " | ".join(cells) + " |")
    return lines + [""]


def plot(path: Path, run: RunDir, plan: dict, latency: dict, config: ResultsConfig) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in config.tasks if record(run, task_spec(t).name, TEACHER)]
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.8))
    axes = [axes] if len(tasks) == 1 else list(axes)
    styles = {"searched": ("o-", "C3"), "uniform": ("s--", "C0"), "teacher-first-k": ("^:", "C2")}
    base = latency[TEACHER]
    for ax, task in zip(axes, tasks):
        spec = task_spec(task)
        for kind, (style, color) in styles.items():
            seeds = config.baseline_seeds if kind == "teacher-first-k" else config.seeds
            pts = sorted((base / latency[ids[kind]], statistics.mean(v))
                         for ids in plan.values() if kind in ids
                         for v in [scores(run, task, ids[kind], config, seeds)] if v)
            if pts:
                ax.plot(*zip(*pts), style, color=color, label=kind)
        teacher = record(run, spec.name, TEACHER)
        ax.axhline(teacher[spec.dev_splits[0]][spec.metric], color="gray", ls=":",
                   label="teacher")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("measured CPU speedup over the teacher")
        ax.set_ylabel(f"dev {spec.metric}")
        ax.set_title(title(spec))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def render(run: RunDir, config: ResultsConfig, out: Path, command: str) -> None:
    stored = Plan.load(run)
    if stored is None:
        raise ConfigError("holds no plan yet; build the run first (without --render-only)",
                          source=str(run))
    plan = stored.groups
    latency = json.loads((run.search / "side_by_side.json").read_text())["ms"]
    asked = stored.request
    matching = (f"the baselines first, the shape of each family nearest the teacher's latency "
                f"over the speedup; the search under the latency of the fastest within "
                f"{asked['reach']:g}x of that (budgets: "
                + ", ".join(f"{k} {v:.2f} ms" for k, v in stored.budgets_ms.items()) + ")"
                if asked.get("match") and asked["baselines"] else
                "the search first, at the teacher's latency over the speedup; the baselines "
                "nearest the searched model's latency")  # plans made before 2026-12-02
    sections, means, firsts = [], {}, {}
    for task in config.tasks:
        name = task_spec(task).name
        lines, means[name], firsts[name] = task_section(run, task, plan, latency, config,
                                                        config.glue_dir)
        sections += lines
    stages = json.loads((run.path / "stages.json").read_text())
    stage_one = [json.loads((run.distilled_dir(i) / "stage_one.json").read_text())
                 for i in run.subnet_ids() if (run.distilled_dir(i) / "stage_one.json").is_file()]
    archs = {i: json.loads((run.subnet_dir(i) / "nasbert.json").read_text()).get("arch", "")
             for g in plan.values() for i in g.values()}
    chosen = load_chosen(run)
    found = {i: (f"{c.origin or 'block-wise best'}, end-to-end loss {c.full_loss:.4f}"
                 if c.full_loss is not None else "")
             for i, c in chosen.items() if i in archs}
    plot(out.with_suffix(".png"), run, plan, latency, config)
    atomic_write_text(out, "\n".join([
        header("GLUE at real size: searched subnets against the teacher and hand-designed "
               "baselines of equal latency", command,
               run=f"`{run}` (recipe `{config.recipe}`)",
               latency=f"batch 1, sequence 128, every model measured side by side in one clean "
                       f"process (5 interleaved rounds, median); teacher {latency[TEACHER]:.2f} ms",
               matching=matching,
               stage_one=f"every model distilled on the corpus, {config.distill.tokens:,} "
                         f"tokens each ({len(stage_one)} so far; seconds each: "
                         + ", ".join(f"{r['id']} {r.get('seconds', 0):.0f}" for r in stage_one)
                         + ")",
               seeds=f"searched and uniform students over seeds {list(config.seeds)}, teacher "
                     f"prefixes over {list(config.baseline_seeds)} (this machine's time); "
                     "mean ± standard deviation",
               wall_time_per_stage=", ".join(f"{k} {v / 60:.1f} min" for k, v in stages.items())),
        "## Goals", "", *goals(means, firsts, plan, speedup_name(max(config.speedups))), "",
        *sections, *ablation_section(run, plan, config), *estimate_section(run, config),
        *longer_section(run, plan, config),
        *superseded_section(run, config),
        "## Models", "", "Searched models come from the block-wise best re-scored end to "
        "end (NAS-BERT's procedure), or, where asked for, from the end-to-end refinement of "
        "each budget (`nasbert.search.refine`).", "",
        "| id | architecture | found by |", "| --- | --- | --- |",
        *[f"| {i} | `{md_cell(a)}` | {found.get(i, 'hand-designed baseline')} |"
          for i, a in archs.items()], "",
        f"![dev metric vs measured speedup]({out.with_suffix('.png').name})", ""]))
    print(f"wrote {out}")


def main() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "wiki"))
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    parser.add_argument("--out", default=str(ROOT / "results" / "glue.md"))
    parser.add_argument("--render-only", action="store_true",
                        help="write the table from what the run holds now; train nothing")
    parser.add_argument("--gpu", action="store_true",
                        help="build the run's supernet and stage one on a CUDA GPU (latency "
                             "is still timed on the CPU)")
    args = parser.parse_args()
    run = RunDir(args.run)
    config = ResultsConfig(glue_dir=args.data_dir, gpu=args.gpu)
    if not args.render_only:
        build_results(run, config, protocol=Protocol())
    render(run, config, Path(args.out),
           f"python scripts/results_glue.py --run {args.run} --data-dir {args.data_dir}"
           + (" --gpu" if args.gpu else ""))


if __name__ == "__main__":
    main()
