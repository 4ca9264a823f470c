"""Deployment speed: every fine-tuned model of the results run in float32 and int8, with
and without length-adaptive inference, accuracy against measured speedup over the
float32 teacher; and the joint query checked against measurement.

For each task: ``nasbert deploy`` (``prepare_deployment``: float32 and int8 measured and
evaluated, quantisation-aware fine-tuning where int8 loses more than a point, LengthDrop
training and the length search for every NAS-BERT student), then per model up to five
rows: float32; int8; int8 quantisation-aware; length-adaptive (the fastest length
configuration of the Pareto set within 1 point of the full length on the held-out slice
of the training set, where one is faster than the full length); both. Those rows and the
float32 teacher are measured again side by side in one clean process at batch 1 and at
batch 32 (sequence 128): the speedups are those ratios. Then 20 budgets, log-spaced over
the candidates' range, are queried and each answer measured again (rescaled against the
teacher as profiled, as the candidates were): met when within 1.05 x the budget.

    python scripts/results_deploy.py --run runs/wiki --data-dir ../shared/data/glue

Teacher prefixes the run fine-tuned as truncated ``BertModel``s (before baselines were
built in nasbert form) are first rewritten in nasbert form, the same function checked,
so that every student runs on the same kernels (``nasbert.search.baselines.as_nasbert``).

First, the run's latency table and predictors at each precision (the results run
profiles float32; int8 is profiled here, once), whose held-out errors the page reports.

Writes results/deploy.md and results/deploy.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from nasbert.compress.deploy import Deployable, choose, prepare_deployment
from nasbert.compress.length import LengthSearchConfig, lat_dir
from nasbert.compress.qat import QatConfig
from nasbert.data.tasks import load_task
from nasbert.errors import ConfigError
from nasbert.io import atomic_write_bytes, atomic_write_text
from nasbert.latency.measure import PRECISIONS, Protocol, measure_clean
from nasbert.latency.stage import fit, load_predictor, profile, reference
from nasbert.pipeline import ResultsConfig
from nasbert.reporting import header
from nasbert.run import TEACHER, RunDir
from nasbert.search.baselines import convert_to_nasbert

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1.05


def variants(run: RunDir, task: str, metric: str, candidates: list[Deployable],
             model_id: str) -> list[tuple[str, Deployable]]:
    """float32, int8 (and quantisation-aware int8 where it was trained), length-adaptive
    and length-adaptive + int8, for one model."""
    mine = [c for c in candidates if c.model_id == model_id]
    full = {c.precision: c for c in mine if c.length_config is None and "-lat" not in c.folder
            and not c.quantisation_aware}
    out = [(name, full[p]) for name, p in (("float32", "float32"), ("int8", "int8"))
           if p in full]
    out += [("int8 quantisation-aware", c) for c in mine if c.quantisation_aware]
    lengths = lat_dir(run, task, model_id) / "lengths.json"
    if not lengths.is_file():
        return out
    stored = json.loads(lengths.read_text())["candidates"]
    full = next(c for c in stored
                if c["precision"] == "float32" and all(r == 1 for r in c["length_config"]))
    # shorter and faster (dropping after a model's last layer only adds the gathers:
    # measured slower than the full length for one-layer stacks)
    short = [c for c in stored if c["precision"] == "float32"
             and not all(r == 1 for r in c["length_config"]) and c["ms"] < full["ms"]
             and c["heldout"][metric] >= full["heldout"][metric] - 0.01]
    if not short:
        return out
    best = min(short, key=lambda c: c["ms"])["length_config"]
    for name, p in (("length-adaptive", "float32"), ("length-adaptive + int8", "int8")):
        out += [(name, c) for c in mine
                if c.length_config == tuple(best) and c.precision == p]
    return out


def encoder_of(run: RunDir, c: Deployable):
    """The candidate as an encoder that a clean process measures as deployed (the int8
    form quantises there, by its config)."""
    from transformers import AutoModel

    from nasbert.hf.quiet import quiet_transformers

    folder = run.path / c.folder / "model"
    kind = json.loads((folder / "config.json").read_text()).get("model_type")
    with quiet_transformers():
        model = AutoModel.from_pretrained(
            str(folder), **({"precision": "float32"} if kind == "nasbert" else {}))
    model.config.precision = c.precision
    if c.length_config is not None:
        model.config.length_config = list(c.length_config)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/wiki")
    parser.add_argument("--data-dir", default="../shared/data/glue")
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mrpc"])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--models", nargs="+", help="fine-tuned models (default: every "
                        "subnet's)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run = RunDir(args.run)
    protocol = Protocol()
    for precision in PRECISIONS:  # each precision's latency table (a no-op once measured)
        p = dataclasses.replace(protocol, dtype=precision)
        profile(run, p, samples=ResultsConfig().latency_samples)
        fit(run, p)
    sections, points = [], {}
    space = run.space()
    for task in args.tasks:
        # teacher prefixes fine-tuned before baselines were built in nasbert form: the
        # same function on the students' kernels, so that speeds compare architectures
        for folder in sorted(run.finetune_dir(task).glob("teacher-first-*/model")):
            if convert_to_nasbert(folder, space):
                print(f"{folder}: converted to nasbert form (same weights, checked)",
                      flush=True)
        data = load_task(task, None if task == "tweets" else args.data_dir)
        candidates = prepare_deployment(run, data, models=args.models, protocol=protocol,
                                        lengths=LengthSearchConfig(trials=args.trials),
                                        qat=QatConfig())
        teacher = json.loads((run.finetune_dir(task, TEACHER) / "metrics.json").read_text())
        metric, split = data.spec.metric, data.spec.dev_splits[0]
        t_metric = teacher[split][metric]
        rows = [(m, name, c) for m in sorted({c.model_id for c in candidates})
                for name, c in variants(run, task, metric, candidates, m)]
        models = [encoder_of(run, c) for _, _, c in rows]
        ms = {batch: measure_clean([run.teacher_name(), *models],
                                   Protocol(batch=batch, repeats=20 if batch == 1 else 5),
                                   rounds=3)
              for batch in (1, 32)}
        lines = [f"## {task} (dev {metric}; float32 teacher {t_metric:.4f}, "
                 f"{ms[1][0]:.2f} ms at batch 1, {ms[32][0]:.1f} ms at batch 32)", "",
                 f"| model | form | dev {metric} | lost (points) | batch 1 ms | speedup | "
                 "batch 32 ms | speedup |",
                 "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for i, (m, name, c) in enumerate(rows, start=1):
            form = name if c.length_config is None else f"{name} {list(c.length_config)}"
            lines.append(f"| {m} | {form} | {c.metric:.4f} | {100 * (t_metric - c.metric):.1f} "
                         f"| {ms[1][i]:.2f} | {ms[1][0] / ms[1][i]:.2f}x | {ms[32][i]:.1f} | "
                         f"{ms[32][0] / ms[32][i]:.2f}x |")
        points[task] = [(ms[1][0] / ms[1][i], c.metric, name) for i, (_, name, c)
                        in enumerate(rows, start=1)]
        goals = goal_lines(rows, ms, t_metric, task)
        budgets = budget_check(run, task, candidates, protocol)
        sections.append("\n".join(lines + ["", *goals, "", *budgets]))
    sections.append("\n".join(predictor_lines(run, protocol)))
    text = header("Deployment: int8 and length-adaptive inference, chosen with the architecture",
                  "python scripts/results_deploy.py " + " ".join(
                      f"--{k.replace('_', '-')} {v if not isinstance(v, list) else ' '.join(v)}"
                      for k, v in vars(args).items() if v is not None),
                  run=f"`{args.run}`",
                  protocol="sequence 128; batch 1 and 32 side by side with the float32 teacher "
                           "in one clean process (3 interleaved rounds, median)") + "\n" + \
        "\n\n".join(sections) + "\n"
    atomic_write_text(ROOT / "results" / "deploy.md", text)
    plot(points, ROOT / "results" / "deploy.png")
    print(text)


def goal_lines(rows, ms, t_metric: float, task: str) -> list[str]:
    """int8 alone against the same model in float32; the whole stack against the teacher."""
    out = []
    by_model: dict[str, dict] = {}
    for i, (m, name, c) in enumerate(rows, start=1):
        by_model.setdefault(m, {})[name] = (ms[1][i], c.metric)
    for m, forms in by_model.items():
        if "float32" in forms and "int8" in forms:
            (a, x), (b, y) = forms["float32"], forms["int8"]
            if "int8 quantisation-aware" in forms:  # the better of the two int8 forms
                y = max(y, forms["int8 quantisation-aware"][1])
            ok = a / b >= 1.8 and (x - y) * 100 <= 1
            out.append(f"- int8 alone, {m}: {a / b:.2f}x over float32 at {100 * (x - y):.1f} "
                       f"points lost (goal >= 1.8x at <= 1 point): **{'met' if ok else 'missed'}**")
    if task == "sst2":
        for speed, loss in ((10, 2), (20, 4)):
            best = [ms[1][0] / ms[1][i] for i, (_, _, c) in enumerate(rows, start=1)
                    if (t_metric - c.metric) * 100 <= loss]
            top = max(best, default=0.0)
            out.append(f"- the whole stack: {top:.2f}x the float32 teacher at <= {loss} points "
                       f"lost (goal >= {speed}x): **{'met' if top >= speed else 'missed'}**")
    return out


def predictor_lines(run: RunDir, protocol: Protocol) -> list[str]:
    """The latency stage's predictors per precision, with their held-out error (as
    ``nasbert latency fit`` stored them)."""
    out = ["## Latency predictors per precision (batch 1, sequence 128)", "",
           "Each precision is its own device: profiled with `nasbert latency profile RUN "
           "--precision P --samples 120`, fitted with `nasbert latency fit RUN --precision P` "
           "(held-out split of the measured subnets).", "",
           "| precision | predictor | held-out MAPE % | RMSE ms | Kendall tau | train / test |",
           "| --- | --- | ---: | ---: | ---: | --- |"]
    for precision in PRECISIONS:
        p = dataclasses.replace(protocol, dtype=precision)
        for kind in ("table", "learned"):
            try:
                e = load_predictor(run, p, kind).error
            except ConfigError:
                out.append(f"| {precision} | {kind} | not profiled | | | |")
                continue
            out.append(f"| {precision} | {kind} | {e['mape']:.2f} | {e['rmse']:.3f} | "
                       f"{e['tau']:.3f} | {e['train']} / {e['n']} |")
    return out


def budget_check(run: RunDir, task: str, candidates: list[Deployable], protocol: Protocol
                 ) -> list[str]:
    """20 budgets queried, each answer measured again beside the profiled teacher."""
    lo, hi = min(c.ms for c in candidates), max(c.ms for c in candidates)
    budgets = np.geomspace(lo * 1.001, hi * 1.2, 20)
    answers = [choose(run, task, float(b), protocol) for b in budgets]
    models = [encoder_of(run, c) for c in answers]
    again = measure_clean(models, protocol, rounds=3, reference=reference(run, protocol))
    met = [m <= TOLERANCE * b for m, b in zip(again, budgets)]
    worst = max(m / b for m, b in zip(again, budgets))
    return [f"- budgets: {sum(met)} of 20 answers measured within {TOLERANCE} x their budget "
            f"(worst {worst:.3f} x; goal: all 20): **{'met' if all(met) else 'missed'}**"]


def plot(points: dict, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(points), figsize=(6 * len(points), 4.5), squeeze=False)
    for ax, (task, pts) in zip(axes[0], points.items()):
        for form, marker in (("float32", "o"), ("int8", "s"), ("int8 quantisation-aware", "P"),
                             ("length-adaptive", "^"),
                             ("length-adaptive + int8", "D")):
            xs = [x for x, _, f in pts if f == form]
            ys = [y for _, y, f in pts if f == form]
            ax.scatter(xs, ys, marker=marker, label=form)
        front, best = [], -1.0
        for x, y, _ in sorted(pts, key=lambda p: -p[0]):
            if y > best:
                front.append((x, y))
                best = y
        ax.plot(*zip(*sorted(front)), color="gray", lw=1, label="frontier")
        ax.set_xscale("log")
        ax.set_xlabel("speedup over the float32 teacher (batch 1, CPU)")
        ax.set_ylabel(f"{task} dev metric")
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


if __name__ == "__main__":
    main()
