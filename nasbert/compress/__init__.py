"""Other compression, each a typed step that takes a model folder and writes one: int8
and length-adaptive inference, importance pruning and offline (autoencoder / SVD)
compression, n-gram students. Empty until their issues land."""
