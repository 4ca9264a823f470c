"""What the supernet's candidates start from: block dev loss at step 0, before any
training, of the same paths under each initialisation, and (with ``--run``) after a
run's training.

Initialisations: random; the teacher's weights as they are (``prefix``: pruned ops take
the first heads and neurons, narrower widths the first h coordinates); heads and neurons
ordered by magnitude or by Fisher importance; Fisher with principal-direction bases for
the narrower widths (``fisher+pca``, the default). Importance and bases are fitted on
the first 128 training sequences of the quickstart corpus; losses are the MSE of each
block's output to the teacher's, on the dev split, averaged over the six blocks. The
teacher's own path (H384:M,F) is exact under every teacher initialisation.

    python scripts/bench_inherit.py [--run runs/quickstart]   # writes results/inherit.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from nasbert.importance import score
from nasbert.io import atomic_write_text
from nasbert.losses import masked_mse
from nasbert.recipe import load_recipe
from nasbert.reporting import header
from nasbert.run import RunDir
from nasbert.space import BlockArch
from nasbert.supernet import Supernet
from nasbert.train import prepare_run
from nasbert.train.inherit import inherit

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["H384:M,F", "H384:M8,F", "H384:M4,F", "H384:M,F1024", "H384:M,F512", "H384:M,F256",
         "H384:M8,F1024", "H384:M4,F512", "H384:M4,F256", "H384:M,I", "H384:F,I",
         "H384:M4,I", "H384:F512,I", "H384:S3,F", "H384:I,I",
         "H256:M,F", "H256:M4,F", "H256:M,F512", "H256:M4,F256", "H256:F,I"]
INITS = ["random", "prefix", "magnitude", "fisher", "fisher+pca"]


@torch.no_grad()
def block_losses(net: Supernet, batches, paths: list[BlockArch]) -> dict[BlockArch, float]:
    net.eval()
    out = {}
    for path in paths:
        losses = [float(masked_mse(net.forward_block(i, states[i], path, mask), states[i + 1],
                                   mask))
                  for _, mask, states in batches for i in range(len(net.blocks))]
        out[path] = sum(losses) / len(losses)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained quickstart run: adds its losses after training")
    parser.add_argument("--dev-batches", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "results" / "inherit.md"))
    args = parser.parse_args(argv)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe("quickstart")
        run = prepare_run(recipe, RunDir(Path(tmp) / "run"), progress=False)
        teacher, corpus = run.teacher(), run.corpus()
        space = teacher.fitted_space(run.space())
        paths = [BlockArch.parse(p) for p in PATHS]
        for p in paths:
            for i in range(len(space.blocks)):
                space.validate_block(i, p)
        batches = teacher.batches(corpus.dev, 8, limit=args.dev_batches)
        fit_on = corpus.train[:recipe.train.init_sequences]
        fit_batches = [(fit_on[i:i + 16], torch.ones_like(fit_on[i:i + 16]))
                       for i in range(0, len(fit_on), 16)]
        importance = {c: score(teacher.model, fit_batches, criterion=c)
                      for c in ("magnitude", "fisher")}
        columns: dict[str, dict[BlockArch, float]] = {}
        for init in INITS:
            torch.manual_seed(0)
            net = Supernet(space, dropout=0.0, attention_dropout=0.0)
            if init != "random":
                crit = init.split("+")[0]
                inherit(net, teacher, importance.get(crit),
                        basis_sequences=fit_on if init.endswith("+pca") else None)
            columns[init] = block_losses(net, batches, paths)
            print(f"{init:<12} done ({time.time() - t0:.0f} s)", flush=True)
        trained_name = None
        if args.run:
            trained = RunDir(args.run)
            steps = trained.recipe().train.max_steps
            trained_name = f"after {steps} steps ({trained.recipe().train.init})"
            columns[trained_name] = block_losses(trained.supernet(), batches, paths)
    names = list(columns)
    lines = ["| path | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for p in paths:
        best = min(columns[n][p] for n in INITS)
        cells = [(f"**{columns[n][p]:.3f}**" if n in INITS and columns[n][p] == best
                  else f"{columns[n][p]:.3f}") for n in names]
        lines.append(f"| `{p}` | " + " | ".join(cells) + " |")
    narrow = [p for p in paths if p.hidden < 384]
    pruned = [p for p in paths if p.hidden == 384 and any(len(o) > 1 and o[0] in "MF"
                                                          for o in p.ops)]

    def mean(n: str, group: list[BlockArch]) -> float:
        return sum(columns[n][p] for p in group) / len(group)

    summary = ["| group | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, group in (("pruned heads / neurons at width 384", pruned),
                         ("narrower width 256", narrow), ("all paths above", paths)):
        summary.append(f"| {label} ({len(group)} paths) | "
                       + " | ".join(f"{mean(n, group):.3f}" for n in names) + " |")
    text = header(
        "Inheritance: block dev loss at step 0", "python scripts/bench_inherit.py"
        + (f" --run {args.run}" if args.run else ""),
        data="quickstart corpus (BBC news), importance and bases on 128 training sequences, "
             f"loss on {args.dev_batches} dev batches of 8 x 128 tokens",
        loss="MSE of the block's output to the teacher's hidden state at the block's end, "
             "mean over the 6 blocks (the teacher's own path: 0)",
        wall_time=f"{time.time() - t0:.0f} s")
    text += ("\nFisher: diagonal Fisher of head and neuron masks on each layer's output "
             "(nasbert.importance); magnitude: L2 norm of the unit's weights. "
             "Best initialisation per path in bold.\n\n## Means by group\n\n"
             + "\n".join(summary) + "\n\n## Per path\n\n" + "\n".join(lines) + "\n")
    if trained_name:
        text += (f"\nThe last column is the trained run `{args.run}`: losses after its "
                 "training, same batches.\n")
    atomic_write_text(Path(args.out), text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
