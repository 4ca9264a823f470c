"""Stage 3, search: the performance approximator (:mod:`~nasbert.search.approx`), the
search back ends (:mod:`~nasbert.search.searchers`), the stage that searches a run and
answers queries (:mod:`~nasbert.search.stage`), and the hand-designed baselines it is
compared with (:mod:`~nasbert.search.baselines`)."""

from nasbert import _lazy

__getattr__, __dir__, __all__ = _lazy.attach(__name__, {
    "Approximator": "nasbert.search.approx",
    "Budget": "nasbert.search.searchers", "Candidate": "nasbert.search.searchers",
    "Evaluator": "nasbert.search.searchers", "Searcher": "nasbert.search.searchers",
    "OptunaSearcher": "nasbert.search.searchers", "RayTuneSearcher": "nasbert.search.searchers",
    "search": "nasbert.search.stage", "query": "nasbert.search.stage",
    "pareto": "nasbert.search.stage",
    "build_baselines": "nasbert.search.baselines", "uniform_archs": "nasbert.search.baselines",
})
