"""Data: unlabelled corpora (:mod:`~nasbert.data.corpus`), labelled tasks
(:mod:`~nasbert.data.tasks`) and their metrics (:mod:`~nasbert.data.metrics`)."""
