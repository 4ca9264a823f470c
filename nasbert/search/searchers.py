"""The search back ends: a candidate per trial, scored by the approximator and costed by
the latency predictor, under a budget.

* :class:`ExactSearcher` (the default): the exact ``k`` best under the budget, by dynamic
  programming (:mod:`~nasbert.search.exact`), when the cost adds up over blocks (the
  latency lookup table, the parameter count);
* :class:`OptunaSearcher`: multi-objective NSGA-II (score vs latency or parameters) with
  the budget as a constraint; the study lives in SQLite in the run folder, so a
  stopped search resumes and optuna-dashboard opens it;
* :class:`RayTuneSearcher`: the same objective through Ray Tune's ``OptunaSearch``, for
  evaluations spread over workers or a cluster.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from nasbert.costs import AdditiveCost, params_cost
from nasbert.distributed import ray_session
from nasbert.errors import ConfigError
from nasbert.search.exact import Solution, pareto, solve
from nasbert.space import Arch, BlockArch, Dims


@dataclasses.dataclass(frozen=True)
class Budget:
    """A latency budget (ms, on the predictor's device) and/or a parameter budget (M)."""

    latency_ms: float | None = None
    params_m: float | None = None

    def __post_init__(self) -> None:
        if self.latency_ms is None and self.params_m is None:
            raise ConfigError("give a latency (--latency-ms) or a parameter budget "
                              "(--params-m)", source="budget")
        for name, value in (("latency_ms", self.latency_ms), ("params_m", self.params_m)):
            if value is not None and not value > 0:
                raise ConfigError(f"{value} is not positive; give a budget above 0",
                                  source="budget", field=name)

    @property
    def name(self) -> str:
        parts = []
        if self.latency_ms is not None:
            parts.append(f"latency-{self.latency_ms:g}ms")
        if self.params_m is not None:
            parts.append(f"params-{self.params_m:g}M")
        return "_".join(parts)

    def violation(self, c: Candidate) -> float:
        """How far over budget (relative); <= 0 is within it."""
        worst = -1.0
        if self.latency_ms is not None:
            worst = max(worst, c.latency_ms / self.latency_ms - 1)
        if self.params_m is not None:
            worst = max(worst, c.params / 1e6 / self.params_m - 1)
        return worst

    def fits(self, c: Candidate) -> bool:
        return self.violation(c) <= 0


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One evaluated architecture (stored in ``search/*.json`` by :meth:`to_dict`)."""

    arch: Arch
    score: float  # approximated: sum of block dev losses
    latency_ms: float  # predicted
    params: int
    full_loss: float | None = None  # end to end, whole dev split (top candidates only)
    measured_ms: float | None = None  # measured afresh (chosen candidates only)
    # where a re-scored candidate came from: None (the block-wise best), "hand-designed"
    # or "refined" (nasbert.search.refine)
    origin: str | None = None

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "arch": str(self.arch)}

    @classmethod
    def from_dict(cls, data: dict) -> Candidate:
        """Typed as stored; a value of the wrong type raises ``TypeError`` or
        ``ValueError`` here rather than later, where it is used."""
        def optional(key: str) -> float | None:
            return None if data.get(key) is None else float(data[key])

        return cls(**{**data, "arch": Arch.parse(data["arch"]),
                      "score": float(data["score"]), "latency_ms": float(data["latency_ms"]),
                      "params": int(data["params"]), "full_loss": optional("full_loss"),
                      "measured_ms": optional("measured_ms")})


@dataclasses.dataclass
class Evaluator:
    """Plain, picklable: block loss tables, embedding losses, a latency predictor."""

    dims: Dims
    tables: list[dict[BlockArch, float]]
    embed_losses: dict[int, float]
    predict_ms: Callable[[list[Arch]], Sequence[float]]

    def __call__(self, arch: Arch) -> Candidate:
        score = self.embed_losses[arch.embed] + sum(
            t[b] for t, b in zip(self.tables, arch.blocks))
        return Candidate(arch, float(score), float(self.predict_ms([arch])[0]),
                         arch.num_params(self.dims))


class Searcher(abc.ABC):
    """Contract: :meth:`run` evaluates up to ``trials`` candidates built from ``embeds``
    and ``choices`` (the paths each block may take) and returns every candidate its
    store holds for ``budget`` (a resumed search's earlier ones included), each evaluated
    by ``evaluate``. Back ends that store parameters as strings (Optuna, Ray Tune) parse
    them back with :meth:`BlockArch.parse`."""

    @abc.abstractmethod
    def run(self, evaluate: Evaluator, embeds: Sequence[int],
            choices: Sequence[Sequence[BlockArch]], budget: Budget, trials: int, *,
            seed: int = 0) -> list[Candidate]: ...

    @staticmethod
    def _arch(params: dict, blocks: int) -> Arch:
        """An architecture from a back end's parameters (``embed``, ``block<i>``)."""
        return Arch(int(params["embed"]),
                    tuple(BlockArch.parse(params[f"block{i}"]) for i in range(blocks)))


class ExactSearcher(Searcher):
    """The ``k`` best architectures under the budget, exactly (``trials`` is ignored).
    ``latency``: the lookup table as an additive cost
    (:meth:`~nasbert.latency.predictors.TablePredictor.additive`); parameter budgets use
    the exact parameter count. A budget on both is solved on latency and filtered by
    parameters. :attr:`fronts` keeps each cost's k-level front, for every budget at once."""

    def __init__(self, latency: AdditiveCost | None, *, k: int = 10):
        self.latency, self.k = latency, k
        self.fronts: dict[str, list[Solution]] = {}
        self.seconds = 0.0

    def front(self, evaluate: Evaluator, embeds, choices, cost: AdditiveCost) -> list[Solution]:
        if cost.name not in self.fronts:
            t = time.perf_counter()
            self.fronts[cost.name] = solve(embeds, choices, evaluate.embed_losses,
                                           evaluate.tables, cost, evaluate.dims, k=self.k)
            self.seconds += time.perf_counter() - t
        return self.fronts[cost.name]

    def run(self, evaluate, embeds, choices, budget, trials, *, seed=0) -> list[Candidate]:
        if budget.latency_ms is not None:
            if self.latency is None:
                raise ConfigError("the exact search needs the latency lookup table; run "
                                  "`nasbert latency profile` and `fit`", source="search")
            cost, limit = self.latency, budget.latency_ms
        else:
            cost, limit = params_cost(evaluate.dims), budget.params_m * 1e6
        front = self.front(evaluate, embeds, choices, cost)
        found = [s for s in front if s.cost <= limit]
        if budget.params_m is not None and budget.latency_ms is not None:
            found = [s for s in found if s.arch.num_params(evaluate.dims) <= budget.params_m * 1e6]
        best = sorted(found, key=lambda s: (s.score, s.cost))[:self.k]
        out = {}
        # the chosen few, and the whole front (for the plot)
        for s in [*best, *pareto(front, lambda s: s.cost)]:
            c = evaluate(s.arch)
            # the solver's sums are the predictor's own figures: a check, not a hope
            assert abs(c.score - s.score) < 1e-6 * max(1.0, abs(s.score)), (c, s)
            out[str(s.arch)] = c
        return list(out.values())


class OptunaSearcher(Searcher):
    def __init__(self, storage: Path):
        self.storage = Path(storage)

    def _study(self, budget: Budget, seed: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.NSGAIISampler(seed=seed)
        self.storage.parent.mkdir(parents=True, exist_ok=True)
        try:
            return optuna.create_study(
                study_name=budget.name, storage=f"sqlite:///{self.storage}",
                directions=["minimize", "minimize"], sampler=sampler, load_if_exists=True)
        except Exception as e:  # noqa: BLE001 - sqlalchemy/optuna raise many kinds
            raise ConfigError(f"is not a readable Optuna study ({type(e).__name__}); move it "
                              "away to start the search afresh", source=str(self.storage)) from None

    def run(self, evaluate, embeds, choices, budget, trials, *, seed=0) -> list[Candidate]:
        import optuna

        study = self._study(budget, seed)
        cost_is_latency = budget.latency_ms is not None

        def objective(trial: optuna.Trial):
            params = {"embed": trial.suggest_categorical("embed", list(embeds)),
                      **{f"block{i}": trial.suggest_categorical(f"block{i}", [str(p) for p in c])
                         for i, c in enumerate(choices)}}
            c = evaluate(self._arch(params, len(choices)))
            for k, v in c.to_dict().items():
                trial.set_user_attr(k, v)
            trial.set_constraint("budget", budget.violation(c))  # <= 0: within it
            return c.score, (c.latency_ms if cost_is_latency else c.params / 1e6)

        done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        if trials > done:
            study.optimize(objective, n_trials=trials - done)
        return [Candidate.from_dict({k: t.user_attrs[k] for k in ("arch", "score", "latency_ms",
                                                                   "params")})
                for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


class RayTuneSearcher(Searcher):
    """The same objective on Ray Tune, sampled by ``OptunaSearch``; infeasible
    candidates are reported with a penalised score."""

    def __init__(self, storage: Path, *, address: str | None = None, num_cpus: int = 2):
        self.storage, self.address, self.num_cpus = Path(storage), address, num_cpus

    def run(self, evaluate, embeds, choices, budget, trials, *, seed=0) -> list[Candidate]:
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch

        def trainable(config: dict) -> dict:
            c = evaluate(self._arch(config, len(choices)))
            penalty = max(0.0, budget.violation(c)) * 1e3
            return {**c.to_dict(), "objective": c.score + penalty}

        space = {"embed": tune.choice(list(embeds)),
                 **{f"block{i}": tune.choice([str(p) for p in c]) for i, c in enumerate(choices)}}
        cost = "latency_ms" if budget.latency_ms is not None else "params"
        with ray_session(self.storage, num_cpus=self.num_cpus, address=self.address,
                         log_to_driver=False):
            tuner = tune.Tuner(
                trainable, param_space=space,
                tune_config=tune.TuneConfig(
                    search_alg=OptunaSearch(metric=["objective", cost], mode=["min", "min"],
                                            seed=seed),
                    num_samples=trials),
                run_config=tune.RunConfig(name=budget.name, verbose=0,
                                          storage_path=str(self.storage.resolve())))
            grid = tuner.fit()
        return [Candidate.from_dict({k: r.metrics[k] for k in
                                     ("arch", "score", "latency_ms", "params")})
                for r in grid if r.metrics and "arch" in r.metrics]
