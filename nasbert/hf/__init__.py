"""Helpers around transformers: BERT weight maps (:mod:`nasbert.hf.bert`) and quiet
logging (:mod:`nasbert.hf.quiet`)."""
