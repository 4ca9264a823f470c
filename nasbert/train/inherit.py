"""How the supernet inherits the teacher: importance scored once per run (on the run's
own corpus), the teacher's heads and neurons permuted by it, then copied into every path
that can hold them (:meth:`~nasbert.supernet.Supernet.init_from_teacher`)."""

from __future__ import annotations

import copy

import torch

from nasbert.compress.importance import Importance, permute, score
from nasbert.recipe import Recipe
from nasbert.run import RunDir
from nasbert.supernet import Supernet
from nasbert.teacher import Teacher


def _key(recipe: Recipe, corpus_key: str | None) -> dict:
    return {"criterion": recipe.train.init, "sequences": recipe.train.init_sequences,
            "seed": recipe.train.seed, "corpus": corpus_key}


def teacher_importance(recipe: Recipe, run: RunDir, teacher: Teacher, *,
                       progress: bool = False) -> Importance | None:
    """The teacher's importance for the recipe's ``train.init`` (None for ``prefix`` and
    ``random``), from the run's file when it was scored the same way, else scored on the
    first ``train.init_sequences`` training sequences and written there."""
    if recipe.train.init not in ("fisher", "magnitude"):
        return None
    corpus = run.corpus()
    key = _key(recipe, corpus.info.get("key"))
    if run.importance.is_file():
        found = Importance.load(run.importance)
        if found.info.get("key") == key:
            return found
    ids = corpus.train[: recipe.train.init_sequences]
    if progress:
        print(f"scoring the teacher's heads and neurons ({recipe.train.init}, "
              f"{len(ids)} sequences)")
    # packed sequences: no padding
    batches = [(ids[i:i + 16], torch.ones_like(ids[i:i + 16])) for i in range(0, len(ids), 16)]
    importance = score(teacher.model, batches, criterion=recipe.train.init,
                       seed=recipe.train.seed)
    importance.info["key"] = key
    importance.save(run.importance)
    return importance


def inherit(supernet: Supernet, teacher: Teacher, importance: Importance | None) -> list[str]:
    """Initialise ``supernet`` from the teacher, permuted by ``importance`` when given
    (the teacher itself is left as it is). Returns what was set."""
    model = teacher.model
    if importance is not None:
        model = permute(copy.deepcopy(model), importance)
    return supernet.init_from_teacher(model, teacher.boundaries)
