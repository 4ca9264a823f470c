"""Other compression, each a typed step that takes a model and writes one:
:mod:`~nasbert.compress.importance` (Fisher and magnitude importance of heads and
neurons, and the permutation by it, which the supernet inherits through), and
:mod:`~nasbert.compress.offline` (``nasbert compress``: autoencoder and SVD factorisation,
:mod:`~nasbert.compress.lowrank`, and pruning, :mod:`~nasbert.compress.prune`, with no
training afterwards); and for deployment :mod:`~nasbert.compress.quantize` (int8),
:mod:`~nasbert.compress.length` (length-adaptive inference: LengthDrop and the search
over length configurations) and :mod:`~nasbert.compress.deploy` (the measured family of
a task and the joint choice under a budget); and far below any transformer,
:mod:`~nasbert.compress.ngram` (sparse n-gram students) distilled by
:mod:`~nasbert.compress.ngram_distill` (``nasbert ngram``)."""
