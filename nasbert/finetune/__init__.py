"""Stage 4, downstream: settings (:mod:`~nasbert.finetune.config`), distillation losses
and ``Trainer`` (:mod:`~nasbert.finetune.distill`), the stage that fine-tunes a run's
models (:mod:`~nasbert.finetune.stage`), and sweeps on Ray Tune
(:mod:`~nasbert.finetune.sweep`)."""

from nasbert import _lazy

__getattr__, __dir__, __all__ = _lazy.attach(__name__, {
    "FinetuneConfig": "nasbert.finetune.config", "SweepConfig": "nasbert.finetune.config",
    "finetune": "nasbert.finetune.stage", "finetune_teacher": "nasbert.finetune.stage",
    "finetune_student": "nasbert.finetune.stage", "sweep": "nasbert.finetune.sweep",
})
