"""Inference speed of an extracted model against transformers' BertModel of identical shape.

The extracted model is the teacher-shaped path of the default space (6 x [M, F] at
hidden 384, 12 heads, embedding 384, no projections); the reference is a `BertModel`
with the same dimensions (SDPA attention, no pooler), loaded with the same weights so
that both compute the same function (checked). Beside them runs our model with its
oneDNN kernel turned off (on ``F.linear``, as BertModel computes). The three run
interleaved, round by round, in a rotating order, on the CPU, at batch 1 and batch 32,
sequence 128.

    python scripts/bench_inference.py            # writes results/inference.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from nasbert.hf.bert import bert_stack_state
from nasbert.io import atomic_write_text
from nasbert.ops import onednn
from nasbert.reporting import per_machine, provenance
from nasbert.space import Arch, BlockArch, SearchSpace
from nasbert.supernet import Supernet

ROOT = Path(__file__).resolve().parents[1]
TEACHER_SHAPE = Arch(384, (BlockArch(384, ("M", "F")),) * 6)  # the space: a block a layer
GOAL = 0.95  # ours / BertModel, at every batch size


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--rounds", type=int, default=0, help="timed rounds (default: 60 at "
                        "batch 1, 40 at batch 32)")
    parser.add_argument("--out", default=str(ROOT / "results" / "inference.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    space = SearchSpace.from_yaml("minilm_l6")
    ours = Supernet(space).extract(TEACHER_SHAPE).eval()
    d = space.dims
    bert = BertModel(BertConfig(vocab_size=d.vocab_size, hidden_size=d.hidden_size,
                                num_hidden_layers=6, num_attention_heads=d.num_heads(384),
                                intermediate_size=d.ffn_ratio * d.hidden_size,
                                attn_implementation="sdpa"), add_pooling_layer=False).eval()
    ours.load_state_dict(bert_stack_state(bert.state_dict(), TEACHER_SHAPE))
    flops = TEACHER_SHAPE.flops(d, args.seq)  # matrix products, one sequence
    n_ours = sum(p.numel() for p in ours.parameters())
    n_bert = sum(p.numel() for p in bert.parameters())
    assert n_ours == n_bert, (n_ours, n_bert)

    rows = []
    for batch in map(int, args.batches.split(",")):
        ids = torch.randint(0, d.vocab_size, (batch, args.seq))
        mask = torch.ones_like(ids)
        rounds = args.rounds or (60 if batch == 1 else 40)
        with torch.inference_mode():
            diff = (ours(ids, attention_mask=mask).last_hidden_state
                    - bert(ids, attention_mask=mask).last_hidden_state).abs().max().item()
            assert diff < 1e-4, f"the two models disagree by {diff}"

            def run_ours():
                ours(ids, attention_mask=mask)

            def run_mkl():  # our model on F.linear, as BertModel computes
                with onednn(False):
                    ours(ids, attention_mask=mask)

            def run_bert():
                bert(ids, attention_mask=mask)

            runs = (run_ours, run_mkl, run_bert)
            for _ in range(3):
                for f in runs:
                    f()
            times: dict = {f: [] for f in runs}
            for i in range(rounds):  # each round in another order: none always goes first
                for f in runs[i % 3:] + runs[: i % 3]:
                    times[f].append(timed(f))
        med = {f: statistics.median(t) for f, t in times.items()}
        ratio = {f: statistics.median(o / b for o, b in zip(times[f], times[run_bert]))
                 for f in (run_ours, run_mkl)}
        rows.append((batch, rounds, med[run_ours] * 1e3, med[run_mkl] * 1e3,
                     med[run_bert] * 1e3, ratio[run_ours], ratio[run_mkl], diff,
                     batch * flops / med[run_ours] / 1e9, batch * flops / med[run_bert] / 1e9))
        print(f"batch {batch}: ours {med[run_ours] * 1e3:.2f} ms, on F.linear "
              f"{med[run_mkl] * 1e3:.2f} ms, BertModel {med[run_bert] * 1e3:.2f} ms, "
              f"ratio {ratio[run_ours]:.3f}", flush=True)

    cmd = "python " + " ".join([str(Path(sys.argv[0]).relative_to(ROOT))
                                if Path(sys.argv[0]).is_absolute() else sys.argv[0],
                                *sys.argv[1:]])
    preamble = "\n".join([
        "# Inference speed: extracted NAS-BERT model vs transformers BertModel", "",
        f"- models: `{TEACHER_SHAPE}` (ours) and `BertModel` (hidden 384, 6 layers, 12 heads, "
        f"FFN 1536, SDPA attention, no pooler), {n_ours:,} parameters each, same weights",
        f"- protocol: sequence {args.seq}, no padding (attention mask of ones); eval and "
        "inference mode; 3 warm-up rounds, then timed rounds, each running the three one "
        "after another in a rotating order; ratio = median over rounds of ours / BertModel",
        "- ours: the model as it runs at inference, its linear layers as oneDNN products "
        "with the GELU fused in (`nasbert.ops.project`); ours on F.linear: the same model "
        "with that turned off (`nasbert.ops.onednn(False)`), computing as BertModel does, "
        "which shows what the kernel is worth on that machine",
        f"- GFLOP/s: the matrix products' {flops / 1e9:.2f} GFLOP a sequence (2 a "
        "multiply-add) over the median time",
        f"- goal (issue 13): ratio <= {GOAL} at every batch size", "",
        "Speed depends on the CPU (which vector instructions its kernels use), so the page "
        "keeps a section per CPU; running the script replaces this machine's section only."])
    lines = [*provenance(cmd), "",
             "| batch | rounds | ours, median ms | ours on F.linear, median ms | BertModel, "
             "median ms | ratio ours / BertModel | ratio ours on F.linear / BertModel | max "
             "abs diff of outputs | GFLOP/s ours | GFLOP/s BertModel |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {b} | {p} | {o:.2f} | {m:.2f} | {r:.2f} | **{q:.3f}** | {qm:.3f} | {df:.1e} "
              f"| {go:.0f} | {gb:.0f} |" for b, p, o, m, r, q, qm, df, go, gb in rows]
    goal = all(row[5] <= GOAL for row in rows)
    lines += ["", f"Goal (ratio <= {GOAL} at every batch size): "
              f"**{'met' if goal else 'missed'}** on this CPU."]
    text = per_machine(args.out, preamble, "\n".join(lines))
    atomic_write_text(args.out, text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
