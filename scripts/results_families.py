"""Span and token tasks, measured: ``results/qa.md`` (SQuAD v1.1) and ``results/ner.md``
(CoNLL-2003).

For the teacher and every planned model of a run (``search/plan.json``: the searched
model and both hand-designed baselines at each budget, a run of the replications'
recipe), the task fine-tuned with distillation through its family (``nasbert.families``),
then every student deployed (``nasbert.compress.deploy.prepare_deployment``): float32 and
int8, on PyTorch and on ONNX Runtime, each form evaluated by the family's own metric and
timed side by side with the others in one clean process (question answering at 384
tokens, as the field times it); with ``--length-adaptive``, each NAS-BERT student's
length-adaptive forms too (LengthDrop, drop-and-restore, the search over length
configurations); then every PyTorch form timed again beside the teacher's in one more
clean process: the speed-ups are those side-by-side ratios.
Published anchors sit beside the figures, marked as other data sizes.

Each task's figures go to ``results/<task>/<cpu>-<run>.json`` as soon as they are done
(the run's caches keep every model a killed call finished), and the page is rendered
from every record:

    python scripts/results_families.py --run runs/replication-seed2 --task conll2003 \\
        --data ../shared/data [--length-adaptive]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"squad": ROOT / "results" / "qa.md", "conll2003": ROOT / "results" / "ner.md"}
# the share of the teacher's F1 the searched students keep, per budget (the goals)
KEEP = {"squad": {"2x": 0.97, "4x": 0.92}, "conll2003": {"2x": 0.98, "4x": 0.95}}
ANCHORS = {
    "squad": [
        "Published SQuAD v1.1 dev figures (the whole 87,599-question training set and the "
        "10,570-question dev set; BERT-base teachers; not comparable in size with the slice "
        "measured here):", "",
        "| model | EM / F1 | speed-up | source |", "| --- | ---: | ---: | --- |",
        "| BERT-base | 80.8 / 88.5 | 1x | Devlin et al. |",
        "| DistilBERT (distilled in fine-tuning too) | 79.1 / 86.9 | 2x | Sanh et al. |",
        "| TinyBERT-6 / TinyBERT-4 | 79.7 / 87.5; 72.7 / 82.1 | 2x; 9.4x | Jiao et al. |",
        "| MiniLMv2-L6 float32 / int8 (Xeon, batch 32) | F1 88.70 / 88.54 | 1.99x int8 over "
        "float32 | intel-extension-for-transformers |",
        "| QuaLA-MiniLM (length-adaptive + int8) | within 1 % of BERT-base | 8.8x | QuaLA "
        "paper, Intel model card |"],
    "conll2003": [
        "Published CoNLL-2003 entity F1s (on its *test* split, cased BERT-family teachers "
        "with the whole training set; the default teacher here is uncased, so expect its own "
        "F1 well below them):", "",
        "| model | entity F1 | source |", "| --- | ---: | --- |",
        "| BERT-base / BERT-large (document context) | 92.4 / 92.8 | Devlin et al. |",
        "| TextBrewer's teacher / 6-layer / 3-layer student | 91.1 / 90.7 / 87.5 (90.0 with "
        "augmentation) | TextBrewer docs |"],
}


def schedule(task: str, *, max_train_examples: int | None = None, seed: int = 0):
    """The fine-tuning schedule of each task (the usual BERT-family settings; students
    distilled as the replications' are)."""
    from nasbert.finetune.config import FinetuneConfig, task_defaults

    common = {"lr": 1e-4, "alpha": 0.5, "temperature": 2.0, "teacher_lr": 5e-5,
              "max_train_examples": max_train_examples, "seed": seed}
    if task == "squad":  # 384-token windows: small batches
        return FinetuneConfig(**task_defaults(task), epochs=2, teacher_epochs=2,
                              batch_size=16, teacher_batch_size=16, **common)
    # named entities: 14,041 short sentences; students 2 epochs to fit a session beside
    # the teacher's 3 (measured: see results/ner.md's times)
    return FinetuneConfig(**task_defaults(task), epochs=2, teacher_epochs=3, batch_size=32,
                          teacher_batch_size=32, **common)


def record_path(record: dict) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", f"{record['cpu']}-{record['run']}".lower()).strip("-")
    return ROOT / "results" / record["task"] / f"{slug}.json"


def measure(run_path: Path, task: str, data_dir: Path | None, *,
            max_train_examples: int | None = None, protocol=None, lengths=None,
            progress: bool = True) -> dict:
    """Fine-tune, deploy and time the teacher and every planned model; the record. With
    ``lengths`` (a :class:`~nasbert.compress.length.LengthSearchConfig`), each NAS-BERT
    student's length-adaptive forms too (LengthDrop, drop-and-restore, the search)."""
    from nasbert.compress.deploy import prepare_deployment
    from nasbert.compress.length import lat_dir
    from nasbert.families import family_of
    from nasbert.finetune.stage import finetune
    from nasbert.latency.measure import Protocol, cpu_name, measure_precisions
    from nasbert.provenance import provenance
    from nasbert.reporting import git_commit
    from nasbert.run import TEACHER, RunDir
    from nasbert.search.plan import Plan

    run = RunDir(run_path)
    plan = Plan.load(run)
    if plan is None:
        raise SystemExit(f"error: {run.path} has no search/plan.json; run a replication "
                         "(scripts/replicate.py) or `nasbert plan` first")
    family = family_of(task)
    config = schedule(task, max_train_examples=max_train_examples)
    protocol = protocol or Protocol(**family.timing)
    start = time.time()
    results = finetune(run, task, data_dir=data_dir, models=plan.ids(), config=config,
                       progress=progress)
    tuned = time.time() - start
    data = family.load(task, data_dir)
    rows = prepare_deployment(run, data, models=plan.ids(), protocol=protocol, bounds=None,
                              lengths=lengths, progress=progress)
    ids = [TEACHER, *plan.ids()]
    side = measure_precisions([run.finetune_dir(task, m) / "model" for m in ids], protocol)
    beside = {m: {p: side[p][i] for p in side} for i, m in enumerate(ids)}
    models = {}
    for group, kinds in plan.groups.items():
        for kind, model_id in kinds.items():
            forms = {f"{c.precision} {c.runtime}": {"metric": c.metric, "ms": c.ms}
                     for c in rows if c.model_id == model_id and c.length_config is None
                     and not c.quantisation_aware and c.kind == "transformer"}
            # the LengthDrop model's forms (its full length: length_config None)
            lat = str(lat_dir(run, task, model_id).relative_to(run.path))
            shorter = [{"precision": c.precision, "metric": c.metric, "ms": c.ms,
                        "length_config": list(c.length_config) if c.length_config else None}
                       for c in rows if c.folder == lat and c.runtime == "pytorch"]
            models[model_id] = {"group": group, "kind": kind,
                                "metrics": results[model_id]["dev"],
                                "params": results[model_id]["params"], "forms": forms,
                                "lengths": shorter, "beside_teacher_ms": beside[model_id]}
    return {"task": task, "run": run.path.name, "cpu": cpu_name(), "commit": git_commit(),
            "schedule": dataclasses.asdict(config), "protocol": dataclasses.asdict(protocol),
            "teacher": {"metrics": results[TEACHER]["dev"],
                        "params": results[TEACHER]["params"],
                        "beside_teacher_ms": beside[TEACHER]},
            "models": models, "budgets_ms": plan.budgets_ms,
            "length_search": dataclasses.asdict(lengths) if lengths is not None else None,
            "seconds": {"fine-tuning": round(tuned, 1),
                        "deployment": round(time.time() - start - tuned, 1)},
            **provenance()}


def render(records: list[dict], task: str, command: str) -> str:
    """The page: per record, each model's F1 (and its share of the teacher's) in float32
    and int8 on both runtimes with its latency and speed-up over the teacher; the goals;
    the anchors."""
    from nasbert.reporting import header

    name = {"squad": "Extractive question answering (SQuAD v1.1)",
            "conll2003": "Named entities (CoNLL-2003)"}[task]
    lines = [header(name, command, records=f"`results/{task}/*.json`").rstrip("\n"), ""]
    if not records:
        return "\n".join([*lines, "None yet: run `python scripts/results_families.py --run RUN "
                          f"--task {task}` on a replication's run.", "", *ANCHORS[task], ""])
    goals = []
    for r in records:
        t = r["teacher"]
        base, teacher = t["metrics"]["f1"], t["beside_teacher_ms"]
        lines += [f"## Run {r['run']} ({r['cpu']}, commit {r['commit']})", "",
                  f"Fine-tuning {r['seconds']['fine-tuning'] / 60:.0f} min, deployment "
                  f"{r['seconds']['deployment'] / 60:.0f} min; the teacher's F1 "
                  f"{100 * base:.2f} at {teacher['float32']:.2f} ms float32 and "
                  f"{teacher['int8']:.2f} ms int8, {r['protocol']['seq']} tokens, batch "
                  f"{r['protocol']['batch']}. Schedule: {_schedule_line(r['schedule'])}.", "",
                  "F1 x 100 of each form on the dev split; *share*: of the teacher's float32 "
                  "F1. PyTorch latencies and speed-ups are measured side by side with the "
                  "teacher's in one clean process; ONNX Runtime's in the deployment's own "
                  "(beside the students only).", "",
                  "| budget | student | params | F1 float32 | share | F1 int8 | "
                  "F1 ONNX float32 / int8 | ms float32 / int8 | speed-up float32 / int8 | "
                  "ms ONNX float32 / int8 |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        by_group: dict[str, dict[str, dict]] = {}
        for m in r["models"].values():
            by_group.setdefault(m["group"], {})[m["kind"]] = m
        for group in sorted(by_group, key=lambda g: float(g.rstrip("x"))):
            for kind, m in sorted(by_group[group].items()):
                f, ms = m["forms"], m["beside_teacher_ms"]
                lines.append(
                    f"| {group} | {kind} | {m['params'] / 1e6:.1f}M | "
                    f"{100 * m['metrics']['f1']:.2f} | {m['metrics']['f1'] / base:.1%} | "
                    f"{_f1(f, 'int8 pytorch')} | {_f1(f, 'float32 onnxruntime')} / "
                    f"{_f1(f, 'int8 onnxruntime')} | {ms['float32']:.2f} / {ms['int8']:.2f} | "
                    f"{teacher['float32'] / ms['float32']:.2f}x / "
                    f"{teacher['float32'] / ms['int8']:.2f}x | "
                    f"{_ms(f, 'float32 onnxruntime')} / {_ms(f, 'int8 onnxruntime')} |")
            kinds = by_group[group]
            if "searched" in kinds:
                s = kinds["searched"]["metrics"]["f1"]
                others = [v["metrics"]["f1"] for k, v in kinds.items() if k != "searched"]
                keep = KEEP[task].get(group)
                share = s / base
                met = (share >= keep if keep else True) and all(s > o for o in others)
                goals.append(f"- {r['run']}, {group}: the searched student keeps {share:.1%} "
                             "of the teacher's F1"
                             + (f" (goal {keep:.0%})" if keep else "")
                             + f" and beats {sum(s > o for o in others)} of {len(others)} "
                             f"baselines: {'**met**' if met else '**missed**'}")
        lines += ["", *_length_lines(r, base), ""]
    lines += ["## Goals", "", *goals, "", "## Published anchors", "", *ANCHORS[task], ""]
    return "\n".join(lines)


def _length_lines(r: dict, base: float) -> list[str]:
    """Per NAS-BERT student, its fastest length-adaptive float32 form within 1 F1 point of
    its own full-length F1 (the forms' latencies are measured beside the student at full
    length in one clean process, not beside the teacher)."""
    if not r.get("length_search"):
        return ["Length-adaptive forms: not measured in this record (`--length-adaptive`)."]
    out = ["Length-adaptive (LengthDrop, drop-and-restore; the search scores held-out "
           "training examples): each student's fastest float32 length configuration "
           "within 1 F1 point of its full-length F1, on dev.", "",
           "| budget | student | length configuration | F1 | share | ms (full length) | "
           "speed-up over full length |", "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for m in sorted(r["models"].values(), key=lambda m: (float(m["group"].rstrip("x")),
                                                         m["kind"])):
        forms = [f for f in m.get("lengths", []) if f["precision"] == "float32"]
        full = next((f for f in forms if f["length_config"] is None), None)
        if full is None:
            continue  # not a NAS-BERT student (a teacher prefix): no token dropping
        near = [f for f in forms if f["metric"] >= full["metric"] - 0.01
                and f["length_config"] is not None] or [full]
        best = min(near, key=lambda f: f["ms"])
        out.append(f"| {m['group']} | {m['kind']} | "
                   f"{', '.join(f'{x:g}' for x in best['length_config'] or [1])} | "
                   f"{100 * best['metric']:.2f} | {best['metric'] / base:.1%} | "
                   f"{best['ms']:.2f} ({full['ms']:.2f}) | {full['ms'] / best['ms']:.2f}x |")
    return out


def _f1(forms: dict, key: str) -> str:
    return f"{100 * forms[key]['metric']:.2f}" if key in forms else "-"


def _ms(forms: dict, key: str) -> str:
    return f"{forms[key]['ms']:.2f}" if key in forms else "-"


def _schedule_line(s: dict) -> str:
    cap = (f", the first {s['max_train_examples']:,} training examples (seeded)"
           if s.get("max_train_examples") else ", the whole training set")
    return (f"teacher {s['teacher_epochs']:g} epochs at {s['teacher_lr']:g}, students "
            f"{s['epochs']:g} at {s['lr']:g} (alpha {s['alpha']:g}, T {s['temperature']:g}), "
            f"{s['max_seq_len']} tokens{cap}")


def main(argv: list[str] | None = None) -> int:
    import sys

    from nasbert.io import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a run with a plan and stage one (a replication's)")
    parser.add_argument("--task", required=True, choices=sorted(PAGES))
    parser.add_argument("--data", default="../shared/data",
                        help="the data root: squad/ or conll2003/ below it")
    parser.add_argument("--max-train-examples", type=int,
                        help="a seeded subset of the training set (what fits a session)")
    parser.add_argument("--length-adaptive", action="store_true",
                        help="also each NAS-BERT student's length-adaptive forms")
    parser.add_argument("--length-trials", type=int, default=30,
                        help="length configurations the search tries per student")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.render_only:
        if not args.run:
            parser.exit(2, "error: give --run (or --render-only)\n")
        from nasbert.compress.length import LengthSearchConfig

        lengths = (LengthSearchConfig(trials=args.length_trials) if args.length_adaptive
                   else None)
        record = measure(Path(args.run), args.task, Path(args.data) / args.task,
                         max_train_examples=args.max_train_examples, lengths=lengths)
        path = record_path(record)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=1))
        print(f"wrote {path}")
    records = [json.loads(p.read_text())
               for p in sorted((ROOT / "results" / args.task).glob("*.json"))]
    command = "python scripts/results_families.py " + " ".join(sys.argv[1:] if argv is None
                                                                else argv)
    atomic_write_text(PAGES[args.task], render(records, args.task, command))
    print(f"wrote {PAGES[args.task]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
