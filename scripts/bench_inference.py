"""Inference speed of an extracted model against transformers' BertModel of identical shape.

The extracted model is the teacher-shaped path of the default space (6 x [M, F] at
hidden 384, 12 heads, embedding 384, no projections); the reference is a `BertModel`
with the same dimensions (SDPA attention, no pooler), loaded with the same weights so
that both compute the same function (checked). The two run interleaved, pair by pair,
alternating which goes first, on the CPU, at batch 1 and batch 32, sequence 128.

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

from nasbert.hf.bert import bert_embeddings, bert_layer
from nasbert.io import atomic_write_text
from nasbert.reporting import header
from nasbert.space import Arch, BlockArch, SearchSpace
from nasbert.supernet import Supernet

ROOT = Path(__file__).resolve().parents[1]
TEACHER_SHAPE = Arch(384, (BlockArch(384, ("M", "F")),) * 6)  # the space: a block a layer
GOAL = 0.95  # ours / BertModel, at every batch size


def bert_state_to_nasbert(bert: BertModel) -> dict[str, torch.Tensor]:
    """BertModel weights under NasBertModel names (teacher shape: 6 x [M, F])."""
    state = bert.state_dict()
    out = {f"embeddings.{k}": v for k, v in bert_embeddings(state).items()}
    for i in range(bert.config.num_hidden_layers):
        attention, ffn = bert_layer(state, i)
        prefix = f"blocks.{i}.layers.0"
        out.update({f"{prefix}.{k}": v for k, v in attention.items()})
        prefix = f"blocks.{i}.layers.1"
        out.update({f"{prefix}.{k}": v for k, v in ffn.items()})
    return out


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--pairs", type=int, default=0, help="timed pairs (default: 60 at "
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
    ours.load_state_dict(bert_state_to_nasbert(bert))
    flops = TEACHER_SHAPE.flops(d, args.seq)  # matrix products, one sequence
    n_ours = sum(p.numel() for p in ours.parameters())
    n_bert = sum(p.numel() for p in bert.parameters())
    assert n_ours == n_bert, (n_ours, n_bert)

    rows = []
    for batch in map(int, args.batches.split(",")):
        ids = torch.randint(0, d.vocab_size, (batch, args.seq))
        mask = torch.ones_like(ids)
        pairs = args.pairs or (60 if batch == 1 else 40)
        with torch.inference_mode():
            diff = (ours(ids, attention_mask=mask).last_hidden_state
                    - bert(ids, attention_mask=mask).last_hidden_state).abs().max().item()
            assert diff < 1e-4, f"the two models disagree by {diff}"
            run_ours = lambda: ours(ids, attention_mask=mask)  # noqa: E731
            run_bert = lambda: bert(ids, attention_mask=mask)  # noqa: E731
            for _ in range(3):
                run_ours(), run_bert()
            t_ours, t_bert = [], []
            for i in range(pairs):
                order = (run_ours, run_bert) if i % 2 == 0 else (run_bert, run_ours)
                times = {f: timed(f) for f in order}
                t_ours.append(times[run_ours])
                t_bert.append(times[run_bert])
        med_o, med_b = statistics.median(t_ours), statistics.median(t_bert)
        ratio = statistics.median(o / b for o, b in zip(t_ours, t_bert))
        rate = batch * flops / med_o / 1e9  # both do the same products: the same count
        rows.append((batch, pairs, med_o * 1e3, med_b * 1e3, ratio, diff, rate,
                     batch * flops / med_b / 1e9))
        print(f"batch {batch}: ours {med_o * 1e3:.2f} ms, BertModel {med_b * 1e3:.2f} ms, "
              f"ratio {ratio:.3f}", flush=True)

    cmd = "python " + " ".join([str(Path(sys.argv[0]).relative_to(ROOT))
                                if Path(sys.argv[0]).is_absolute() else sys.argv[0],
                                *sys.argv[1:]])
    lines = [
        header("Inference speed: extracted NAS-BERT model vs transformers BertModel", cmd,
               models=f"`{TEACHER_SHAPE}` (ours) and `BertModel` (hidden 384, 6 layers, 12 "
               f"heads, FFN 1536, SDPA attention, no pooler), {n_ours:,} parameters each, "
               "same weights",
               protocol=f"sequence {args.seq}, no padding (attention mask of ones); eval and "
               "inference mode; 3 warm-up pairs, then timed pairs run interleaved, "
               "alternating which model goes first; ratio = median over pairs of ours / "
               "BertModel"),
        "| batch | pairs | ours, median ms | BertModel, median ms | ratio ours / BertModel "
        "| max abs diff of outputs | GFLOP/s ours | GFLOP/s BertModel |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {b} | {p} | {o:.2f} | {r:.2f} | **{q:.3f}** | {df:.1e} | {go:.0f} | {gb:.0f} |"
              for b, p, o, r, q, df, go, gb in rows]
    goal = all(row[4] <= GOAL for row in rows)
    lines += ["", f"GFLOP/s: the matrix products' {flops / 1e9:.2f} GFLOP a sequence (2 a "
              "multiply-add) over the median time.",
              "", f"Goal (ratio <= {GOAL} at every batch size): "
              f"**{'met' if goal else 'missed'}**."]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
