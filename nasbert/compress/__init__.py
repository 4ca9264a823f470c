"""Other compression, each a typed step that takes a model and writes one:
:mod:`~nasbert.compress.importance` (Fisher and magnitude importance of heads and
neurons, and the permutation by it, which the supernet inherits through), and
:mod:`~nasbert.compress.offline` (``nasbert compress``: autoencoder and SVD factorisation,
:mod:`~nasbert.compress.lowrank`, and pruning, :mod:`~nasbert.compress.prune`, with no
training afterwards). int8, length-adaptive inference and n-gram students come with
their issues."""
