"""Task families: what differs between kinds of downstream task, one module per family,
behind one seam (:class:`Family`) that the fine-tuning stage, its sweeps and the results
scripts use alike:

- :mod:`~nasbert.families.sentence`: a label per sentence or sentence pair
  (classification, regression; GLUE, tweets), as cross- or bi-encoders
  (:mod:`~nasbert.families.pairs`);
- :mod:`~nasbert.families.qa`: extractive question answering (SQuAD v1.1);
- :mod:`~nasbert.families.ner`: token classification (CoNLL-2003's named entities).

A family reads its data, makes the model with its head, encodes training examples (with
the teacher's outputs beside them for distillation), batches them, gives the teacher's
outputs to cache, the distillation loss, and its metrics on the dev splits (its own
post-processing included). Adding a family is adding one module and its tests.

>>> family = family_of("squad")                                      # doctest: +SKIP
>>> data = family.load("squad", "../shared/data/squad")               # doctest: +SKIP
"""

from __future__ import annotations

from nasbert.families.base import FAMILY_TASKS, IGNORE, SPECS, Family, FamilySpec, subset

__all__ = ["FAMILY_TASKS", "IGNORE", "SPECS", "Family", "FamilySpec", "family_of", "spec_of",
           "subset"]


def spec_of(task: str):
    """A task's spec, whatever its family (:class:`FamilySpec`, or
    :class:`~nasbert.data.tasks.TaskSpec` for a sentence-level one)."""
    from nasbert.data.tasks import task_spec

    key = task.lower().replace("_", "-")
    return SPECS[key] if key in SPECS else task_spec(task)


def family_of(task: str) -> Family:
    """The family a task belongs to (``squad``, ``conll2003``; anything else is a
    sentence-level task, checked when loaded)."""
    kind = FAMILY_TASKS.get(task.lower().replace("_", "-"))
    if kind == "qa":
        from nasbert.families.qa import FAMILY
    elif kind == "ner":
        from nasbert.families.ner import FAMILY
    else:
        from nasbert.families.sentence import FAMILY
    return FAMILY
