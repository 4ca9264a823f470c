"""GLUE results: the teacher, searched subnets at about 2x, 4x and 8x measured CPU
speedup, and hand-designed baselines at the same latencies, fine-tuned with
distillation on SST-2, MRPC and CoLA from a local GLUE folder.

It needs a run with a trained supernet and a latency predictor on this machine: the
quickstart's (`nasbert quickstart` makes `runs/quickstart`). The searched subnets and
the baselines are the quickstart's (or found now if missing); every model's latency is
measured afresh, side by side, in clean processes before any training starts.

    python scripts/results_glue.py --run runs/quickstart --data-dir ../shared/data/glue

Writes results/glue.md and results/glue.png. Goals checked and reported: at 4x, at
least 97 % of the teacher's SST-2 dev accuracy; a searched subnet never below a
baseline of equal latency, and at least 1 point above it at the smallest budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections import Counter
from pathlib import Path

from nasbert.data.metrics import compute_metrics
from nasbert.data.tasks import load_task, task_spec
from nasbert.finetune.config import GLUE_SCHEDULES, FinetuneConfig
from nasbert.io import atomic_write_bytes, atomic_write_text
from nasbert.latency.measure import Protocol
from nasbert.pipeline import Row, compare, measure_side_by_side, plan_models, render
from nasbert.reporting import header, md_cell
from nasbert.run import TEACHER, RunDir

ROOT = Path(__file__).resolve().parents[1]


def goals(rows_by_task: dict[str, list[Row]], smallest: str) -> list[str]:
    lines = []
    sst2 = rows_by_task.get("sst2")
    if sst2:
        four = next((r for r in sst2 if r.kind == "searched" and r.target == "4x"), None)
        if four:
            ok = four.share >= 0.97
            lines.append(f"- SST-2 at 4x ({four.speedup:.2f}x measured): {four.share:.1%} of the "
                         f"teacher's accuracy; goal >= 97 %: **{'met' if ok else 'missed'}**")
    below, margins = [], []
    for task, rows in rows_by_task.items():
        for r in rows:
            if r.kind in ("uniform", "teacher-first-k"):
                s = next(x for x in rows if x.kind == "searched" and x.target == r.target)
                diff = (s.metric - r.metric) * 100
                if diff < 0:
                    below.append(f"{task} {r.target} vs {r.model_id} ({diff:+.1f} points)")
                if r.target == smallest:
                    margins.append((task, r.model_id, diff))
    lines.append(f"- searched never below a baseline of equal latency: **"
                 f"{'met' if not below else 'missed'}**"
                 + (f" (below: {'; '.join(below)})" if below else ""))
    if margins:
        ok = all(d >= 1 for _, _, d in margins)
        lines.append(f"- at the smallest budget ({smallest}), at least 1 point above each "
                     f"baseline: **{'met' if ok else 'missed'}** ("
                     + "; ".join(f"{t} vs {m}: {d:+.1f}" for t, m, d in margins) + ")")
    return lines


def majority(task: str, data_dir: str) -> str:
    """What always predicting the training set's most frequent class scores on dev: the
    floor a model must beat before its metric means anything."""
    data = load_task(task, data_dir)
    train, dev = data.split("train"), data.split(data.spec.dev_splits[0])
    label = Counter(train.labels).most_common(1)[0][0]
    scores = compute_metrics(data.spec, [label] * len(dev), dev.labels)
    return ("Always predicting the majority class scores " + ", ".join(
        f"{m} {v:.4f}" for m, v in scores.items()) + ".")


def card(run: RunDir, model_id: str) -> dict:
    """What ``subnets/<id>/nasbert.json`` says of a model (its architecture, ...)."""
    return json.loads((run.subnet_dir(model_id) / "nasbert.json").read_text())


def estimates(run: RunDir, plan: dict) -> dict[str, tuple[str, float, float]]:
    """The search's own estimate of each searched and uniform model, by id: (group, the
    performance approximator's sum of block-wise losses, the end-to-end loss to the
    teacher on the corpus's dev split); both lower is better."""
    from nasbert.search.approx import Approximator
    from nasbert.space import Arch

    approx = Approximator.from_run(run)
    out = {}
    for group, ids in plan.items():
        for kind in ("searched", "uniform"):
            if kind in ids:
                arch = Arch.parse(card(run, ids[kind])["arch"])
                out[ids[kind]] = (group, approx.score(arch), approx.full_loss(arch))
    return out


def estimate_table(scores: dict[str, tuple[str, float, float]],
                   rows_by_task: dict[str, list[Row]]) -> list[str]:
    tasks = list(rows_by_task)
    lines = ["| group | model | block-wise score | end-to-end loss | "
             + " | ".join(f"{t} {task_spec(t).metric}" for t in tasks) + " |",
             "| --- | --- | ---: | ---: |" + " ---: |" * len(tasks)]
    for model_id, (group, score, full) in scores.items():
        metrics = [next(r.metric for r in rows_by_task[t] if r.model_id == model_id)
                   for t in tasks]
        lines.append(f"| {group} | {model_id} | {score:.4f} | {full:.4f} | "
                     + " | ".join(f"{m:.4f}" for m in metrics) + " |")
    return lines


def plot(path: Path, rows_by_task: dict[str, list[Row]]) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows_by_task), figsize=(4.5 * len(rows_by_task), 3.8))
    axes = [axes] if len(rows_by_task) == 1 else list(axes)
    styles = {"searched": ("o-", "C3"), "uniform": ("s--", "C0"),
              "teacher-first-k": ("^:", "C2")}
    for ax, (task, rows) in zip(axes, rows_by_task.items()):
        teacher = rows[0]
        for kind, (style, color) in styles.items():
            pts = sorted((r.speedup, r.metric) for r in rows if r.kind == kind)
            if pts:
                ax.plot(*zip(*pts), style, color=color, label=kind)
        ax.axhline(teacher.metric, color="gray", ls=":", label="teacher")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("measured CPU speedup over the teacher")
        ax.set_ylabel(f"dev {task_spec(task).metric}")
        ax.set_title(task)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "quickstart"))
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    parser.add_argument("--speedups", default="2,4,8")
    parser.add_argument("--out", default=str(ROOT / "results" / "glue.md"))
    parser.add_argument("--tasks", default="sst2,mrpc,cola")
    args = parser.parse_args()
    run, protocol = RunDir(args.run), Protocol()
    speedups = [float(s) for s in args.speedups.split(",")]
    start = time.time()
    plan = plan_models(run, speedups, protocol)
    # every latency afresh, side by side in one process, before training heats the machine
    ids = list(dict.fromkeys(i for g in plan.values() for i in g.values()))
    latencies = measure_side_by_side(run, ids, protocol)
    base = latencies[TEACHER]
    print(", ".join(f"{i} {ms:.2f} ms" for i, ms in latencies.items()), flush=True)
    scores = estimates(run, plan)
    rows_by_task: dict[str, list[Row]] = {}
    sections: list[str] = []
    archs = {i: card(run, i).get("arch", "") for i in ids}
    tasks = args.tasks.split(",")
    for task in tasks:
        spec = task_spec(task)
        config = GLUE_SCHEDULES.get(spec.name, FinetuneConfig())
        t0 = time.time()
        rows = compare(run, task, plan, data_dir=args.data_dir, config=config,
                       protocol=protocol, latencies=latencies, progress=True)
        rows_by_task[spec.name] = rows
        records = [json.loads((run.finetune_dir(spec.name, i) / "metrics.json").read_text())
                   for i in [TEACHER, *ids]]
        # the recorded training time of every model, whichever invocation trained it
        trained_s = sum(r["seconds"] for r in records)
        sections.append(
            f"## {spec.folder}\n\n{records[0]['train_examples']} training examples, whole dev "
            "set; fine-tuning: " + ", ".join(f"{k} {v}" for k, v in
                                             dataclasses.asdict(config).items() if v is not None)
            + f". Training time, all {len(records)} models: {trained_s:,.0f} s "
            f"(this invocation: {time.time() - t0:,.0f} s). {majority(spec.name, args.data_dir)}"
            "\n\n"
            + render(rows, spec.name, spec.metric) + "\n")
        print(render(rows, spec.name, spec.metric), flush=True)
        # written after every task: a stopped run still leaves what it measured
        pending = [t for t in tasks if task_spec(t).name not in rows_by_task]
        plot(Path(args.out).with_suffix(".png"), rows_by_task)
        atomic_write_text(args.out, "\n".join([
            header("GLUE: searched subnets vs the teacher and hand-designed baselines",
                   f"python scripts/results_glue.py --run {args.run} --data-dir "
                   f"{args.data_dir} --tasks {args.tasks}",
                   run=f"`{args.run}`; latency: batch {protocol.batch}, sequence "
                   f"{protocol.seq}, all models measured side by side in one clean process "
                   f"(5 interleaved rounds, median) before any training; teacher {base:.2f} ms",
                   wall_time=f"{time.time() - start:.0f} s"
                   + (f" (not yet run: {', '.join(pending)})" if pending else "")),
            "## Goals", "", *goals(rows_by_task, f"{max(speedups):g}x"), "",
            *sections,
            "## The search's estimate against the downstream result", "",
            "What search ranked the candidates by (block-wise: the performance "
            "approximator's sum of block distillation losses; end-to-end: the subnet's "
            "output against the teacher's on the pre-training corpus's dev split; both from "
            "the supernet, before fine-tuning, lower is better) beside the fine-tuned dev "
            "metric.", "", *estimate_table(scores, rows_by_task), "",
            "## Models", "", "| id | architecture |", "| --- | --- |",
            *[f"| {i} | `{md_cell(a)}` |" for i, a in archs.items()], "",
            f"![dev metric vs measured speedup]({Path(args.out).with_suffix('.png').name})",
            ""]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
