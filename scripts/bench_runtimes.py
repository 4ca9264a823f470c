"""Which runtime to deploy an extracted model on: PyTorch or ONNX Runtime, float32 or int8.

For three shapes of the default space (the teacher's, 6 x [M, F] at hidden 384; a
searched-looking stack of four layers, pruned heads and neurons, a separable convolution
and two at hidden 256; the 8x group's uniform L1-H256), side by side in one process, at
batch 1 and 32, sequence 128, no padding:

* PyTorch float32: the model as it runs at inference (``nasbert.ops.project``);
* PyTorch int8: dynamic quantisation of its linear layers (``nasbert.quantize``);
* ONNX Runtime float32 and int8 (``quantize_onnx``), each on the graph as exported and
  on the graph with ONNX Runtime's transformer fusions (``export_onnx``'s default).

Every session is opened with :func:`nasbert.export.ort_session` (threads sleep between
runs); the last lines show why, timing PyTorch right after a session whose threads
spin. Each round runs the six one after another in a rotating order; a speedup is the
median over rounds of PyTorch float32's time over the runtime's in the same round.
Weights are a random initialisation (denormals flushed, so the time does not depend on
them); the float32 graphs' outputs are checked against PyTorch's, and the int8 ones'
relative L2 error reported.

    python scripts/bench_runtimes.py            # writes results/runtimes.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nasbert.export import export_onnx, ort_session
from nasbert.io import atomic_write_text
from nasbert.quantize import quantize, quantize_onnx
from nasbert.reporting import md_cell, per_machine, provenance
from nasbert.space import Arch, SearchSpace
from nasbert.supernet import Supernet

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # name -> architecture in the default space
    "teacher shape": "E384|" + "|".join(["H384:M,F"] * 6),
    "mixed": "E384|H384:M8,F1024|H384:S3,F|H256:M4,F|H256:M,F512|H384:I,I|H384:I,I",
    "uniform-L1-H256": "E256|H256:M,F|" + "|".join(["H256:I,I"] * 5),
}
RUNTIMES = ("PyTorch float32", "PyTorch int8", "ORT float32", "ORT float32 fused",
            "ORT int8", "ORT int8 fused")


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def bench_shape(space: SearchSpace, arch: str, folder: Path, batches: list[int],
                seq: int, rounds: dict[int, int]) -> list[dict]:
    torch.manual_seed(0)
    model = Supernet(space).extract(Arch.parse(arch)).eval()
    model.save_pretrained(folder)
    export_onnx(folder, folder / "plain.onnx", optimize=False)
    fused = export_onnx(folder, folder / "fused.onnx")
    quantize_onnx(folder / "plain.onnx", folder / "plain.int8.onnx")
    quantize_onnx(folder / "fused.onnx", folder / "fused.int8.onnx")
    sessions = {"ORT float32": ort_session(folder / "plain.onnx"),
                "ORT float32 fused": ort_session(folder / "fused.onnx"),
                "ORT int8": ort_session(folder / "plain.int8.onnx"),
                "ORT int8 fused": ort_session(folder / "fused.int8.onnx")}
    int8 = quantize(model)
    rows = []
    for batch in batches:
        ids = torch.randint(0, space.dims.vocab_size, (batch, seq))
        mask = torch.ones_like(ids)
        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                 "token_type_ids": np.zeros_like(ids.numpy())}
        runs = {"PyTorch float32": lambda: model(ids, attention_mask=mask).last_hidden_state,
                "PyTorch int8": lambda: int8(ids, attention_mask=mask).last_hidden_state}
        runs |= {name: (lambda s=s: torch.from_numpy(s.run(None, feeds)[0]))
                 for name, s in sessions.items()}
        with torch.inference_mode():
            want = runs["PyTorch float32"]()
            error = {}
            for name, fn in runs.items():
                got = fn()
                error[name] = (float((got - want).abs().max()) if "float32" in name
                               else float((got - want).norm() / want.norm()))
            for fn in runs.values():  # warm-up
                fn()
                fn()
            times: dict[str, list[float]] = {name: [] for name in runs}
            names = list(runs)
            for i in range(rounds[batch]):
                for name in names[i % len(names):] + names[: i % len(names)]:
                    times[name].append(timed(runs[name]))
        base = times["PyTorch float32"]
        for name in RUNTIMES:
            rows.append({"batch": batch, "runtime": name,
                         "ms": statistics.median(times[name]),
                         "speedup": statistics.median(b / t for b, t in zip(base, times[name])),
                         "error": error[name]})
        print(f"{arch} batch {batch}: " + ", ".join(
            f"{r['runtime']} {r['ms']:.1f} ms" for r in rows if r["batch"] == batch), flush=True)
    return [dict(r, fusions=fused.fusions) for r in rows]


def spinning(space: SearchSpace, folder: Path, seq: int, rounds: int) -> tuple[float, float]:
    """PyTorch float32's median time at batch 1 right after an ONNX Runtime run, on a
    session whose threads spin after a run (ONNX Runtime's default) and on one whose
    threads sleep (:func:`ort_session`), interleaved."""
    import onnxruntime as ort

    torch.manual_seed(0)
    model = Supernet(space).extract(Arch.parse(SHAPES["teacher shape"])).eval()
    model.save_pretrained(folder)
    export_onnx(folder, folder / "fused.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    spins = ort.InferenceSession(str(folder / "fused.onnx"), options,
                                 providers=["CPUExecutionProvider"])
    sleeps = ort_session(folder / "fused.onnx")
    ids = torch.randint(0, space.dims.vocab_size, (1, seq))
    mask = torch.ones_like(ids)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
             "token_type_ids": np.zeros_like(ids.numpy())}
    after: dict[str, list[float]] = {"spin": [], "sleep": []}
    with torch.inference_mode():
        model(ids, attention_mask=mask)
        for i in range(rounds):
            for name in (("spin", "sleep") if i % 2 else ("sleep", "spin")):
                (spins if name == "spin" else sleeps).run(None, feeds)
                after[name].append(timed(lambda: model(ids, attention_mask=mask)))
    return statistics.median(after["spin"]), statistics.median(after["sleep"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--rounds", type=int, default=0,
                        help="timed rounds (default: 30 at batch 1, 8 at larger batches)")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--out", default=str(ROOT / "results" / "runtimes.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    batches = [int(b) for b in args.batches.split(",")]
    rounds = {b: args.rounds or (30 if b == 1 else 8) for b in batches}
    space = SearchSpace.from_yaml("minilm_l6")

    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(args.shapes):
            folder = Path(tmp) / str(i)
            rows = bench_shape(space, SHAPES[name], folder, batches, args.seq, rounds)
            fusions = ", ".join(f"{n} {op}" for op, n in rows[0]["fusions"])
            lines = [f"### {name}: `{md_cell(SHAPES[name])}`", "",
                     f"- fused (ONNX Runtime's transformer optimiser): {fusions}", "",
                     "| runtime | " + " | ".join(f"batch {b} ms | speedup" for b in batches)
                     + " | max abs diff (float32) or relative L2 error (int8), batch "
                     f"{batches[-1]} |",
                     "| --- | " + " | ".join("---: | ---:" for _ in batches) + " | ---: |"]
            for runtime in RUNTIMES:
                cells = [r for r in rows if r["runtime"] == runtime]
                best = {b: max(r["speedup"] for r in rows if r["batch"] == b) for b in batches}
                lines.append(f"| {runtime} | " + " | ".join(
                    f"{r['ms']:.2f} | " + (f"**{r['speedup']:.2f}x**"
                                           if r["speedup"] == best[r["batch"]]
                                           else f"{r['speedup']:.2f}x") for r in cells)
                    + f" | {cells[-1]['error']:.1e} |")
            sections.append("\n".join(lines))
        spin, sleep = spinning(space, Path(tmp) / "spin", args.seq, rounds[1] if 1 in rounds
                               else 30)
        sections.append("\n".join([
            "### Threads that spin", "",
            "PyTorch float32 on the teacher's shape at batch 1, timed right after a run of "
            "its fused graph on an ONNX Runtime session (median of the rounds, interleaved): "
            f"after a session with ONNX Runtime's default threads, which spin after a run, "
            f"{spin:.2f} ms; after one from `nasbert.export.ort_session`, whose threads "
            f"sleep, {sleep:.2f} ms ({spin / sleep:.2f}x)."]))

    cmd = "python " + " ".join([str(Path(sys.argv[0]).relative_to(ROOT))
                                if Path(sys.argv[0]).is_absolute() else sys.argv[0],
                                *sys.argv[1:]])
    preamble = "\n".join([
        "# Runtimes: PyTorch or ONNX Runtime, float32 or int8", "",
        "An extracted model on each runtime nasbert exports to, side by side in one process: "
        "speedup over PyTorch float32 (the model as `nasbert` runs it) in the same rounds, "
        "the fastest in bold. Made by `scripts/bench_runtimes.py`; its docstring says how.",
        "", "Speed depends on the CPU, so the page keeps a section per CPU; running the "
        "script replaces this machine's section only."])
    section = "\n".join([
        *provenance(cmd, protocol=f"sequence {args.seq}, no padding; "
                    + ", ".join(f"{rounds[b]} rounds at batch {b}" for b in batches)
                    + " in a rotating order, 2 warm-up runs each"), "",
        "\n\n".join(sections)])
    atomic_write_text(args.out, per_machine(args.out, preamble, section))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
