"""How a latency is measured: the protocol, the device fingerprint, and the clean process.

Three ways in, one protocol (:class:`Protocol`: eval and inference mode, fixed threads,
warm-up, repeats, median; CUDA events on a GPU):

* :func:`time_ms`: a callable (an entry of the lookup table: one op, alone);
* :func:`measure`: a model, in this process;
* :func:`measure_clean`: models side by side in a fresh process, in interleaved rounds,
  optionally beside a :class:`Reference` whose time rescales each round.

The clean process and the denormal flushing are hand-written on purpose: measured here,
a process that has just run heavy work (a teacher, training) times the same model up to
~20 % slower for a while, and subnormal floats cost up to ~30 % of a forward; no
benchmarking library we tried controls either (``torch.utils.benchmark`` times in the
calling process and leaves the float mode as it is).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasbert.hf.quiet import quiet_transformers
from nasbert.io import atomic_write_text
from nasbert.latency.protocol import Protocol

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "int8": torch.float32}  # int8: float32 weights, quantised by prepare()


def cpu_name() -> str:
    """The CPU as a latency depends on it: its marketed name, and where that is
    ambiguous (a virtual machine shows "AMD EPYC" for several generations) the family
    and model, and the vector instructions PyTorch dispatches to (AVX2 or AVX512 change
    which kernels run, and how fast: ``results/inference.md``)."""
    name, ident = platform.processor() or platform.machine(), {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model") and key not in ident:
                ident[key] = value.strip()
    except OSError:
        pass
    name = ident.get("model name", name)
    details = [f"family {ident['cpu family']} model {ident['model']}"] \
        if "cpu family" in ident and "model" in ident else []
    details.append(torch.backends.cpu.get_cpu_capability())
    return f"{name} ({', '.join(details)})"


def fingerprint(protocol: Protocol) -> dict[str, Any]:
    """What a latency depends on besides the model."""
    p = protocol.resolved()
    gpu = torch.cuda.get_device_name() if p.device == "cuda" and torch.cuda.is_available() else None
    return {"cpu": cpu_name(), "gpu": gpu, "threads": p.threads,
            "torch": str(torch.__version__), "dtype": p.dtype, "batch": p.batch, "seq": p.seq,
            "flush_denormal": p.flush_denormal}


def device_id(fp: dict[str, Any]) -> str:
    """A folder name for a fingerprint: readable, and unique by its hash."""
    name = re.sub(r"[^a-z0-9]+", "-", (fp["gpu"] or fp["cpu"]).lower()).strip("-")[:24]
    digest = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:8]
    return f"{name}-t{fp['threads']}-b{fp['batch']}-s{fp['seq']}-{fp['dtype']}-{digest}"


# ----------------------------------------------------------------------------- measuring


def _timer(protocol: Protocol):
    if protocol.device == "cuda":
        def run(fn) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        return run

    def run(fn) -> float:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return run


def prepare(module: nn.Module, protocol: Protocol) -> nn.Module:
    """``module`` in eval mode on the protocol's device and in its precision (int8: a
    quantised copy), or in int8 when its config says ``"precision": "int8"`` (any model
    type), so that float32 and int8 forms are measured side by side in one process."""
    from nasbert.quantize import is_quantized, quantize

    module = module.eval()
    if is_quantized(module):  # a NAS-BERT folder that says int8 quantises on load
        return module
    said = getattr(getattr(module, "config", None), "precision", "float32")
    if protocol.dtype != "int8" and said != "int8":
        return module.to(protocol.device, DTYPES[protocol.dtype])
    return quantize(module)


def time_ms(fn, protocol: Protocol) -> float:
    """Median wall time of ``fn()`` in milliseconds under ``protocol``."""
    p = protocol.resolved()
    before = torch.get_num_threads()
    torch.set_num_threads(p.threads)
    flushing = p.flush_denormal and torch.set_flush_denormal(True)
    try:
        timer = _timer(p)
        with torch.inference_mode():
            for _ in range(p.warmup):
                fn()
            return statistics.median(timer(fn) for _ in range(p.repeats))
    finally:
        torch.set_num_threads(before)
        if flushing:
            torch.set_flush_denormal(False)


def measure(model: nn.Module, protocol: Protocol, *, vocab_size: int | None = None) -> float:
    """Latency of a model (any encoder that takes token ids and an attention mask) on a
    batch of ``protocol.batch`` x ``protocol.seq`` token ids (no padding), in this
    process; random ids, so a large table is read where a real text would read it.
    """
    p = protocol.resolved()
    vocab = vocab_size or model.config.vocab_size
    # a model that reads more than one id per word (an n-gram student: up to max_n per
    # word) is measured on as many as a text of ``seq`` words gives it
    width = p.seq * getattr(model.config, "ids_per_token", 1)
    model = prepare(model, p)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (p.batch, width), generator=g).to(p.device)
    mask = torch.ones_like(ids)
    return time_ms(lambda: model(ids, attention_mask=mask), p)


@dataclasses.dataclass(frozen=True)
class Reference:
    """A model measured beside the others in every round (the run's teacher), and its
    latency as the profile measured it (the median over the whole profile). A round's
    figures are rescaled by ``ms`` over the reference's time in that round, so that a
    slow spell of a shared machine, which slows every model alike, cancels out (measured
    here: the same model timed in clean processes minutes apart differed by up to 2x)."""

    model: str  # what AutoModel loads
    ms: float


def _measure_in_child(paths: list[str], protocol: Protocol, rounds: int,
                      reference: str | None) -> tuple[list[list[float]], list[float]]:
    from transformers import AutoModel

    import nasbert  # noqa: F401 - registers the nasbert model type
    from nasbert.export import OnnxEncoder

    with quiet_transformers():  # encoders: a head costs ~0
        models = [OnnxEncoder(p) if p.endswith(".onnx") else AutoModel.from_pretrained(p)
                  for p in paths]
        ref = AutoModel.from_pretrained(reference) if reference else None
    times: list[list[float]] = [[] for _ in paths]
    ref_times: list[float] = []
    for _ in range(rounds):  # interleaved, so that a slow spell hits every model alike
        if ref is not None:
            ref_times.append(measure(ref, protocol))
        for i, model in enumerate(models):
            times[i].append(measure(model, protocol))
    return times, ref_times


def measure_rounds(models: Sequence[str | Path | nn.Module], protocol: Protocol, *,
                   rounds: int = 3, reference: Reference | None = None
                   ) -> tuple[list[list[float]], list[float]]:
    """Each model's time in each of ``rounds`` interleaved rounds in one fresh process,
    and the reference's time at the start of each round (empty without one). A model is
    a folder ``AutoModel`` loads, an in-memory ``PreTrainedModel``, or an ``.onnx`` graph
    of :func:`~nasbert.export.export_onnx` (run by ONNX Runtime)."""
    import multiprocessing
    import tempfile
    from concurrent.futures import ProcessPoolExecutor

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, model in enumerate(models):
            if isinstance(model, nn.Module):
                with quiet_transformers():
                    model.save_pretrained(Path(tmp) / str(i))
                model = Path(tmp) / str(i)
            paths.append(str(model))
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_measure_in_child, paths, protocol, rounds,
                               reference.model if reference else None).result()


def rescaled(times: list[float], ref_times: list[float], reference: Reference | None
             ) -> list[float]:
    """A model's time in each round, rescaled by the reference's time in that round
    (as measured, without a reference)."""
    if reference is None or not ref_times:
        return list(times)
    return [t * reference.ms / r for t, r in zip(times, ref_times)]


def corrected(times: list[float], ref_times: list[float], reference: Reference | None
              ) -> float:
    """The median over rounds of a model's times, each rescaled by the reference's."""
    return statistics.median(rescaled(times, ref_times, reference))


def measure_clean(models: Sequence[str | Path | nn.Module], protocol: Protocol, *,
                  rounds: int = 3, reference: Reference | None = None) -> list[float]:
    """:func:`measure` of each model (a saved folder that ``AutoModel`` loads, or an
    in-memory ``PreTrainedModel``), side by side in one fresh process, in ``rounds``
    interleaved rounds; the median of each, rescaled round by round against
    ``reference`` when given. What a deployment sees, and the only figures a ratio
    between models may be taken from. An error in the child process is raised here."""
    times, ref_times = measure_rounds(models, protocol, rounds=rounds, reference=reference)
    return [corrected(t, ref_times, reference) for t in times]


PRECISIONS = ("float32", "int8")  # what deployment measures every model in


def measure_precisions(models: Sequence[str | Path | nn.Module], protocol: Protocol, *,
                       reference: Reference | None = None) -> dict[str, list[float]]:
    """Each model in float32 and in int8, all in one clean process, interleaved (so the
    ratio between precisions is a side-by-side one), rescaled round by round against
    ``reference`` when given (so that figures of separate calls compare):
    ``{precision: times}``. The int8 forms are copies saved with ``"precision": "int8"``,
    which :func:`prepare` honours."""
    import copy

    from transformers import AutoModel

    int8 = []
    for m in models:
        if isinstance(m, nn.Module):
            m = copy.deepcopy(m)
        else:  # a NAS-BERT folder that says int8 would quantise on load: float32 here
            kind = json.loads((Path(m) / "config.json").read_text()).get("model_type")
            extra = {"precision": "float32"} if kind == "nasbert" else {}
            with quiet_transformers():
                m = AutoModel.from_pretrained(str(m), **extra)
        m.config.precision = "int8"
        int8.append(m)
    ms = measure_clean([*models, *int8], dataclasses.replace(protocol, dtype="float32"),
                       rounds=protocol.rounds, reference=reference)
    return {"float32": ms[:len(models)], "int8": ms[len(models):]}


def cached_ms(model_dir: str | Path, protocol: Protocol, *, cache: Path | None = None,
              refresh: bool = False, rounds: int = 3) -> float:
    """:func:`measure_clean` of a saved model, cached by device id in ``cache`` (default
    ``<model_dir>/latency.json``); ``refresh`` measures again."""
    model_dir = Path(model_dir)
    cache = cache or model_dir / "latency.json"
    fp = fingerprint(protocol)
    key = device_id(fp)
    stored = json.loads(cache.read_text()) if cache.is_file() else {}
    if refresh or key not in stored:
        stored[key] = {"ms": measure_clean([model_dir], protocol, rounds=rounds)[0],
                       "fingerprint": fp, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_text(cache, json.dumps(stored, indent=1))
    return stored[key]["ms"]
