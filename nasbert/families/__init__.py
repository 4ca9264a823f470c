"""Task families: what differs between kinds of downstream task (reading the data,
features, post-processing, the metric), one module per family. Sentence-level
classification and regression live in :mod:`nasbert.data.tasks` and
:mod:`nasbert.finetune`; :mod:`nasbert.families.qa` is extractive question answering
(SQuAD v1.1)."""
