"""Offline compression with no training afterwards: the fine-tuned teacher compressed by
the autoencoder of each layer's outputs, by truncated SVD and by Fisher pruning (with and
without the least-squares refit), at three ratios, scored on the dev sets of SST-2, MRPC
and CoLA. Writes results/offline.md.

The teacher is fine-tuned once per task in the run (``finetune/<task>/teacher``, reused
when present with the same schedule); the compressed models go to a temporary folder.

    python scripts/bench_offline.py --run runs/quickstart --glue ../shared/data/glue
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from nasbert.compress.offline import OfflineConfig, compress
from nasbert.data.tasks import load_task, task_spec
from nasbert.families.sentence import evaluate
from nasbert.finetune.config import FinetuneConfig
from nasbert.finetune.stage import finetune_teacher
from nasbert.io import atomic_write_text
from nasbert.reporting import header
from nasbert.run import RunDir

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA"}
# the teachers' schedules: whole training sets except SST-2's (a seeded 20,000 of its
# 67,349 sentences: the whole set takes about 35 minutes an epoch on 2 cores)
TEACHERS = {
    "sst2": FinetuneConfig(max_train_examples=20000, max_seq_len=64, teacher_epochs=2,
                           teacher_lr=1e-4, teacher_batch_size=32),
    "mrpc": FinetuneConfig(max_seq_len=128, teacher_epochs=5, teacher_lr=1e-4,
                           teacher_batch_size=16),
    "cola": FinetuneConfig(max_seq_len=64, teacher_epochs=5, teacher_lr=1e-4,
                           teacher_batch_size=32),
}
METHODS = {"autoencoder": {"method": "autoencoder"}, "svd": {"method": "svd"},
           "prune": {"method": "prune"}, "prune, no refit": {"method": "prune", "tune": False}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "quickstart"))
    parser.add_argument("--glue", default=str(ROOT.parent / "shared" / "data" / "glue"))
    parser.add_argument("--tasks", nargs="+", default=list(FOLDERS))
    parser.add_argument("--ratios", nargs="+", type=float, default=[1.5, 2.0, 3.0])
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--out", default=str(ROOT / "results" / "offline.md"))
    args = parser.parse_args()
    glue = Path(args.glue)
    if not glue.is_dir():
        sys.exit(f"bench_offline: {glue} is missing; give --glue (the GLUE folders)")
    run = RunDir(args.run)
    rows, teachers = [], {}
    for task in args.tasks:
        spec = task_spec(task)
        config = TEACHERS[task]
        data = load_task(task, glue / FOLDERS[task], seed=config.seed)
        start = time.time()
        folder = finetune_teacher(run, data, config)
        record = json.loads((folder / "metrics.json").read_text())
        metric = spec.metric
        teachers[task] = (record["dev"][metric], record["train_examples"], record["seconds"])
        print(f"{task} teacher {metric} {record['dev'][metric]:.4f} "
              f"({time.time() - start:.0f} s)", flush=True)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder / "model"))
        for ratio in args.ratios:
            for name, fields in METHODS.items():
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "model"
                    c = OfflineConfig(**fields, ratio=ratio, calibration=args.calibration)
                    rec = compress(folder / "model", out, c, texts=data.split("train"),
                                   source=data.source)
                    model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
                    metrics, _ = evaluate(model, tokenizer, data, config)
                score = metrics["dev"][metric]
                rows.append({"task": task, "ratio": ratio, "method": name, "score": score,
                             "params": rec["after"]["params"],
                             "layer_params": rec["after"]["layer_params"],
                             "achieved": rec["ratio"], "seconds": rec["seconds"]})
                print(f"  {name:<16} {ratio:.1f}x ({rec['ratio']:.2f}x) {metric} {score:.4f} "
                      f"({rec['seconds']:.0f} s)", flush=True)
    atomic_write_text(args.out, render(rows, teachers, args))
    print(f"wrote {args.out}")


def render(rows: list[dict], teachers: dict, args) -> str:
    names = list(METHODS)
    lines = [header("Offline compression, no training afterwards",
                    f"python scripts/bench_offline.py --run {args.run} --glue {args.glue} "
                    f"--tasks {' '.join(args.tasks)} --ratios "
                    f"{' '.join(str(r) for r in args.ratios)}")]
    lines += [
        "The fine-tuned teacher (all-MiniLM-L6-v2, 6 layers, hidden 384) compressed with",
        "`nasbert compress` and scored on the whole dev set with no training afterwards.",
        "The ratio divides the encoder layers' parameters (10.6M; the 11.9M of embeddings",
        "are a lookup and are kept). Calibration: "
        f"{args.calibration} training sentences of the task (labels unused).", "",
        "- **autoencoder**: each linear layer followed by the linear autoencoder (PCA) of its",
        "  outputs on the calibration text (Yu & Wu, AAAI 2023), every layer at the same",
        "  fraction of its parameters;",
        "- **svd**: each linear layer's truncated SVD at the same ranks (the paper's baseline);",
        "- **prune**: Fisher-scored heads and neurons removed globally, the kept ones rescaled",
        "  by layer-wise least squares (Kwon et al., NeurIPS 2022); *no refit*: without it.", "",
        "Teachers: " + "; ".join(
            f"{t} {s:.4f} ({task_spec(t).metric}, {n:,} training examples, {sec:.0f} s)"
            for t, (s, n, sec) in teachers.items()) + ".", "",
        "| task | ratio | parameters | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names)]
    for task, (teacher, _, _) in teachers.items():
        for ratio in args.ratios:
            cells = {r["method"]: r for r in rows if r["task"] == task and r["ratio"] == ratio}
            best = max(cells.values(), key=lambda r: r["score"])["method"]
            params = cells["prune"]["params"] / 1e6
            lines.append(f"| {task} | {ratio:g}x | {params:.1f}M | " + " | ".join(
                _cell(cells[n]["score"], teacher, n == best) for n in names) + " |")
    seconds = {n: [r["seconds"] for r in rows if r["method"] == n] for n in names}
    lines += ["", "In parentheses: the share of the teacher's score kept (the best of a row in "
              "bold). Mean seconds per compression (calibration, scoring, writing): "
              + ", ".join(f"{n} {sum(s) / len(s):.0f} s" for n, s in seconds.items() if s) + ".",
              "", "MRPC's F1 is that of the paraphrase class: always answering 'paraphrase' "
              "scores 0.812 on dev (279 of 408 pairs), so F1 near 0.81 means the task is lost "
              "and far below it means the model answers 'not a paraphrase' too often. CoLA's "
              "Matthews correlation is 0 for any constant answer."]
    return "\n".join(lines) + "\n"


def _cell(score: float, teacher: float, best: bool) -> str:
    text = f"**{score:.4f}**" if best else f"{score:.4f}"
    return text + (f" ({score / teacher:.0%})" if teacher > 0 else "")


if __name__ == "__main__":
    main()
