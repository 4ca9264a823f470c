"""Other compression, each a typed step that takes a model and writes one:
:mod:`~nasbert.compress.offline` (``nasbert compress``: autoencoder and SVD factorisation,
:mod:`~nasbert.compress.lowrank`, and pruning by :mod:`~nasbert.importance`,
:mod:`~nasbert.compress.prune`, with no training afterwards); and for deployment
:mod:`~nasbert.compress.qat` (quantisation-aware fine-tuning for the int8 that
:mod:`~nasbert.quantize` applies), :mod:`~nasbert.compress.length` (length-adaptive
inference: LengthDrop and the search over length configurations) and
:mod:`~nasbert.compress.deploy` (the measured family of a task and the joint choice under
a budget); and far below any transformer, :mod:`~nasbert.compress.ngram` (sparse n-gram
students) distilled by :mod:`~nasbert.compress.ngram_distill` (``nasbert ngram``).

Importance scoring (:mod:`nasbert.importance`) and int8 quantisation
(:mod:`nasbert.quantize`) are not steps but the model's own tools: the supernet inherits
the teacher through the one, and the model, the latency protocol and export load or
time int8 through the other, so they sit beside :mod:`nasbert.model`, below every stage.
"""
