"""Latency: the measurement protocol, the device fingerprint, and two predictors.

* :func:`measure_ms` times an extracted standalone model under a :class:`Protocol`
  (eval and inference mode, fixed threads, warm-up, repeats, median; CUDA events on
  a GPU).
* :class:`TablePredictor` is the paper's lookup table: each operation at each hidden
  size, each embedding size and each projection, measured alone; a model's latency is
  their sum, calibrated by a line fitted on measured subnets.
* :class:`LearnedPredictor` fits measured subnets from ``arch.features()`` (by name):
  a ridge regression or a small MLP, whichever has the lower validation error.

Every predictor is stored with the device fingerprint it was measured on and its
held-out error (MAPE, RMSE, Kendall's tau on a seeded split), and refuses to answer for
another fingerprint unless told to.

    nasbert latency profile runs/x --samples 200     # measure, resumable
    nasbert latency fit runs/x                       # fit both, report held-out error
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import platform
import random
import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from nasbert.errors import ConfigError
from nasbert.io import atomic_write_text
from nasbert.ops import Embeddings, make_masks, make_op
from nasbert.space import Arch, BlockArch, Dims, SearchSpace, transition_exists

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How a latency is measured."""

    batch: int = 1
    seq: int = 128
    threads: int = 0  # 0: as many as torch uses by default
    warmup: int = 5
    repeats: int = 20
    rounds: int = 3  # profiling measures every subnet this many times, spread over time
    # CPU: flush subnormal floats to zero. GELU tails and small attention weights produce
    # them, and computing on them is slow: up to ~30 % of a forward here, and dependent
    # on the weights and data, which makes latency unpredictable. Deploy with
    # torch.set_flush_denormal(True) to get the measured figures.
    flush_denormal: bool = True
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["cpu", "cuda"] = "cpu"

    def resolved(self) -> Protocol:
        if self.threads:
            return self
        return dataclasses.replace(self, threads=torch.get_num_threads())


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def measure_ms(model: nn.Module, protocol: Protocol, *, vocab_size: int | None = None) -> float:
    """Latency of an extracted model on a batch of ``protocol.batch`` x ``protocol.seq``
    token ids (no padding)."""
    p = protocol.resolved()
    vocab = vocab_size or model.config.vocab_size
    model = model.eval().to(p.device, DTYPES[p.dtype])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (p.batch, p.seq), generator=g).to(p.device)
    mask = torch.ones_like(ids)
    return time_ms(lambda: model(ids, attention_mask=mask), p)


def _measure_saved(paths: list[str], protocol: Protocol, rounds: int, queue) -> None:
    from transformers import AutoModel

    import nasbert  # noqa: F401 - registers the nasbert model type
    from nasbert.teacher import quiet_transformers

    with quiet_transformers():
        models = [AutoModel.from_pretrained(p) for p in paths]  # encoders: a head costs ~0
    times: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):  # interleaved, so that a slow spell hits every model alike
        for i, model in enumerate(models):
            times[i].append(measure_ms(model, protocol))
    queue.put(times)


def measure_saved(paths: Sequence[str | Path], protocol: Protocol, *,
                  rounds: int = 3) -> list[float]:
    """:func:`measure_ms` of saved model folders (any encoder ``AutoModel`` loads), side
    by side in one fresh process, in ``rounds`` interleaved rounds; the median of each.
    A process that has just run heavy work (a teacher, an approximator, training)
    measures the same model up to ~20 % slower for a while; a clean process measures
    what a deployment sees."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_measure_saved,
                        args=([str(p) for p in paths], protocol, rounds, queue))
    child.start()
    try:
        times = queue.get(timeout=1800)
    finally:
        child.join()
    return [statistics.median(t) for t in times]


def measure_saved_ms(path: str | Path, protocol: Protocol, *, rounds: int = 3) -> float:
    """:func:`measure_saved` of one folder."""
    return measure_saved([path], protocol, rounds=rounds)[0]


def measure_ms_isolated(model: nn.Module, protocol: Protocol, *, rounds: int = 3) -> float:
    """:func:`measure_saved_ms` of an in-memory model."""
    import tempfile

    from nasbert.teacher import quiet_transformers

    with tempfile.TemporaryDirectory() as tmp:
        with quiet_transformers():
            model.save_pretrained(tmp)
        return measure_saved_ms(tmp, protocol, rounds=rounds)


# ----------------------------------------------------------------------------- metrics


def errors(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """MAPE (%), RMSE (ms) and Kendall's tau of predictions against measurements."""
    from scipy.stats import kendalltau

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    tau = kendalltau(p, m).statistic if len(p) > 1 else float("nan")
    return {"mape": float(np.mean(np.abs(p - m) / m) * 100),
            "rmse": float(np.sqrt(np.mean((p - m) ** 2))), "tau": float(tau), "n": len(p)}


def split(n: int, seed: int, test: float = 0.25) -> tuple[list[int], list[int]]:
    """A seeded train/test split of ``n`` indices."""
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    k = max(1, int(round(n * test)))
    return idx[k:], idx[:k]


# ----------------------------------------------------------------------------- predictors


class LatencyPredictor(abc.ABC):
    """Predicts the latency (ms) of architectures on one device fingerprint.

    Contract: ``predict`` refuses (``ConfigError``) when the caller's fingerprint differs
    from the one it was fitted on, unless ``allow_foreign``; ``save``/``load`` round-trip
    the fitted state, the fingerprint and the held-out error.
    """

    kind: str = ""

    def __init__(self, dims: Dims, fp: dict[str, Any], error: dict | None = None):
        self.dims, self.fingerprint, self.error = dims, fp, error or {}

    @abc.abstractmethod
    def _predict(self, archs: Sequence[Arch]) -> np.ndarray: ...

    @abc.abstractmethod
    def _state(self) -> dict: ...

    @classmethod
    @abc.abstractmethod
    def _from_state(cls, dims: Dims, fp: dict, error: dict, state: dict) -> LatencyPredictor: ...

    def check(self, fp: dict[str, Any] | None, *, allow_foreign: bool = False) -> None:
        if fp is None or allow_foreign or fp == self.fingerprint:
            return
        diff = [f"{k} {self.fingerprint.get(k)!r} here {fp.get(k)!r}" for k in sorted(fp)
                if fp.get(k) != self.fingerprint.get(k)]
        raise ConfigError(f"was measured on another device ({'; '.join(diff)}); run `nasbert "
                          "latency profile` on this one, or allow a foreign predictor "
                          "(--any-device)", source=f"{self.kind} latency predictor")

    def predict(self, archs: Sequence[Arch], *, fingerprint: dict | None = None,
                allow_foreign: bool = False) -> np.ndarray:
        self.check(fingerprint, allow_foreign=allow_foreign)
        return self._predict(list(archs))

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps({
            "kind": self.kind, "fingerprint": self.fingerprint, "error": self.error,
            "dims": self.dims.to_dict(), "state": self._state()}, indent=1))

    @staticmethod
    def load(path: Path) -> LatencyPredictor:
        try:
            data = json.loads(Path(path).read_text())
            cls = {c.kind: c for c in (TablePredictor, LearnedPredictor)}[data["kind"]]
            d = data["dims"]
            dims = Dims(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                        max_position_embeddings=d["max_position_embeddings"],
                        type_vocab_size=d["type_vocab_size"], head_size=d["head_size"],
                        heads=tuple(sorted((int(h), n) for h, n in d["heads"].items())),
                        ffn_ratio=d["ffn_ratio"])
            return cls._from_state(dims, data["fingerprint"], data["error"], data["state"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"is missing or corrupt ({type(e).__name__}); run `nasbert latency "
                              "fit RUN_DIR` to write it", source=str(path)) from None


def _table_keys(space: SearchSpace) -> list[tuple]:
    """Every entry the table of ``space`` needs."""
    d = space.dims.hidden_size
    keys: list[tuple] = [("embed", e) for e in space.embed_sizes] + [("head", d)]
    keys += [("op", op, h) for b in space.blocks for h in b.hidden_sizes
             for op in space.compute_ops]
    stages = [list(space.embed_sizes), *[list(b.hidden_sizes) for b in space.blocks], [d]]
    keys += [("proj", a, b) for s, t in zip(stages, stages[1:]) for a in s for b in t
             if transition_exists(a, b, d)]
    # per block, projections in and out of the teacher's width (shrinking bins by block)
    keys += [("proj", x, y) for b in space.blocks for h in b.hidden_sizes if h != d
             for x, y in ((d, h), (h, d))]
    return sorted(set(keys), key=str)


def _entries(arch: Arch, dims: Dims) -> list[tuple]:
    keys: list[tuple] = [("embed", arch.embed)]
    keys += [("proj", a, b) for a, b in arch.transitions(dims)]
    keys += [("op", op, b.hidden) for b in arch.blocks for op in b.layers]
    return keys


def _key(k: tuple) -> str:
    return ":".join(map(str, k))


class TablePredictor(LatencyPredictor):
    """The lookup table: per-entry latencies, summed, calibrated by ``a * sum + b``."""

    kind = "table"

    def __init__(self, dims: Dims, fp: dict, table: dict[str, float], *, scale: float = 1.0,
                 offset: float = 0.0, error: dict | None = None):
        super().__init__(dims, fp, error)
        self.table, self.scale, self.offset = table, scale, offset

    @classmethod
    def measure(cls, space: SearchSpace, protocol: Protocol, *, progress: bool = False
                ) -> TablePredictor:
        """Time every entry of the space alone."""
        from tqdm.auto import tqdm

        p, dims = protocol.resolved(), space.dims
        device, dtype = torch.device(p.device), DTYPES[p.dtype]
        g = torch.Generator().manual_seed(0)
        table = {}
        for key in tqdm(_table_keys(space), desc="latency table", disable=not progress):
            if key[0] == "head":  # a sequence-classification head on the first token
                module = nn.Sequential(nn.Linear(key[1], key[1]), nn.Tanh(),
                                       nn.Linear(key[1], 2)).eval().to(device, dtype)
                x = torch.randn(p.batch, key[1], generator=g).to(device, dtype)
                fn = lambda m=module, x=x: m(x)  # noqa: E731
            elif key[0] == "embed":
                module = Embeddings(dims.vocab_size, dims.max_position_embeddings,
                                    dims.type_vocab_size, key[1])
                ids = torch.randint(0, dims.vocab_size, (p.batch, p.seq), generator=g)
                module, ids = module.eval().to(device, dtype), ids.to(device)
                fn = lambda m=module, i=ids: m(i)  # noqa: E731
            else:
                width = key[2] if key[0] == "op" else key[1]
                module = (make_op(key[1], key[2], heads=dims.num_heads(key[2]),
                                  ffn_ratio=dims.ffn_ratio, dropout=0.0, attention_dropout=0.0,
                                  eps=1e-12) if key[0] == "op" else nn.Linear(key[1], key[2]))
                x = torch.randn(p.batch, p.seq, width, generator=g)
                module, x = module.eval().to(device, dtype), x.to(device, dtype)
                masks = make_masks(None, dtype)
                fn = ((lambda m=module, x=x: m(x, masks)) if key[0] == "op"  # noqa: E731
                      else (lambda m=module, x=x: m(x)))
            table[_key(key)] = time_ms(fn, p)
        return cls(dims, fingerprint(p), table)

    def raw(self, archs: Sequence[Arch], *, head: bool = False) -> np.ndarray:
        """Sum of the entries of each architecture (plus a classification head)."""
        extra = [("head", self.dims.hidden_size)] if head else []
        try:
            return np.array([sum(self.table[_key(k)] for k in _entries(a, self.dims) + extra)
                             for a in archs])
        except KeyError as e:
            raise ConfigError(f"has no entry {e.args[0]}; re-run `nasbert latency profile` for "
                              "this space", source="latency table") from None

    def block_ms(self, path: BlockArch) -> float:
        """One block's path with its projections in and out (what shrinking bins by)."""
        h, d = path.hidden, self.dims.hidden_size
        ms = sum(self.table[_key(("op", op, h))] for op in path.layers)
        if h != d:
            ms += self.table[_key(("proj", d, h))] + self.table[_key(("proj", h, d))]
        return ms

    def calibrate(self, archs: Sequence[Arch], measured: Sequence[float]) -> None:
        raw = self.raw(archs)
        a, b = np.polyfit(raw, np.asarray(measured, float), 1)
        if a > 0:
            self.scale, self.offset = float(a), float(b)

    def _predict(self, archs: Sequence[Arch]) -> np.ndarray:
        return self.scale * self.raw(archs) + self.offset

    def _state(self) -> dict:
        return {"table": self.table, "scale": self.scale, "offset": self.offset}

    @classmethod
    def _from_state(cls, dims, fp, error, state) -> TablePredictor:
        return cls(dims, fp, state["table"], scale=state["scale"], offset=state["offset"],
                   error=error)


class LearnedPredictor(LatencyPredictor):
    """Ridge regression or a small MLP on named architecture features (log latency)."""

    kind = "learned"

    def __init__(self, dims: Dims, fp: dict, model: str, features: list[str],
                 mean: list[float], std: list[float], params: dict, *, seq: int,
                 table: TablePredictor | None = None, error: dict | None = None):
        super().__init__(dims, fp, error)
        self.model, self.features, self.params, self.seq = model, features, params, seq
        self.mean, self.std = np.asarray(mean), np.asarray(std)
        self.table = table

    def _matrix(self, archs: Sequence[Arch], names: list[str] | None
                ) -> tuple[np.ndarray, list[str]]:
        rows = [a.features(self.dims, self.seq) for a in archs]
        if self.table is not None:  # the table's sum is one more named feature
            for r, ms in zip(rows, self.table.raw(archs)):
                r["table_ms"] = float(ms)
        names = names or sorted(rows[0])
        return np.array([[r[n] for n in names] for r in rows], float), names

    @classmethod
    def fit(cls, archs: Sequence[Arch], measured: Sequence[float], dims: Dims, fp: dict, *,
            seq: int, table: TablePredictor | None = None, seed: int = 0) -> LearnedPredictor:
        """Fit both models on ``archs``; keep the one with the lower validation MAPE."""
        probe = cls(dims, fp, "ridge", [], [], [], {}, seq=seq, table=table)
        x, names = probe._matrix(archs, None)
        y = np.log(np.asarray(measured, float))
        mean, std = x.mean(0), x.std(0) + 1e-9
        z = (x - mean) / std
        fit_idx, val_idx = split(len(archs), seed + 1, test=0.2)
        best = None
        for model in ("ridge", "mlp"):
            params = (_fit_ridge if model == "ridge" else _fit_mlp)(z[fit_idx], y[fit_idx], seed)
            pred = np.exp(_apply(model, params, z[val_idx]))
            mape = float(np.mean(np.abs(pred - np.exp(y[val_idx])) / np.exp(y[val_idx])))
            if best is None or mape < best[0]:
                best = (mape, model)
        model = best[1]
        params = (_fit_ridge if model == "ridge" else _fit_mlp)(z, y, seed)
        return cls(dims, fp, model, names, mean.tolist(), std.tolist(), params, seq=seq,
                   table=table)

    def _predict(self, archs: Sequence[Arch]) -> np.ndarray:
        x, _ = self._matrix(archs, self.features)
        return np.exp(_apply(self.model, self.params, (x - self.mean) / self.std))

    def _state(self) -> dict:
        return {"model": self.model, "features": self.features, "mean": self.mean.tolist(),
                "std": self.std.tolist(), "params": self.params, "seq": self.seq,
                "table": self.table.table if self.table is not None else None}

    @classmethod
    def _from_state(cls, dims, fp, error, state) -> LearnedPredictor:
        table = TablePredictor(dims, fp, state["table"]) if state.get("table") else None
        return cls(dims, fp, state["model"], state["features"], state["mean"], state["std"],
                   state["params"], seq=state["seq"], table=table, error=error)


def _fit_ridge(z: np.ndarray, y: np.ndarray, seed: int, alpha: float = 1e-2) -> dict:
    a = np.hstack([z, np.ones((len(z), 1))])
    reg = alpha * np.eye(a.shape[1])
    reg[-1, -1] = 0.0
    w = np.linalg.solve(a.T @ a + reg, a.T @ y)
    return {"w": w.tolist()}


def _fit_mlp(z: np.ndarray, y: np.ndarray, seed: int, hidden: int = 32,
             epochs: int = 1500) -> dict:
    torch.manual_seed(seed)
    x_t, y_t = torch.tensor(z, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    net = nn.Sequential(nn.Linear(z.shape[1], hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                        nn.Tanh(), nn.Linear(hidden, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            loss = ((net(x_t).squeeze(-1) - y_t) ** 2).mean()
            loss.backward()
            opt.step()
    return {k: v.tolist() for k, v in net.state_dict().items()}


def _apply(model: str, params: dict, z: np.ndarray) -> np.ndarray:
    if model == "ridge":
        w = np.asarray(params["w"])
        return z @ w[:-1] + w[-1]
    h = z
    for i in (0, 2):
        h = np.tanh(h @ np.asarray(params[f"{i}.weight"]).T + np.asarray(params[f"{i}.bias"]))
    return (h @ np.asarray(params["4.weight"]).T + np.asarray(params["4.bias"]))[:, 0]


# ----------------------------------------------------------------------------- a run's latency


def latency_dir(run_dir: Path, protocol: Protocol) -> Path:
    return Path(run_dir) / "latency" / device_id(fingerprint(protocol))


def profile(space: SearchSpace, folder: Path, protocol: Protocol, *, samples: int,
            pool: Sequence[Arch] = (), supernet=None, seed: int = 0,
            progress: bool = True) -> Path:
    """Measure the lookup table and ``samples`` subnets into ``folder``.

    The subnets are the largest and smallest architecture, half of the rest drawn from
    ``pool`` (the candidates search will weigh, when known) and the others uniformly from
    the space. Each is measured in ``protocol.rounds`` rounds spread over the whole
    profile, so that a slow spell of the machine does not bias a few of them; the
    median of the rounds counts. Subnets are extracted from ``supernet`` (the trained
    one, when there is one: weights change how many subnormal numbers flow) or from a
    randomly initialised one. ``samples.jsonl`` grows one line per measurement:
    re-running continues where it stopped."""
    from tqdm.auto import tqdm

    from nasbert.supernet import Supernet

    if protocol.seq > space.dims.max_position_embeddings:
        raise ConfigError(f"{protocol.seq} exceeds the model's "
                          f"{space.dims.max_position_embeddings} positions; use a shorter --seq",
                          source="latency protocol", field="seq")
    folder.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(protocol)
    atomic_write_text(folder / "protocol.json", json.dumps(
        {"protocol": dataclasses.asdict(protocol.resolved()), "fingerprint": fp}, indent=1))
    if not (folder / "table_raw.json").is_file():
        tables = [TablePredictor.measure(space, protocol, progress=progress)
                  for _ in range(protocol.rounds)]
        table = tables[0]
        table.table = {k: statistics.median(t.table[k] for t in tables) for k in table.table}
        table.save(folder / "table_raw.json")
    rng = random.Random(seed)
    archs = [space.max_arch(), space.min_arch()]
    from_pool = min(len(pool), max(0, samples - 2) // 2)
    archs += rng.sample(list(pool), from_pool)
    archs += [space.sample(rng) for _ in range(max(0, samples - len(archs)))]
    plan = [(r, a) for r in range(protocol.rounds) for a in archs]
    done = _read_samples(folder / "samples.jsonl")
    todo = plan[len(done):]
    if todo:
        torch.manual_seed(seed)
        supernet = (supernet or Supernet(space)).eval()
        with open(folder / "samples.jsonl", "a", encoding="utf-8") as f:
            for r, arch in tqdm(todo, desc="latency samples", disable=not progress):
                ms = measure_ms(supernet.extract(arch), protocol)
                f.write(json.dumps({"arch": str(arch), "ms": ms, "round": r}) + "\n")
                f.flush()
    return folder


def measured(folder: Path) -> dict[str, float]:
    """Architecture string -> median of its measured rounds."""
    by_arch: dict[str, list[float]] = {}
    for row in _read_samples(folder / "samples.jsonl"):
        by_arch.setdefault(row["arch"], []).append(row["ms"])
    return {a: statistics.median(v) for a, v in by_arch.items()}


def _read_samples(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a kill: re-measured on the next run
    return rows


def fit(space: SearchSpace, folder: Path, *, seed: int = 0) -> dict[str, LatencyPredictor]:
    """Fit the table's calibration and the learned predictor on the training split of
    the measured subnets; store both with their error on the held-out split."""
    samples = measured(folder)
    if len(samples) < 10:
        raise ConfigError(f"holds {len(samples)} measured subnets, fewer than 10; run `nasbert "
                          "latency profile RUN_DIR --samples 100`", source=str(folder))
    archs = [space.validate(a) for a in samples]
    ms = list(samples.values())
    train, test = split(len(archs), seed)
    table = LatencyPredictor.load(folder / "table_raw.json")
    assert isinstance(table, TablePredictor)
    table.calibrate([archs[i] for i in train], [ms[i] for i in train])
    fp = table.fingerprint
    raw_table = LatencyPredictor.load(folder / "table_raw.json")
    learned = LearnedPredictor.fit([archs[i] for i in train], [ms[i] for i in train],
                                   space.dims, fp, seq=int(fp["seq"]), table=raw_table,
                                   seed=seed)
    out = {}
    for predictor in (table, learned):
        pred = predictor.predict([archs[i] for i in test])
        predictor.error = {**errors(pred, [ms[i] for i in test]), "split_seed": seed,
                           "train": len(train)}
        predictor.save(folder / f"{predictor.kind}.json")
        out[predictor.kind] = predictor
    best = min(out.values(), key=lambda p: p.error["mape"])
    atomic_write_text(folder / "best.json", json.dumps(
        {"kind": best.kind, "errors": {k: v.error for k, v in out.items()}}, indent=1))
    return out


def load_predictor(folder: Path, kind: str = "best") -> LatencyPredictor:
    """A fitted predictor of a ``latency/<device>/`` folder (``best``, ``table``,
    ``learned``)."""
    folder = Path(folder)
    if kind == "best":
        best = folder / "best.json"
        if not best.is_file():
            raise ConfigError("is missing; run `nasbert latency fit RUN_DIR`", source=str(best))
        kind = json.loads(best.read_text())["kind"]
    return LatencyPredictor.load(folder / f"{kind}.json")


def local_table(run_dir: Path) -> TablePredictor | None:
    """A lookup table of the run measured on this machine (any batch and sequence), or
    None: what shrinking bins by when the run has one."""
    for folder in sorted((Path(run_dir) / "latency").glob("*/")):
        meta, path = folder / "protocol.json", folder / "table_raw.json"
        if not (meta.is_file() and path.is_file()):
            continue
        stored = json.loads(meta.read_text())
        if fingerprint(Protocol(**stored["protocol"])) == stored["fingerprint"]:
            table = LatencyPredictor.load(path)
            assert isinstance(table, TablePredictor)
            return table
    return None
