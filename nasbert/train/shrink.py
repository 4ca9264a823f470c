"""Progressive search-space shrinking (NAS-BERT, section 3.2.2).

Each block's paths are binned into ``B`` bins by size (parameters, or predicted latency
once the run has a latency table): bin ``b`` holds the paths whose size lies in
``((b-1)/B, b/B] x`` the largest path's (the paper's equal-width bins), or, with
``spacing: log``, between ``r^(b-1)`` and ``r^b`` times the smallest path's, for ``r``
the ``B``-th root of the size range (equal-ratio bins: with few bins the first,
equal-width bin spans a decade of sizes and shrinking keeps only its largest paths,
so no small budget finds a candidate). After ``W`` warm-up epochs, at the end of each
epoch, every bin that still holds more than ``m`` paths samples ``E`` of them, scores
each on a few dev batches (the block's distillation loss) and drops the worst half of
those sampled, never going below ``m``. The survivors and their losses are what the
performance approximator reads.

The shrinker is plain state plus a scoring callback; the training loop calls
:meth:`Shrinker.round` at epoch ends and :meth:`Shrinker.finish` when training stops.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nasbert.io import atomic_write_text
from nasbert.recipe import ShrinkConfig
from nasbert.space import BlockArch, SearchSpace

# score(block index, paths) -> dev loss of each path
Scorer = Callable[[int, Sequence[BlockArch]], Sequence[float]]
# size(block index, path) -> the quantity bins are made of
SizeFn = Callable[[int, BlockArch], float]


@dataclass
class BlockBins:
    """The surviving paths of one block, bin by bin, with the last loss of each."""

    edges: list[float]  # upper edge of each bin
    bins: list[list[BlockArch]]
    losses: dict[BlockArch, float] = field(default_factory=dict)

    def paths(self) -> list[BlockArch]:
        return [p for b in self.bins for p in b]


class Shrinker:
    def __init__(self, space: SearchSpace, config: ShrinkConfig, size: SizeFn, *, seed: int = 0,
                 size_name: str = "params"):
        self.space, self.config, self.size, self.size_name = space, config, size, size_name
        self.rng = random.Random(seed)
        self.blocks: list[BlockBins] = []
        self.rounds = 0
        self.history: list[dict] = []
        for i in range(len(space.blocks)):
            paths = list(space.block_paths(i))
            if config.candidates is not None and config.candidates < len(paths):
                # a sample, always with the largest and smallest paths and the teacher's
                # shape (which starts from the teacher's weights) when the space has it
                anchors = [p for p in (space.max_arch().blocks[i], space.min_arch().blocks[i],
                                       space.teacher_block(i)) if p is not None]
                rest = [p for p in paths if p not in anchors]
                k = max(0, config.candidates - len(set(anchors)))
                paths = list(dict.fromkeys(anchors)) + random.Random(seed * 1000 + i).sample(
                    rest, k)
            self.blocks.append(self._bin(i, paths))

    def _bin(self, index: int, paths: list[BlockArch]) -> BlockBins:
        sizes = {p: self.size(index, p) for p in paths}
        top = max(sizes.values())
        n = self.config.bins
        positive = [v for v in sizes.values() if v > 0]
        lo = min(positive) if positive else top
        if self.config.spacing == "log" and 0 < lo < top:
            # bins of equal ratio from the smallest path to the largest: small paths get
            # bins of their own instead of losing to the best of a wide first bin
            def position(v: float) -> float:
                return math.log(max(v, lo) / lo) / math.log(top / lo)
            edges = [lo * (top / lo) ** ((b + 1) / n) for b in range(n)]
        else:
            def position(v: float) -> float:
                return v / top
            edges = [top * (b + 1) / n for b in range(n)]
        bins: list[list[BlockArch]] = [[] for _ in range(n)]
        for p in paths:
            b = min(n - 1, max(0, math.ceil(position(sizes[p]) * n - 1e-9) - 1))
            bins[b].append(p)
        return BlockBins(edges, bins)

    # -- the schedule --------------------------------------------------------------------

    def paths(self, index: int) -> list[BlockArch]:
        """The surviving paths of block ``index`` (what training samples from)."""
        return self.blocks[index].paths()

    @property
    def done(self) -> bool:
        m = self.config.keep_per_bin
        return all(len(b) <= m for block in self.blocks for b in block.bins)

    def due(self, epoch: int) -> bool:
        """Whether shrinking runs at the end of ``epoch`` (counted from 1): every epoch
        after the ``W`` warm-up epochs."""
        return self.config.enabled and epoch > self.config.warmup_epochs and not self.done

    def round(self, score: Scorer) -> dict:
        """One shrinking round over every block and bin; returns what it did."""
        m, e = self.config.keep_per_bin, self.config.sample_per_bin
        record = {"round": self.rounds + 1, "blocks": []}
        for i, block in enumerate(self.blocks):
            chosen: list[tuple[int, list[BlockArch]]] = []
            for b, paths in enumerate(block.bins):
                if len(paths) > m:
                    chosen.append((b, self.rng.sample(paths, min(e, len(paths)))))
            flat = [p for _, sample in chosen for p in sample]
            losses = dict(zip(flat, score(i, flat))) if flat else {}
            block.losses.update(losses)
            dropped = 0
            for b, sample in chosen:
                ranked = sorted(sample, key=lambda p: (losses[p], str(p)))
                drop = min(len(sample) // 2, len(block.bins[b]) - m)
                worst = set(ranked[len(ranked) - drop:]) if drop > 0 else set()
                block.bins[b] = [p for p in block.bins[b] if p not in worst]
                dropped += len(worst)
            record["blocks"].append({"block": i, "scored": len(flat), "dropped": dropped,
                                     "left": len(block.paths())})
        self.rounds += 1
        self.history.append(record)
        return record

    def finish(self, score: Scorer) -> None:
        """Shrink until every bin holds at most ``m`` paths, then re-score the survivors
        (their losses are then all from the final weights)."""
        while not self.done:
            self.round(score)
        for i, block in enumerate(self.blocks):
            paths = block.paths()
            block.losses = dict(zip(paths, score(i, paths)))

    # -- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "rounds": self.rounds, "history": self.history, "rng": self.rng.getstate(),
            "blocks": [{"edges": b.edges, "bins": [[str(p) for p in bin_] for bin_ in b.bins],
                        "losses": {str(p): v for p, v in b.losses.items()}}
                       for b in self.blocks],
        }

    def load_state_dict(self, state: dict) -> None:
        self.rounds, self.history = state["rounds"], state["history"]
        rng = state["rng"]
        self.rng.setstate((rng[0], tuple(rng[1]), rng[2]))
        self.blocks = [
            BlockBins(b["edges"], [[BlockArch.parse(s) for s in bin_] for bin_ in b["bins"]],
                      {BlockArch.parse(s): v for s, v in b["losses"].items()})
            for b in state["blocks"]
        ]

    def write(self, folder: Path, **info: object) -> None:
        """``shrink/block<i>.json`` per block and ``shrink/summary.json``: the surviving
        paths per bin with their size and dev loss, and the shrinking history (read back
        by :meth:`nasbert.run.RunDir.survivors`)."""
        folder.mkdir(parents=True, exist_ok=True)
        for i, block in enumerate(self.blocks):
            lo = 0.0
            bins = []
            for edge, paths in zip(block.edges, block.bins):
                bins.append({"range": [lo, edge], "paths": [
                    {"path": str(p), "size": self.size(i, p),
                     "params": p.num_params(self.space.dims), "loss": block.losses.get(p)}
                    for p in sorted(paths, key=lambda p: (block.losses.get(p, math.inf), str(p)))
                ]})
                lo = edge
            atomic_write_text(folder / f"block{i}.json", json.dumps(
                {"block": i, "binned_by": self.size_name, "bins": bins}, indent=1))
        summary = {"config": self.config.__dict__, "binned_by": self.size_name,
                   "rounds": self.rounds, "done": self.done, "history": self.history,
                   "paths_left": [len(b.paths()) for b in self.blocks], **info}
        atomic_write_text(folder / "summary.json", json.dumps(summary, indent=1, default=str))
