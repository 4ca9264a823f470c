"""Seed spread: is a searched subnet's gap to the uniform baseline of equal latency
larger than what another seed of the same student moves?

Each searched subnet and its uniform baseline (the plan `results_glue.py` compared) is
fine-tuned again with other student seeds (its head's initialisation and its data
order), against the same fine-tuned teacher and on the same training subset, with the
same schedule as in `results/glue.md` (`nasbert.finetune.config.GLUE_SCHEDULES`). Seed 0
is the model that table reports (reused).

    python scripts/seed_spread.py --run runs/quickstart --task sst2 --seeds 0,1,2

Writes results/seed_spread.md after every group (a stopped run keeps what it measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

from nasbert.data.tasks import load_task, task_spec
from nasbert.finetune.config import GLUE_SCHEDULES
from nasbert.finetune.stage import finetune_student, finetune_teacher
from nasbert.io import atomic_write_text
from nasbert.latency.measure import Protocol
from nasbert.reporting import header
from nasbert.run import RunDir
from nasbert.search.plan import plan_models

ROOT = Path(__file__).resolve().parents[1]


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "quickstart"),
                        help="the run results_glue.py compared")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--seeds", default="0,1,2", help="student seeds; 0 is the table's")
    parser.add_argument("--speedups", default="2,4,8", help="the plan's, as results_glue.py's")
    parser.add_argument("--out", default=str(ROOT / "results" / "seed_spread.md"))
    args = parser.parse_args()
    run, spec = RunDir(args.run), task_spec(args.task)
    seeds = [int(s) for s in args.seeds.split(",")]
    plan = plan_models(run, [float(s) for s in args.speedups.split(",")], Protocol())
    config = GLUE_SCHEDULES.get(spec.name)
    if config is None:
        print(f"error: no schedule for {spec.name} in GLUE_SCHEDULES; give "
              f"{', '.join(GLUE_SCHEDULES)}", file=sys.stderr)
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
            header(f"Seed spread: searched subnets against uniform baselines ({spec.folder})",
                   f"python scripts/seed_spread.py --run {args.run} --data-dir "
                   f"{args.data_dir} --task {args.task} --seeds {args.seeds}",
                   schedule=f"`results_glue.py`'s for {spec.name} (`GLUE_SCHEDULES`; "
                   f"{config.max_train_examples or 'all'} training examples, whole dev set); "
                   "the teacher and the training subset are fixed, the student seed (head "
                   "initialisation and data order) varies",
                   **{"training time, all runs": f"{trained_s:,.0f} s, whichever invocation "
                      f"trained them (this invocation: {time.time() - start:,.0f} s)"}),
            "| group | kind | model | " + " | ".join(f"seed {s}" for s in seeds)
            + f" | dev {metric}, mean ± sd |",
            "| --- | --- | --- |" + " ---: |" * (len(seeds) + 1), *rows, "", *verdicts, ""]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
