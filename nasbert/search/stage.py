"""Stage 3: the search controller: the best candidate per budget, from a trained, shrunk
run, and the query that answers from what it stored.

A candidate picks an embedding size and one surviving path per block. Its quality is
the performance approximator's score (sum of block dev losses) and its cost the
predicted latency (or its parameters); the back ends are in
:mod:`~nasbert.search.searchers`. For each budget, the best ``top_k`` feasible
candidates by score are re-scored end to end on the whole dev split and the best is kept
(the paper re-scores its top 100).

>>> chosen = search("runs/qs", [Budget(latency_ms=8)], trials=300)  # doctest: +SKIP
>>> query("runs/qs", Budget(latency_ms=8)).arch                    # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nasbert.errors import ConfigError
from nasbert.io import atomic_write_text
from nasbert.run import RunDir
from nasbert.search.exact import Solution, attends
from nasbert.search.exact import pareto as exact_pareto
from nasbert.search.searchers import (
    Budget,
    Candidate,
    Evaluator,
    ExactSearcher,
    OptunaSearcher,
    RayTuneSearcher,
    Searcher,
)

if TYPE_CHECKING:
    from nasbert.latency.measure import Protocol

# what ``full_loss`` means in the stored candidates (nasbert.search.approx): a store
# written under another definition has its end-to-end losses dropped when read
END_TO_END = "token MSE"


def pareto(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates no other one beats on both score and predicted latency."""
    return exact_pareto(candidates, lambda c: c.latency_ms)


def _plot(path: Path, candidates: Sequence[Candidate], front: Sequence[Candidate],
          chosen: dict[str, Candidate], budgets: Sequence[Budget]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([c.latency_ms for c in candidates], [c.score for c in candidates], s=6,
               alpha=0.3, label="evaluated")
    ax.plot([c.latency_ms for c in front], [c.score for c in front], "o-", color="C1",
            label="Pareto front")
    for b in budgets:
        if b.latency_ms is not None:
            ax.axvline(b.latency_ms, ls=":", color="gray")
    for name, c in chosen.items():
        ax.scatter([c.latency_ms], [c.score], marker="*", s=150, color="C3", zorder=3)
        ax.annotate(name, (c.latency_ms, c.score), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("approximated loss (sum of block dev losses)")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def search(run: RunDir | str | Path, budgets: Sequence[Budget], *, backend: str = "exact",
           trials: int = 300, top_k: int = 10, protocol: Protocol | None = None,
           predictor: str = "best", allow_foreign: bool = False, export: bool = True,
           measure_top: int = 3, refine: int = 0, seed: int = 0, guard: float | None = None,
           progress: bool = True) -> dict[str, Candidate]:
    """Search every budget; write ``search/`` (candidates, the exact front, Pareto set and
    plot, chosen; the Optuna study for that back end) and, with ``export``,
    ``subnets/<budget>/`` (model + card). Returns the chosen candidate per budget.

    ``backend``: ``exact`` (the k best by dynamic programming on the latency lookup
    table), ``optuna`` (NSGA-II) or ``ray`` (Ray Tune), the last two with ``predictor``.
    A latency budget is searched with a guard band of the predictor's held-out error
    (``guard``, a share of the budget, sets another: 0 where a measurement is to decide,
    as when the budget is a measured model's latency and that model lies in the space);
    with ``export``, the ``measure_top`` best candidates (end to end) are measured side
    by side in one clean process and the best that measures within the budget is kept,
    the next ones tried while none does (every measurement is stored, for ``query``).
    Where measurement decides (``guard`` 0) and none is predicted within the budget, the
    ``measure_top`` best predicted within the predictor's held-out error of it are
    measured, and kept if one measures within it.
    ``refine``: after the re-score, that many more architectures per budget, from the
    whole space, evaluated end to end by a local search that starts from the best of the
    re-scored pool and the hand-designed shapes that fit (:mod:`~nasbert.search.refine`;
    0: none)."""
    from nasbert.latency.measure import Protocol, fingerprint, measure_clean
    from nasbert.latency.stage import load_predictor, reference
    from nasbert.search.approx import Approximator
    from nasbert.search.refine import refine as refine_candidates  # imports torch: not for query

    run = RunDir.of(run)
    protocol = protocol or Protocol()
    if not budgets:
        raise ConfigError("give at least one budget (--latency-ms or --params-m)",
                          source="search")
    if refine < 0:
        raise ConfigError(f"{refine} is negative; give 0 (no refinement) or more",
                          source="search", field="refine")
    if guard is not None and guard < 0:
        raise ConfigError(f"{guard} is negative; give 0 (measurement decides) or more",
                          source="search", field="guard")
    for name, value in (("top_k", top_k), ("trials", trials), ("measure_top", measure_top)):
        if value < 1:
            raise ConfigError(f"must be at least 1, not {value}", source="search", field=name)
    if backend not in ("exact", "optuna", "ray"):
        raise ConfigError(f"unknown backend {backend!r}; use exact, optuna or ray",
                          source="search")
    pred = load_predictor(run, protocol, "table" if backend == "exact" else predictor)
    pred.check(fingerprint(protocol), allow_foreign=allow_foreign)
    approx = Approximator.from_run(run)
    space = approx.space
    evaluate = Evaluator(space.dims, approx.tables,
                         {e: approx.embedding_loss(e) for e in space.embed_sizes},
                         lambda archs: pred.predict(archs))
    folder = run.search
    searcher: Searcher
    if backend == "exact":
        searcher = ExactSearcher(pred.additive(), k=top_k)
    else:  # these keep their studies under search/ (the exact solver keeps none)
        folder.mkdir(parents=True, exist_ok=True)
        searcher = (OptunaSearcher(folder / "study.db") if backend == "optuna"
                    else RayTuneSearcher(folder / "ray"))
    if guard is None:
        guard = pred.error.get("mape", 0.0) / 100  # as query judges (measured or not)
    ref = reference(run, protocol) if export else None  # read once, not per budget
    everything: dict[str, Candidate] = {}
    chosen: dict[str, Candidate] = {}
    failures: list[str] = []
    for budget in budgets:
        guarded = (dataclasses.replace(budget, latency_ms=budget.latency_ms / (1 + guard))
                   if budget.latency_ms is not None and guard > 0 else budget)
        found = searcher.run(evaluate, space.embed_sizes, approx.choices(), guarded, trials,
                             seed=seed)
        for c in found:
            everything[str(c.arch)] = c
        # every backend: the models a classifier can use (the exact solver builds only those)
        usable = [c for c in found if any(attends(b) for b in c.arch.blocks)]
        feasible = sorted((c for c in usable if guarded.fits(c)), key=lambda c: c.score)
        near: list[Candidate] = []
        if not feasible and export and guard == 0 and budget.latency_ms is not None:
            # measurement decides: a prediction is off by its held-out error, most on the
            # smallest models (fixed costs the per-operation table does not see), so those
            # predicted just over the budget are measured rather than refused unseen
            band = budget.latency_ms * (1 + pred.error.get("mape", 0.0) / 100)
            near = sorted((c for c in usable if c.latency_ms <= band),
                          key=lambda c: c.score)[:measure_top]
            if near:
                times = measure_clean([approx.supernet.extract(c.arch) for c in near],
                                      protocol, reference=ref)
                near = [dataclasses.replace(c, measured_ms=t) for c, t in zip(near, times)]
                for c in near:
                    everything[str(c.arch)] = c
                feasible = [c for c in near if c.measured_ms <= budget.latency_ms]
        if not feasible:  # the smallest usable one, judged as the budget judged it
            smallest = min((_as_judged(c, budget, guard) for c in (usable or found)),
                           key=budget.violation)
            margin = (f" (predicted, plus the predictor's held-out error of {guard:.1%})"
                      if budget.latency_ms is not None and guard and not smallest.measured_ms
                      else "")
            tried = (f"; the {len(near)} predicted within the predictor's error of it "
                     "measured " + ", ".join(f"{c.measured_ms:.2f}" for c in near) + " ms"
                     if near else "")
            failures.append(f"no candidate fits {budget.name}; the smallest found needs "
                            f"{smallest.latency_ms:.2f} ms{margin}, "
                            f"{smallest.params / 1e6:.2f}M params ({smallest.arch}){tried}; "
                            "raise the budget")
            continue
        rescored = sorted((dataclasses.replace(c, full_loss=approx.full_loss(c.arch))
                           for c in feasible[:top_k]), key=lambda c: c.full_loss)
        if refine:
            rescored = refine_candidates(
                approx, rescored, lambda a: Candidate(a, float("nan"),
                                                      float(pred.predict([a])[0]),
                                                      a.num_params(space.dims)),
                guarded.fits, evaluations=refine, seed=seed,
                progress=f"refining {budget.name}" if progress else None)
        for c in rescored:
            everything[str(c.arch)] = c
        best = rescored[0]
        if export:  # (those kept by measurement above were measured: not again)
            measured = (rescored if near and all(c.measured_ms for c in rescored) else
                        _measure_until_within(approx.supernet, rescored, budget, protocol,
                                              measure_top, reference=ref, progress=progress))
            for c in measured:  # those over budget too: query must not name them
                everything[str(c.arch)] = c
            best = _first_within(measured, budget)
            _export(run, approx.supernet, best, budget, pred)
        everything[str(best.arch)] = best
        chosen[budget.name] = best
        if progress:
            print(f"{budget.name:<20} {best.arch}  score {best.score:.4f}  "
                  f"end to end {best.full_loss:.4f}"
                  + (f" ({best.origin})" if best.origin else "")
                  + f"  predicted {best.latency_ms:.2f} ms"
                  + (f"  measured {best.measured_ms:.2f} ms" if best.measured_ms else ""),
                  flush=True)
    if not chosen:  # every budget impossible: bad input, nothing written
        raise ConfigError("; ".join(failures), source="search")
    fronts = searcher.fronts if isinstance(searcher, ExactSearcher) else {}
    _write(folder, everything, chosen, budgets, pred, fronts)
    if failures:  # after writing what the other budgets found
        raise ConfigError("; ".join(failures), source="search")
    return chosen


def _measure_until_within(supernet, ranked: Sequence[Candidate], budget: Budget, protocol,
                          top: int, *, reference=None, progress: bool) -> list[Candidate]:
    """``ranked`` (best first) measured ``top`` at a time side by side in one clean
    process (beside the run's reference, which rescales them for the machine's slow
    spells), until one measures within the budget; returns every one measured."""
    from nasbert.latency.measure import measure_clean

    if budget.latency_ms is None:  # nothing to check: the best, measured for its card
        top = 1
    measured: list[Candidate] = []
    for start in range(0, len(ranked), top):
        group = ranked[start:start + top]
        times = measure_clean([supernet.extract(c.arch) for c in group], protocol,
                              reference=reference)
        measured += [dataclasses.replace(c, measured_ms=t) for c, t in zip(group, times)]
        if budget.latency_ms is None or any(t <= budget.latency_ms for t in times):
            break
        if progress:
            print(f"{budget.name:<20} {len(group)} candidates measured over budget "
                  f"({', '.join(f'{t:.2f}' for t in times)} ms); trying the next", flush=True)
    return measured


def _first_within(measured: Sequence[Candidate], budget: Budget) -> Candidate:
    """The first of ``measured`` (best first) within the budget; the fastest when none is."""
    if budget.latency_ms is None:
        return measured[0]
    within = [c for c in measured if c.measured_ms <= budget.latency_ms]
    if within:
        return within[0]
    logging.getLogger(__name__).warning("%s: no candidate measured within the budget; "
                                        "keeping the fastest", budget.name)
    return min(measured, key=lambda c: c.measured_ms)


def _export(run: RunDir, supernet, best: Candidate, budget: Budget, pred) -> None:
    from nasbert.extract import save_subnet

    save_subnet(supernet, best.arch, run.subnet_dir(budget.name), info={
        "budget": budget.name, "predicted latency (ms)": f"{best.latency_ms:.3f}",
        "measured latency (ms)": f"{best.measured_ms:.3f}",
        "approximated score": f"{best.score:.5f}",
        "end-to-end dev loss": f"{best.full_loss:.5f}",
        "latency predictor": f"{pred.kind}, held-out MAPE "
                             f"{pred.error.get('mape', float('nan')):.1f}%",
        "device fingerprint": json.dumps(pred.fingerprint)})


def _write(folder: Path, everything: dict[str, Candidate], chosen: dict[str, Candidate],
           budgets: Sequence[Budget], pred, fronts: dict[str, list[Solution]]) -> None:
    previous, _ = _load_store(folder)
    merged = {**previous, **everything}
    cands = list(merged.values())
    front = pareto(cands)
    old_chosen = {k: c.to_dict() for k, c in _read_chosen(folder).items()}
    meta = {"fingerprint": pred.fingerprint, "predictor": pred.kind, "error": pred.error,
            "end_to_end": END_TO_END}
    atomic_write_text(folder / "candidates.json", json.dumps(
        {**meta, "candidates": [c.to_dict() for c in cands]}))
    atomic_write_text(folder / "pareto.json", json.dumps(
        {**meta, "pareto": [c.to_dict() for c in front]}, indent=1))
    atomic_write_text(folder / "chosen.json", json.dumps(
        {**meta, "chosen": {**old_chosen, **{k: v.to_dict() for k, v in chosen.items()}}},
        indent=1))
    if fronts:  # the exact k-level fronts: what `query` answers any budget from
        out = {}
        for name, sols in fronts.items():
            archs = [s.arch for s in sols]
            latency = pred.predict(archs) if archs else []
            out[name] = [Candidate(s.arch, s.score, float(ms), s.arch.num_params(pred.dims))
                         .to_dict() for s, ms in zip(sols, latency)]
        atomic_write_text(folder / "front.json", json.dumps({**meta, "fronts": out}))
    _plot(folder / "pareto.png", cands, front, chosen, budgets)
    logging.getLogger(__name__).info("wrote %s", folder)


def load_chosen(run: RunDir | str | Path) -> dict[str, Candidate]:
    """What the search exported, by budget name (the model id under ``subnets/``), with
    its score, predicted and measured latency: ``search/chosen.json``, which this module
    alone writes. Empty when the run has not been searched."""
    return _read_chosen(RunDir.of(run).search)


def _read_chosen(folder: Path) -> dict[str, Candidate]:
    path = folder / "chosen.json"
    if not path.is_file():
        return {}
    try:
        return {k: Candidate.from_dict(c)
                for k, c in json.loads(path.read_text())["chosen"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):  # ConfigError, JSON too
        raise ConfigError("is corrupt; re-run `nasbert search`", source=str(path)) from None


def _load_store(folder: Path) -> tuple[dict[str, Candidate], dict]:
    """The stored candidates and the store's header (fingerprint, predictor and its
    held-out error). End-to-end losses of another definition than today's
    (:data:`END_TO_END`) are dropped, and with them what refinement found by them."""
    path = folder / "candidates.json"
    if not path.is_file():
        return {}, {}
    stored = json.loads(path.read_text())
    out = {c["arch"]: Candidate.from_dict(c) for c in stored.pop("candidates")}
    if stored.get("end_to_end") != END_TO_END:
        out = {a: dataclasses.replace(c, full_loss=None) for a, c in out.items()
               if c.origin is None}
    return out, stored


def query(run: RunDir | str | Path, budget: Budget, *, top_k: int = 10) -> Candidate:
    """The best candidate within ``budget`` from ``search/`` alone (no model is loaded,
    no torch imported). From the exact search's front, which holds every budget's ``k``
    best: of the ``top_k`` best by approximated score within the budget and what
    refinement evaluated, the best end to end where the search re-scored some of them,
    else the best score. Without a front (a sampling back end), from the candidates the
    search evaluated. Only models with attention somewhere are answered, as the search
    keeps only those (:func:`~nasbert.search.exact.attends`).

    A latency budget is judged as the search judged it: a candidate the search measured
    by its measurement, any other by its predicted latency plus the predictor's held-out
    error (the guard band), so that what query names for a budget measures within it
    as often as what the search exported (and, at a budget the search exported, is that
    model)."""
    run = RunDir.of(run)
    folder = run.search
    if not (folder / "candidates.json").is_file():
        raise ConfigError("holds no search results; run `nasbert search RUN_DIR --latency-ms "
                          "...` first", source=str(run))
    try:
        known, meta = _load_store(folder)
        front = _load_front(folder, "params" if budget.latency_ms is None else "latency_ms")
        guard = meta.get("error", {}).get("mape", 0.0) / 100
    except (ValueError, KeyError, TypeError, AttributeError):  # ConfigError, JSON, Unicode too
        raise ConfigError("is corrupt; re-run `nasbert search`", source=str(folder)) from None
    cands = list({**{str(c.arch): c for c in front}, **known}.values())
    if not cands:
        raise ConfigError("holds no candidates; re-run `nasbert search`", source=str(folder))
    judged = [(c, _as_judged(c, budget, guard)) for c in cands]
    usable = [(c, j) for c, j in judged  # what a classifier can use
              if any(attends(b) for b in c.arch.blocks)]
    feasible = [c for c, j in usable if budget.fits(j)]
    if not feasible:
        smallest = min((j for _, j in usable or judged), key=budget.violation)
        need = []
        if budget.latency_ms is not None:
            need.append(f"{smallest.latency_ms:.2f} ms" + (
                "" if smallest.measured_ms or not guard
                else f" (predicted, plus the predictor's held-out error of {guard:.1%})"))
        if budget.params_m is not None:
            need.append(f"{smallest.params / 1e6:.2f}M params")
        raise ConfigError(f"is impossible: the smallest model the search found needs "
                          f"{' and '.join(need)} ({smallest.arch}); raise the budget"
                          + (", or ask for a task's n-gram student (`nasbert ngram RUN_DIR "
                             "--task T`, then `nasbert query ... --task T`)"
                             if budget.latency_ms is not None else ""),
                          source=f"budget {budget.name}")
    top = sorted(feasible, key=lambda c: c.score)[:top_k]
    # and what refinement found: better end to end, though not by the block-wise score
    rescored = [c for c in top if c.full_loss is not None] + [
        c for c in feasible if c.origin is not None and c not in top]
    if rescored:
        return min(rescored, key=lambda c: c.full_loss)
    return top[0]


def _as_judged(c: Candidate, budget: Budget, guard: float) -> Candidate:
    """``c`` with the latency a budget judges it by: measured, else predicted plus the
    guard band (the search's rule, :func:`search`)."""
    if budget.latency_ms is None:
        return c
    return dataclasses.replace(c, latency_ms=c.measured_ms if c.measured_ms
                               else c.latency_ms * (1 + guard))


def _load_front(folder: Path, cost: str) -> list[Candidate]:
    path = folder / "front.json"
    if not path.is_file():
        return []
    return [Candidate.from_dict(c) for c in json.loads(path.read_text())["fronts"].get(cost, [])]
