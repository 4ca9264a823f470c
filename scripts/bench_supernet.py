"""Supernet training speed.

1. A training step (forward, MSE to a fixed target, backward, AdamW) of the supernet on a
   sampled path against the same step of the extracted standalone model of that path,
   same batch, over many paths, interleaved: the cost of weight sharing (goal: median
   ratio <= 1.15).
2. Tokens per second of the quickstart recipe's training step (teacher outputs computed,
   and served from the in-memory cache on later epochs), and of the teacher's forward
   alone, the floor that teacher cost sets when nothing is cached.

    python scripts/bench_supernet.py            # writes results/supernet.md
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nasbert.io import atomic_write_text
from nasbert.recipe import load_recipe
from nasbert.reporting import header, md_cell
from nasbert.space import SearchSpace
from nasbert.supernet import Supernet
from nasbert.train import prepare_run
from nasbert.train.loop import BlockwiseTrainer, Worker

ROOT = Path(__file__).resolve().parents[1]


def _step(model, forward, target, optimizer) -> float:
    t = time.perf_counter()
    loss = F.mse_loss(forward(), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - t


def weight_sharing_overhead(paths: int, batch: int, seq: int, reps: int) -> list[tuple]:
    space = SearchSpace.from_yaml("minilm_l6")
    torch.manual_seed(0)
    supernet = Supernet(space).train()
    opt_super = torch.optim.AdamW(supernet.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(0, space.dims.vocab_size, (batch, seq))
    target = torch.randn(batch, seq, space.dims.hidden_size)
    rng = random.Random(0)
    rows = []
    for k in range(paths):
        arch = space.sample(rng)
        model = supernet.extract(arch).train()
        opt_model = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        run_super = lambda a=arch: supernet(ids, arch=a).last_hidden_state  # noqa: E731
        run_model = lambda m=model: m(ids).last_hidden_state  # noqa: E731
        _step(supernet, run_super, target, opt_super)  # warm-up (optimizer state, kernels)
        _step(model, run_model, target, opt_model)
        t_super, t_model = [], []
        for r in range(reps):
            pair = [(t_super, supernet, run_super, opt_super), (t_model, model, run_model,
                                                               opt_model)]
            for times, m, fwd, opt in (pair if r % 2 == 0 else pair[::-1]):
                times.append(_step(m, fwd, target, opt))
        ts, tm = statistics.median(t_super), statistics.median(t_model)
        rows.append((str(arch), arch.num_params(space.dims), ts, tm, ts / tm))
        print(f"path {k + 1}/{paths}: supernet {ts * 1e3:.0f} ms, standalone {tm * 1e3:.0f} ms, "
              f"ratio {ts / tm:.3f}", flush=True)
    return rows


def quickstart_throughput(steps: int) -> dict:
    recipe = load_recipe("quickstart")
    with tempfile.TemporaryDirectory() as tmp:
        run = prepare_run(recipe, Path(tmp) / "run", progress=False)
        trainer = BlockwiseTrainer(recipe, run, Worker(), progress=False)
        tokens = recipe.train.batch_size * recipe.corpus.seq_len
        trainer.train_step()  # warm-up
        trainer.step = 0
        t = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        fresh = steps * tokens / (time.perf_counter() - t)
        trainer.step = 0  # the same batches again: now from the cache
        t = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        cached = steps * tokens / (time.perf_counter() - t)
        ids = trainer.corpus.train[: recipe.train.batch_size]
        mask = torch.ones_like(ids)
        trainer.teacher.block_states(ids, mask)
        t = time.perf_counter()
        for _ in range(steps):
            trainer.teacher.block_states(ids, mask)
        teacher = steps * tokens / (time.perf_counter() - t)
    return {"batch": recipe.train.batch_size, "seq": recipe.corpus.seq_len, "steps": steps,
            "fresh": fresh, "cached": cached, "teacher": teacher}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paths", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "results" / "supernet.md"))
    args = parser.parse_args()

    rows = weight_sharing_overhead(args.paths, args.batch, args.seq, args.reps)
    ratios = sorted(r[-1] for r in rows)
    median = statistics.median(ratios)
    q = statistics.quantiles(ratios, n=4)
    qs = quickstart_throughput(args.steps)
    print(f"quickstart: {qs['fresh']:.0f} tok/s (teacher computed), {qs['cached']:.0f} tok/s "
          f"(cached); teacher alone {qs['teacher']:.0f} tok/s", flush=True)

    cmd = "python scripts/bench_supernet.py " + " ".join(sys.argv[1:])
    lines = [
        header("Supernet training speed", cmd.strip(),
               bf16="not measured yet: the figures at the `bert_base_paper` recipe's scale "
               "want a GPU, and this benchmark times the CPU"),
        "## Weight sharing: supernet step vs standalone step", "",
        f"Training step = forward, MSE to a fixed target, backward, AdamW (fused, as the "
        f"trainer uses); batch {args.batch} x "
        f"{args.seq} tokens, default space (`minilm_l6.yaml`), {len(rows)} sampled paths; "
        f"per path the median of {args.reps} steps of each, interleaved.", "",
        f"**Median ratio supernet / standalone: {median:.3f}** (quartiles {q[0]:.3f}, "
        f"{q[2]:.3f}; min {ratios[0]:.3f}, max {ratios[-1]:.3f}). Goal <= 1.15: "
        f"**{'met' if median <= 1.15 else 'missed'}**.", "",
        "| path | params | supernet ms | standalone ms | ratio |",
        "| --- | --- | --- | --- | --- |",
        *(f"| `{md_cell(a)}` | {p / 1e6:.2f}M | {ts * 1e3:.0f} | {tm * 1e3:.0f} | {r:.3f} |"
          for a, p, ts, tm, r in rows),
        "", "## Quickstart recipe throughput", "",
        f"`supernet/quickstart.yaml`: batch {qs['batch']} x {qs['seq']} tokens; one step "
        "trains the embeddings and every block on its own sampled path; "
        f"{qs['steps']} steps each.", "",
        "| what | tokens/s |", "| --- | --- |",
        f"| training step, teacher outputs computed (first epoch) | {qs['fresh']:.0f} |",
        f"| training step, teacher outputs from the in-memory cache (later epochs) | "
        f"{qs['cached']:.0f} |",
        f"| teacher forward alone (the floor when nothing is cached) | {qs['teacher']:.0f} |",
        "",
        f"Caching the teacher's block outputs makes later epochs "
        f"{qs['cached'] / qs['fresh']:.2f}x as fast as the first.",
    ]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
