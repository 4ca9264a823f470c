"""Stage 2, latency: the measurement protocol (:mod:`~nasbert.latency.measure`), the
lookup table and learned predictor (:mod:`~nasbert.latency.predictors`), and the stage
that profiles and fits them for a run (:mod:`~nasbert.latency.stage`)."""

from nasbert import _lazy

__getattr__, __dir__, __all__ = _lazy.attach(__name__, {
    "Protocol": "nasbert.latency.protocol", "measure": "nasbert.latency.measure",
    "measure_clean": "nasbert.latency.measure", "fingerprint": "nasbert.latency.measure",
    "LatencyPredictor": "nasbert.latency.predictors",
    "TablePredictor": "nasbert.latency.predictors",
    "LearnedPredictor": "nasbert.latency.predictors",
    "profile": "nasbert.latency.stage", "fit": "nasbert.latency.stage",
    "load_predictor": "nasbert.latency.stage", "teacher_ms": "nasbert.latency.stage",
})
