"""How many tokens a fine-tuning epoch computes over the real ones, with batches drawn at
random against batches of similar lengths (transformers' ``LengthGroupedSampler``, what
``FinetuneConfig.group_by_length`` turns on), on GLUE's training sets with the teacher's
tokenizer. Counting, not timing: a forward's cost grows with the padded tokens.

    python scripts/padding_waste.py --run runs/wiki --data-dir ../shared/data/glue

Writes results/padding.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from nasbert.data.tasks import load_task
from nasbert.families.sentence import Encoded
from nasbert.finetune.config import GLUE_SCHEDULES
from nasbert.io import atomic_write_text
from nasbert.reporting import header
from nasbert.run import RunDir

ROOT = Path(__file__).resolve().parents[1]


def padded(order: list[int], lengths: list[int], batch: int) -> int:
    return sum(len(order[k:k + batch]) * max(lengths[i] for i in order[k:k + batch])
               for k in range(0, len(order), batch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/wiki", help="a run (for its teacher's tokenizer)")
    parser.add_argument("--data-dir", default="../shared/data/glue")
    args = parser.parse_args()
    tokenizer = RunDir(args.run).tokenizer()
    rows = []
    for task, schedule in GLUE_SCHEDULES.items():
        data = load_task(task, args.data_dir)
        lengths = [len(ids) for ids in Encoded(tokenizer, data.split("train"),
                                               schedule.max_seq_len).features["input_ids"]]
        torch.manual_seed(0)
        shuffled = torch.randperm(len(lengths)).tolist()
        grouped = list(LengthGroupedSampler(schedule.batch_size, lengths=lengths))
        real = sum(lengths)
        a, b = padded(shuffled, lengths, schedule.batch_size), padded(grouped, lengths,
                                                                       schedule.batch_size)
        rows.append(f"| {task} | {len(lengths):,} | {schedule.batch_size} | {real:,} | "
                    f"{a / real:.2f}x | {b / real:.2f}x | {a / b:.2f}x |")
    text = header("Padding computed per fine-tuning epoch", "python scripts/padding_waste.py",
                  tokenizer=f"the teacher's, `{args.run}`") + "\n" + "\n".join([
        "| task | examples | batch | real tokens | random batches | grouped by length | "
        "saved |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |", *rows]) + "\n"
    atomic_write_text(ROOT / "results" / "padding.md", text)
    print(text)


if __name__ == "__main__":
    main()
