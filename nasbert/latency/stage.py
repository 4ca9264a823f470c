"""Stage 2: latency on the target device, for a run.

    nasbert latency profile runs/x --samples 200     # measure, resumable
    nasbert latency fit runs/x                       # fit both predictors, held-out error

:func:`profile` measures the lookup table and a sample of subnets into
``latency/<device-id>/``; :func:`fit` fits the table's calibration and the learned
predictor and stores both with their held-out error; :func:`load_predictor` reads one
back; :func:`reference` is the teacher as profiled, which rescales later measurements for
the machine's slow spells, and :func:`teacher_ms` its latency, the reference of every
speedup.

>>> profile(run, Protocol(), samples=200)    # doctest: +SKIP
>>> fit(run, Protocol())["table"].error      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import random
import statistics
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from nasbert.errors import ConfigError
from nasbert.io import atomic_write_text
from nasbert.latency.measure import Protocol, Reference, cached_ms, fingerprint, measure
from nasbert.latency.predictors import (
    LatencyPredictor,
    LearnedPredictor,
    TablePredictor,
    errors,
    split,
)
from nasbert.run import RunDir
from nasbert.space import sample_archs


def profile(run: RunDir | str | Path, protocol: Protocol, *, samples: int, seed: int = 0,
            progress: bool = True) -> Path:
    """Measure the lookup table and ``samples`` subnets into ``latency/<device-id>/``.

    The subnets are the largest and smallest architecture, half of the rest drawn from
    the candidates search will weigh (the surviving paths of shrinking, when the run has
    them) and the others uniformly from the space. Each is measured in
    ``protocol.rounds`` rounds spread over the whole profile, so that a slow spell of the
    machine does not bias a few of them; the median of the rounds counts. Subnets are
    extracted from the trained supernet when there is one (weights change how many
    subnormal numbers flow), else from a randomly initialised one. ``samples.jsonl``
    grows one line per measurement: re-running continues where it stopped."""
    from nasbert.supernet import Supernet

    if samples < 0:
        raise ConfigError(f"must be 0 or more, not {samples}", source="latency profile",
                          field="samples")
    run = RunDir.of(run)
    space = run.space()
    if protocol.seq > space.dims.max_position_embeddings:
        raise ConfigError(f"{protocol.seq} exceeds the model's "
                          f"{space.dims.max_position_embeddings} positions; use a shorter --seq",
                          source="latency protocol", field="seq")
    folder = run.latency_dir(protocol)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "protocol.json", json.dumps(
        {"protocol": dataclasses.asdict(protocol.resolved()), "fingerprint": fingerprint(protocol)},
        indent=1))
    if not (folder / "table_raw.json").is_file():
        tables = [TablePredictor.measure(space, protocol, progress=progress)
                  for _ in range(protocol.rounds)]
        table = tables[0]
        table.table = {k: statistics.median(t.table[k] for t in tables) for k in table.table}
        table.save(folder / "table_raw.json")
    archs = _spread_archs(run, LatencyPredictor.load(folder / "table_raw.json"), samples,
                          seed)
    plan = [(r, a) for r in range(protocol.rounds) for a in archs]
    samples = folder / "samples.jsonl"
    done = _read_samples(samples)
    if [row["arch"] for row in done] != [str(a) for _, a in plan[:len(done)]]:
        done = []  # measured for another plan (another sampling): start again
    todo = plan[len(done):]
    if todo:
        # drop a line a kill cut short, so that what is appended after it is read
        atomic_write_text(samples, "".join(json.dumps(row) + "\n" for row in done))
        torch.manual_seed(seed)
        supernet = (run.supernet() if run.has_supernet() else Supernet(space)).eval()
        reference = _load_reference(run)
        with open(samples, "a", encoding="utf-8") as f:
            for j, (r, arch) in enumerate(tqdm(todo, desc="latency samples",
                                               disable=not progress)):
                if j % REFERENCE_EVERY == 0:
                    ref_ms = measure(reference, protocol)
                ms = measure(supernet.extract(arch), protocol)
                f.write(json.dumps({"arch": str(arch), "ms": ms, "round": r,
                                    "ref_ms": ref_ms}) + "\n")
                f.flush()
    return folder


def _spread_archs(run: RunDir, table: LatencyPredictor, n: int, seed: int) -> list:
    """The largest and smallest architecture and ``n - 2`` more, spread evenly over the
    log of the table's (uncalibrated) latency: drawn from a large pool (half of it from
    the surviving paths of shrinking, when the run has them, half uniformly from the
    space), then, for each of ``n - 2`` log-spaced targets, the unused candidate nearest
    to it. Uniform draws alone put almost every sample mid-size (measured: 1 of 120 below
    6 ms for a 34 ms teacher), so the calibration extrapolated to small models by a
    6 ms intercept and the 8x budget found no candidate."""
    space = run.space()
    rng = random.Random(seed)
    survivors = run.survivors()
    size = 20 * n
    pool = (sample_archs(space.embed_sizes, [sorted(t, key=str) for t in survivors], size // 2,
                         seed=seed) if survivors else [])
    pool += [space.sample(rng) for _ in range(size - len(pool))]
    ends = [space.max_arch(), space.min_arch()]
    pool = list(dict.fromkeys(a for a in pool if a not in ends))
    if n <= 2 or not pool:
        return ends[:max(n, 1)]
    cost = dict(zip(pool, np.log(table.raw(pool))))
    lo, hi = min(cost.values()), max(cost.values())
    chosen: list = []
    left = set(pool)
    for k in range(min(n - 2, len(pool))):
        target = lo + (hi - lo) * (k + 0.5) / (n - 2)
        best = min(left, key=lambda a: (abs(cost[a] - target), str(a)))
        chosen.append(best)
        left.discard(best)
    return ends + chosen


# the teacher is measured every this many subnets of a profile: the reference that
# rescales them (and every later measurement) for the machine's slow spells
REFERENCE_EVERY = 10


def _load_reference(run: RunDir):
    from transformers import AutoModel

    from nasbert.hf.quiet import quiet_transformers

    with quiet_transformers():
        return AutoModel.from_pretrained(run.teacher_name()).eval()


def reference(run: RunDir | str | Path, protocol: Protocol) -> Reference | None:
    """The run's teacher as the reference of later measurements on this device, at its
    median time over the profile (None for a profile made before references were
    recorded)."""
    run = RunDir.of(run)
    calm = _calm(_read_samples(run.latency_dir(protocol) / "samples.jsonl"))
    return Reference(run.teacher_name(), calm) if calm else None


def _calm(rows: list[dict]) -> float | None:
    """The reference's median time over a profile's rows."""
    refs = [row["ref_ms"] for row in rows if "ref_ms" in row]
    return statistics.median(refs) if refs else None


def measured(folder: Path) -> dict[str, float]:
    """Architecture string -> median of its measured rounds, each rescaled by the
    reference measured last before it (the teacher's median over the profile / its time
    then)."""
    rows = _read_samples(folder / "samples.jsonl")
    calm = _calm(rows)
    by_arch: dict[str, list[float]] = {}
    for row in rows:
        scale = calm / row["ref_ms"] if calm and "ref_ms" in row else 1.0
        by_arch.setdefault(row["arch"], []).append(row["ms"] * scale)
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


def fit(run: RunDir | str | Path, protocol: Protocol, *, seed: int = 0
        ) -> dict[str, LatencyPredictor]:
    """Fit the table's calibration and the learned predictor on the training split of
    the measured subnets; store both with their error on the held-out split, and which
    is better in ``best.json``."""
    run = RunDir.of(run)
    folder = run.latency_dir(protocol)
    if not (folder / "table_raw.json").is_file():
        raise ConfigError(f"has no measurements for this device; run `nasbert latency profile "
                          f"{run}` first", source=str(folder))
    space = run.space()
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


def load_predictor(run: RunDir | str | Path, protocol: Protocol, kind: str = "best"
                   ) -> LatencyPredictor:
    """A fitted predictor of the run for ``protocol`` on this device (``best``,
    ``table``, ``learned``)."""
    run = RunDir.of(run)
    folder = run.latency_dir(protocol)
    if not folder.is_dir():
        raise ConfigError("has no latency predictor for this device; run `nasbert latency "
                          f"profile {run}` then `nasbert latency fit {run}`", source=str(run))
    if kind == "best":
        best = folder / "best.json"
        if not best.is_file():
            raise ConfigError("is missing; run `nasbert latency fit RUN_DIR`", source=str(best))
        kind = json.loads(best.read_text())["kind"]
    return LatencyPredictor.load(folder / f"{kind}.json")


def teacher_ms(run: RunDir | str | Path, protocol: Protocol, *, refresh: bool = False) -> float:
    """The run's teacher's latency on this device, the reference of every speedup: its
    median over the profile (the :func:`reference`), or for a profile without one, as
    measured in a clean process (cached beside the run's latency table)."""
    run = RunDir.of(run)
    ref = reference(run, protocol)
    if ref is not None and not refresh:
        return ref.ms
    return cached_ms(run.teacher_name(), protocol,
                     cache=run.latency_dir(protocol) / "teacher.json", refresh=refresh, rounds=5)
