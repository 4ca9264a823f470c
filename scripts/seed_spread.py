"""Seed spread: is a searched subnet's gap to the uniform baseline of equal latency
larger than what another seed of the same student moves?

Each searched subnet and its uniform baseline (the plan `results_glue.py` compared) is
fine-tuned again with other student seeds (its head's initialisation and its data
order), against the same fine-tuned teacher and on the same training subset, with the
same schedule as in `results/glue.md`. Seed 0 is the model that table reports (reused).

    python scripts/seed_spread.py --run runs/quickstart --task sst2 --seeds 0,1,2

Writes results/seed_spread.md after every group (a stopped run keeps what it measured).
"""

from __future__ import annotations

import dataclasses
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from nasbert.data import load_task, task_spec
from nasbert.finetune import finetune_student, finetune_teacher
from nasbert.io import atomic_write_text
from nasbert.latency import Protocol
from nasbert.pipeline import plan_models

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench_inference import cpu_name  # noqa: E402
from results_glue import SETTINGS, arguments  # noqa: E402


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    parser = arguments(__doc__, "seed_spread.md")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--seeds", default="0,1,2", help="student seeds; 0 is the table's")
    args = parser.parse_args()
    run, spec = Path(args.run), task_spec(args.task)
    seeds = [int(s) for s in args.seeds.split(",")]
    plan = plan_models(run, [float(s) for s in args.speedups.split(",")], Protocol())
    config = SETTINGS.get(spec.name)
    if config is None:
        print(f"error: no schedule for {spec.name} in results_glue.SETTINGS; give sst2, mrpc "
              "or cola", file=sys.stderr)
        sys.exit(2)
    data = load_task(spec.name, args.data_dir, seed=config.seed)
    finetune_teacher(run, data, config, progress=False)  # cached by results_glue.py
    dev, metric = spec.dev_splits[0], spec.metric
    start = time.time()
    rows, verdicts, trained_s = [], [], 0.0
    for group, ids in plan.items():
        if "uniform" not in ids:
            continue
        scores: dict[str, list[float]] = {}
        for kind in ("searched", "uniform"):
            model_id = ids[kind]
            scores[model_id] = []
            for seed in seeds:
                cfg = dataclasses.replace(config, student_seed=None if seed == config.seed
                                          else seed)
                record = finetune_student(run, model_id, data, cfg, progress=False)
                scores[model_id].append(record[dev][metric])
                trained_s += record["seconds"]
                print(f"{group} {model_id:<20} seed {seed}: {metric} {record[dev][metric]:.4f}"
                      f" ({record['seconds']:.0f} s)", flush=True)
            rows.append(f"| {group} | {kind} | {model_id} | "
                        + " | ".join(f"{v:.4f}" for v in scores[model_id])
                        + f" | {spread(scores[model_id])} |")
        searched, uniform = (scores[ids["searched"]], scores[ids["uniform"]])
        diff = (statistics.mean(searched) - statistics.mean(uniform)) * 100
        noise = max(statistics.stdev(searched), statistics.stdev(uniform)) * 100 \
            if len(seeds) > 1 else float("nan")
        paired = sum(s > u for s, u in zip(searched, uniform))
        verdicts.append(f"- {group}: searched - uniform = {diff:+.2f} points (mean over "
                        f"{len(seeds)} seeds); the larger seed standard deviation is "
                        f"{noise:.2f} points; the searched subnet wins {paired} of "
                        f"{len(seeds)} seed-paired runs")
        atomic_write_text(args.out, "\n".join([
            f"# Seed spread: searched subnets against uniform baselines ({spec.folder})", "",
            f"- command: `python scripts/seed_spread.py --run {args.run} --data-dir "
            f"{args.data_dir} --task {args.task} --seeds {args.seeds}`",
            f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
            f"- machine: {cpu_name()}, {torch.get_num_threads()} threads; torch "
            f"{torch.__version__}, Python {platform.python_version()}",
            f"- schedule: `results_glue.py`'s for {spec.name} ({config.max_train_examples or 'all'}"
            " training examples, whole dev set); the teacher and the training subset are "
            "fixed, the student seed (head initialisation and data order) varies",
            f"- training time, all runs: {trained_s:,.0f} s, whichever invocation trained "
            f"them (this invocation: {time.time() - start:,.0f} s)", "",
            "| group | kind | model | " + " | ".join(f"seed {s}" for s in seeds)
            + f" | dev {metric}, mean ± sd |",
            "| --- | --- | --- |" + " ---: |" * (len(seeds) + 1), *rows, "", *verdicts, ""]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
