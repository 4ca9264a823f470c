"""Latency predictors: the paper's lookup table and a learned regressor, behind one base.

* :class:`TablePredictor` is the paper's lookup table: each operation at each hidden
  size, each embedding size and each projection, measured alone; a model's latency is
  their sum, calibrated by a line fitted on measured subnets.
* :class:`LearnedPredictor` fits measured subnets from ``arch.features()`` (by name):
  scikit-learn's ridge regression or MLP on log latency, whichever has the lower
  validation error.

Every predictor is stored with the device fingerprint it was measured on and its
held-out error (MAPE, RMSE, Kendall's tau on a seeded split), and refuses to answer for
another fingerprint unless told to.
"""

from __future__ import annotations

import abc
import base64
import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasbert.costs import AdditiveCost
from nasbert.errors import ConfigError
from nasbert.io import atomic_write_text
from nasbert.latency.measure import DTYPES, Protocol, fingerprint, prepare, time_ms
from nasbert.ops import Embeddings, make_masks, make_op
from nasbert.space import Arch, BlockArch, Dims, SearchSpace, transition_exists


def errors(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """MAPE (%), RMSE (ms) and Kendall's tau of predictions against measurements."""
    from scipy.stats import kendalltau

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    tau = kendalltau(p, m).statistic if len(p) > 1 else float("nan")
    return {"mape": float(np.mean(np.abs(p - m) / m) * 100),
            "rmse": float(np.sqrt(np.mean((p - m) ** 2))), "tau": float(tau), "n": len(p)}


def split(n: int, seed: int, test: float = 0.25) -> tuple[list[int], list[int]]:
    """A seeded train/test split of ``n`` indices (scikit-learn's)."""
    from sklearn.model_selection import train_test_split

    train, held_out = train_test_split(list(range(n)), test_size=max(1, round(n * test)),
                                       random_state=seed)
    return train, held_out


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
            dims = Dims.from_dict(data["dims"])
            return cls._from_state(dims, data["fingerprint"], data["error"], data["state"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError,
                pickle.UnpicklingError) as e:
            raise ConfigError(f"is missing or corrupt ({type(e).__name__}); run `nasbert latency "
                              "fit RUN_DIR` to write it", source=str(path)) from None


def _table_keys(space: SearchSpace) -> list[tuple]:
    """Every entry the table of ``space`` needs."""
    d = space.dims.hidden_size
    keys: list[tuple] = [("embed", e) for e in space.embed_sizes] + [("head", d)]
    keys += [("op", op, h) for b in space.blocks for h in b.hidden_sizes
             for op in space.ops_at(h)]
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
                module = prepare(nn.Sequential(nn.Linear(key[1], key[1]), nn.Tanh(),
                                               nn.Linear(key[1], 2)), p)
                x = torch.randn(p.batch, key[1], generator=g).to(device, dtype)
                fn = lambda m=module, x=x: m(x)  # noqa: E731
            elif key[0] == "embed":
                module = Embeddings(dims.vocab_size, dims.max_position_embeddings,
                                    dims.type_vocab_size, key[1])
                ids = torch.randint(0, dims.vocab_size, (p.batch, p.seq), generator=g)
                module, ids = prepare(module, p), ids.to(device)
                fn = lambda m=module, i=ids: m(i)  # noqa: E731
            else:
                width = key[2] if key[0] == "op" else key[1]
                module = (make_op(key[1], key[2], dims) if key[0] == "op"
                          else nn.Linear(key[1], key[2]))
                x = torch.randn(p.batch, p.seq, width, generator=g)
                module, x = prepare(module, p), x.to(device, dtype)
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

    def additive(self) -> AdditiveCost:
        """This table as a cost that adds up along an architecture's chain (what the
        exact search solves with); equal to :meth:`predict` on every architecture."""
        t = self.table

        def entry(*key) -> float:
            try:
                return t[_key(key)]
            except KeyError as e:
                raise ConfigError(f"has no entry {e.args[0]}; re-run `nasbert latency profile` "
                                  "for this space", source="latency table") from None

        return AdditiveCost("latency_ms", lambda e: entry("embed", e),
                            lambda p: sum(entry("op", op, p.hidden) for op in p.layers),
                            lambda a, b: entry("proj", a, b),
                            lambda x, a=self.scale, b=self.offset: a * x + b)

    def calibrate(self, archs: Sequence[Arch], measured: Sequence[float]) -> None:
        """``a * sum + b`` by least squares on the relative error (residuals weighted by
        ``1 / measured``): budgets are ratios, and unweighted residuals let the large
        models set an intercept that dwarfs the small ones."""
        raw, y = self.raw(archs), np.asarray(measured, float)
        a, b = np.polyfit(raw, y, 1, w=1 / y)
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
    """Ridge regression or an MLP (scikit-learn) on named architecture features, standardised,
    fitted to log latency."""

    kind = "learned"

    def __init__(self, dims: Dims, fp: dict, model: Any, features: list[str], *, seq: int,
                 table: TablePredictor | None = None, error: dict | None = None):
        super().__init__(dims, fp, error)
        self.model, self.features, self.seq, self.table = model, features, seq, table

    @property
    def estimator(self) -> str:
        return type(self.model.regressor_[-1]).__name__

    def _matrix(self, archs: Sequence[Arch], names: list[str] | None
                ) -> tuple[np.ndarray, list[str]]:
        rows = [a.features(self.dims, self.seq) for a in archs]
        if self.table is not None:  # the table's sum is one more named feature
            for r, ms in zip(rows, self.table.raw(archs)):
                r["table_ms"] = float(ms)
        names = names or sorted(rows[0])
        return np.array([[r[n] for n in names] for r in rows], float), names

    @staticmethod
    def _candidates(seed: int) -> dict[str, Any]:
        from sklearn.compose import TransformedTargetRegressor
        from sklearn.linear_model import Ridge
        from sklearn.neural_network import MLPRegressor
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        regressors = {"ridge": Ridge(alpha=1e-2),
                      "mlp": MLPRegressor(hidden_layer_sizes=(32, 32), activation="tanh",
                                          solver="lbfgs", alpha=1e-4, max_iter=3000,
                                          random_state=seed)}
        return {name: TransformedTargetRegressor(make_pipeline(StandardScaler(), r),
                                                 func=np.log, inverse_func=np.exp)
                for name, r in regressors.items()}

    @classmethod
    def fit(cls, archs: Sequence[Arch], measured: Sequence[float], dims: Dims, fp: dict, *,
            seq: int, table: TablePredictor | None = None, seed: int = 0) -> LearnedPredictor:
        """Fit both regressors on part of ``archs``, keep the one with the lower MAPE on
        the rest, and refit it on all of them."""
        probe = cls(dims, fp, None, [], seq=seq, table=table)
        x, names = probe._matrix(archs, None)
        y = np.asarray(measured, float)
        fit_idx, val_idx = split(len(archs), seed + 1, test=0.2)
        scores = {}
        for name, model in cls._candidates(seed).items():
            model.fit(x[fit_idx], y[fit_idx])
            scores[name] = errors(model.predict(x[val_idx]), y[val_idx])["mape"]
        model = cls._candidates(seed)[min(scores, key=scores.get)].fit(x, y)
        return cls(dims, fp, model, names, seq=seq, table=table)

    def _predict(self, archs: Sequence[Arch]) -> np.ndarray:
        x, _ = self._matrix(archs, self.features)
        return self.model.predict(x)

    def _state(self) -> dict:
        import sklearn

        # the fitted scikit-learn estimator, pickled (its own persistence format) inside
        # the JSON that records the fingerprint and error beside it
        return {"estimator": self.estimator, "sklearn": sklearn.__version__,
                "model": base64.b64encode(pickle.dumps(self.model)).decode("ascii"),
                "features": self.features, "seq": self.seq,
                "table": self.table.table if self.table is not None else None}

    @classmethod
    def _from_state(cls, dims, fp, error, state) -> LearnedPredictor:
        table = TablePredictor(dims, fp, state["table"]) if state.get("table") else None
        model = pickle.loads(base64.b64decode(state["model"]))
        return cls(dims, fp, model, state["features"], seq=state["seq"], table=table,
                   error=error)
