"""The tasks' official metrics: scikit-learn's and SciPy's implementations, which are
what GLUE's own scorer (and ``evaluate``'s glue metric) call."""

from __future__ import annotations

from nasbert.data.tasks import TaskSpec


def compute_metrics(spec: TaskSpec, predictions, labels) -> dict[str, float]:
    """The task's official metrics, from predictions (class indices, or floats for
    regression) and gold labels."""
    import numpy as np

    pred, gold = np.asarray(predictions), np.asarray(labels)
    out: dict[str, float] = {}
    for name in spec.metrics:
        if name == "accuracy":
            from sklearn.metrics import accuracy_score
            out[name] = float(accuracy_score(gold, pred))
        elif name == "f1":
            from sklearn.metrics import f1_score
            out[name] = float(f1_score(gold, pred))
        elif name == "macro_f1":
            from sklearn.metrics import f1_score
            out[name] = float(f1_score(gold, pred, average="macro"))
        elif name == "matthews":
            from sklearn.metrics import matthews_corrcoef
            out[name] = float(matthews_corrcoef(gold, pred))
        elif name in ("pearson", "spearman"):
            from scipy.stats import pearsonr, spearmanr
            fn = pearsonr if name == "pearson" else spearmanr
            out[name] = float(fn(pred, gold)[0])
    return out
