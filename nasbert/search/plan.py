"""The plan of a comparison: which models stand for each speedup over the teacher, at
equal measured latency: the hand-designed baselines (uniform stacks, teacher prefixes)
and the searched model under the latency of the group's fastest.

>>> groups = plan_models("runs/qs", [2, 4, 8], Protocol())     # doctest: +SKIP
>>> Plan.load("runs/qs").ids()                                   # doctest: +SKIP

What it decided is a :class:`Plan`, kept in ``search/plan.json`` (this module is its
one writer; readers load it with :meth:`Plan.load`); the baselines it measured are kept
in ``search/baselines.json``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from nasbert.digest import digest
from nasbert.errors import ConfigError
from nasbert.io import atomic_write_text, cached_record
from nasbert.latency.measure import Protocol, device_id, fingerprint
from nasbert.latency.stage import teacher_ms
from nasbert.run import RunDir
from nasbert.search.baselines import Baselines, build_baselines
from nasbert.search.searchers import Budget, Candidate
from nasbert.search.stage import load_chosen, search


def speedup_name(speedup: float) -> str:
    """A speedup group's name: ``4x``."""
    return f"{speedup:g}x"


def plan_ids(groups: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Every model id of a plan's groups, once each, in order."""
    return list(dict.fromkeys(i for group in groups.values() for i in group.values()))


@dataclasses.dataclass(frozen=True)
class Plan:
    """What :func:`plan_models` decided: per speedup name, ``{kind: model id}`` (kinds:
    ``searched``, ``uniform``, ``teacher-first-k``), the budgets the searched models were
    found under, the latencies that set them and that they measured, and the request it
    answers (a different request plans anew)."""

    request: dict
    teacher_ms: float
    budgets_ms: dict[str, float]
    measured_ms: dict[str, float]
    notes: list[str]
    groups: dict[str, dict[str, str]]

    def ids(self) -> list[str]:
        return plan_ids(self.groups)

    @staticmethod
    def path(run: RunDir | str | Path) -> Path:
        return RunDir.of(run).search / "plan.json"

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["plan"] = out.pop("groups")  # the file's name for it
        return out

    @classmethod
    def from_dict(cls, data: Mapping, *, source: str = "plan.json") -> Plan:
        try:
            return cls(request=dict(data["request"]), teacher_ms=float(data["teacher_ms"]),
                       budgets_ms={k: float(v) for k, v in data["budgets_ms"].items()},
                       measured_ms={k: float(v) for k, v in data["measured_ms"].items()},
                       notes=list(data.get("notes", [])),
                       groups={k: dict(v) for k, v in data["plan"].items()})
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError("is corrupt; delete it to plan again", source=source) from None

    @classmethod
    def load(cls, run: RunDir | str | Path) -> Plan | None:
        """The run's stored plan, or None when it has none."""
        path = cls.path(run)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError("is corrupt; delete it to plan again", source=str(path)) from None
        return cls.from_dict(data, source=str(path))

    def save(self, run: RunDir | str | Path) -> Path:
        return atomic_write_text(self.path(run), json.dumps(self.to_dict(), indent=1))


def plan_models(run: RunDir | str | Path, speedups: Sequence[float], protocol: Protocol, *,
                trials: int = 150, top_k: int = 5, refine: int = 0, baselines: bool = True,
                tolerance: float = 0.05, reach: float = 2.0,
                budgets_ms: Mapping[str, float] | None = None, seed: int = 0,
                progress: bool = True) -> dict[str, dict[str, str]]:
    """The models to compare at about each speedup over the teacher, at equal measured
    latency. Returns speedup name -> {kind: model id}.

    With ``baselines``, they come first: the uniform stack and the teacher prefix whose
    latency, measured side by side, is nearest to the teacher's over the speedup (kept
    in ``search/baselines.json``, so that a plan cut short is made again from the same
    figures); then the search, under the latency of the group's fastest baseline within
    ``reach`` times of that target (or, where the search reaches no model that fast, the
    next), so that the searched model is no slower than what it is compared with and has
    all the room that baseline has. (Matched the other way
    round, search first, then the nearest hand shapes, every baseline of the results run
    of 2026-11-23 was slower than the searched model it was compared with, up to 1.49x:
    those comparisons were not at equal latency.) A baseline further off (a teacher
    prefix is a coarse family: 1 to 5 of 6 layers) is still compared but sets no budget;
    a speedup with no baseline within ``reach`` is left out, with a note. Without
    baselines, the search works under the teacher's latency over the speedup, plus
    ``tolerance`` (the slack within which a budget counts as honoured); or under
    ``budgets_ms`` (speedup name -> ms), where given (a run searched at another's
    budgets, as the supernet trained longer is; no baselines are built then).

    Every budget is searched with no guard band (the picks are measured side by side and
    the first within the budget kept: the search may pick the uniform stack itself, which
    lies in the space); one whose picks all measured over it is searched again with the
    predictor's held-out error as the band. A speedup no candidate reaches is left out,
    with a note.

    The plan, its budgets and the latencies that set them and that its searched models
    measured are stored in ``search/plan.json`` and reused while the request is the same,
    so that a resumed run (or a later script) compares the same models, not a fresh
    match made with noisier or quieter latency measurements. ``seed`` seeds the search
    (its sampling back ends and refinement)."""
    if budgets_ms is not None and baselines:
        raise ValueError("budgets_ms replaces the baselines' budgets: give baselines=False")
    run = RunDir.of(run)
    request = {"speedups": list(speedups), "tolerance": tolerance, "baselines": baselines,
               "match": "search under the fastest baseline", "reach": reach,
               "budgets_ms": dict(budgets_ms) if budgets_ms is not None else None,
               "device": device_id(fingerprint(protocol))}
    if seed:  # (plans made before the seed was a choice were made at 0)
        request["seed"] = seed
    previous = Plan.load(run)
    if previous is not None:  # matched once: a resumed run compares the same models
        if previous.request == request and all(
                (run.subnet_dir(i) / "config.json").is_file() for i in previous.ids()):
            return previous.groups
        if progress:
            why = ("was made for another request" if previous.request != request
                   else "names a model no longer under subnets/")
            print(f"planning      anew: {Plan.path(run)} {why}", flush=True)
    base = teacher_ms(run, protocol)
    targets = {speedup_name(s): base / s for s in speedups}
    groups: dict[str, dict[str, str]] = {}
    measured: dict[str, float] = {}  # what set the budgets, and what met them
    notes = []
    options: dict[str, list[float]] = {}  # per speedup, the budgets to try, in order
    if budgets_ms is not None:
        options = {name: [budgets_ms[name]] for name in targets if name in budgets_ms}
        notes += [f"{name}: no budget given" for name in targets if name not in options]
    elif baselines:
        matched = _baselines(run, targets, protocol, progress=progress)
        for name, target in targets.items():
            ms = {i: matched.latency_ms[i] for i in matched.groups[name].values()}
            near = sorted(t for t in ms.values() if max(t / target, target / t) <= reach)
            if not near:
                notes.append(f"{name}: the nearest hand-designed models take "
                             + " and ".join(f"{t:.2f}" for t in sorted(ms.values()))
                             + f" ms, over {reach:g}x from its {target:.2f} ms")
                continue
            groups[name], options[name] = matched.groups[name], near
            measured.update(ms)
    else:
        options = {name: [target * (1 + tolerance)] for name, target in targets.items()}
    budgets = _search_budgets(run, options, notes, trials=trials, top_k=top_k, refine=refine,
                              protocol=protocol, progress=progress, teacher_ms=base, seed=seed)
    plan = {name: {"searched": b.name, **groups.get(name, {})} for name, b in budgets.items()}
    chosen = load_chosen(run)
    for name, ids in plan.items():
        ms = chosen[ids["searched"]].measured_ms
        if ms is not None:
            measured[ids["searched"]] = ms
            if ms > budgets[name].latency_ms:
                notes.append(f"{name}: its searched model measured {ms:.2f} ms, over its "
                             f"{budgets[name].latency_ms:g} ms")
    if progress and notes:
        left = [name for name in targets if name not in plan]
        print((f"skipped       {', '.join(left)}: " if left else "note          ")
              + "; ".join(notes), flush=True)
    if not plan:
        raise ConfigError(f"no subnet was found for any of the speedups {list(targets)} ("
                          + "; ".join(notes) + "); lower them or train the supernet with "
                          "more bins (shrink.spacing: log keeps small paths)", source=str(run))
    Plan(request=request, teacher_ms=base,
         budgets_ms={name: budgets[name].latency_ms for name in plan},
         measured_ms=measured, notes=notes, groups=plan).save(run)
    return plan


def _search_budgets(run: RunDir, options: Mapping[str, list[float]], notes: list[str], *,
                    teacher_ms: float, progress: bool, **settings) -> dict[str, Budget]:
    """Search each speedup under the first of its ``options`` (ms, in order) that the
    search reaches, with no guard band, then with the predictor's band where every pick
    measured over; a speedup none reaches is left out. Returns speedup name -> the
    budget its searched model (``subnets/<budget name>/``) was found under."""
    def found(b: Budget, chosen: Mapping[str, Candidate]) -> bool:
        return b.name in chosen and (run.subnet_dir(b.name) / "config.json").is_file()

    def over(b: Budget, chosen: Mapping[str, Candidate]) -> bool:
        ms = chosen[b.name].measured_ms if b.name in chosen else None
        return ms is not None and ms > b.latency_ms

    left = {name: [Budget(latency_ms=float(f"{ms:.4g}")) for ms in ms_list]
            for name, ms_list in options.items()}
    out: dict[str, Budget] = {}
    while left:
        current = {name: tried[0] for name, tried in left.items()}
        chosen = load_chosen(run)
        todo = list({b.name: b for b in current.values() if not found(b, chosen)}.values())
        for guard in (0.0, None):  # measurement decides; the band where all measured over
            if not todo:
                break
            if progress:
                print(f"searching     {', '.join(b.name for b in todo)} (teacher: "
                      f"{teacher_ms:.2f} ms" + (")" if guard == 0 else
                                                "; again, with the predictor's guard band)"),
                      flush=True)
            try:
                search(run, todo, guard=guard, progress=progress, **settings)
            except ConfigError as e:  # some budget had no candidate: go on with the others
                notes.append(str(e))
            chosen = load_chosen(run)
            todo = [b for b in todo if over(b, chosen)]
        for name, b in current.items():
            left[name].pop(0)
            if found(b, chosen):
                out[name] = b
                del left[name]
            elif left[name]:
                notes.append(f"{name}: no model reached {b.name}; held to the next baseline's "
                             f"{left[name][0].latency_ms:g} ms")
            else:
                del left[name]
    return out


def _baselines(run: RunDir, targets: Mapping[str, float], protocol: Protocol, *,
               progress: bool) -> Baselines:
    """:func:`build_baselines` at ``targets``, measured once: kept in
    ``search/baselines.json`` and read back while the targets, the device and the
    models are the same."""
    path = run.search / "baselines.json"
    request = {"targets_ms": dict(targets), "device": device_id(fingerprint(protocol))}
    kept = cached_record(path, digest(request))
    if kept:
        matched = Baselines.from_dict(kept)
        if all((run.subnet_dir(i) / "config.json").is_file() for i in plan_ids(matched.groups)):
            return matched
    matched = build_baselines(run, targets, protocol=protocol, progress=progress)
    atomic_write_text(path, json.dumps({"key": digest(request), "request": request,
                                        **matched.to_dict()}, indent=1))
    return matched
