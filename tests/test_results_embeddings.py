"""The embeddings page (scripts/results_embeddings.py): rendered from records, each goal
judged met or missed from the figures."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from results_embeddings import goals, record_path, render  # noqa: E402


def _record(searched: float, uniform: float, int8: float) -> dict:
    def model(group, kind, sts, int8_sts, b64):
        return {"group": group, "kind": kind, "cosine_to_teacher": 0.9,
                "sts": {"extracted": sts - 20, "stage-one": sts - 5, "embeddings": sts,
                        "int8": int8_sts},
                "speed": {"float32 b1": 100.0, "int8 b1": 150.0, "float32 b64": b64,
                          "int8 b64": 2.5 * b64}}
    return {"run": "replication-seed0", "cpu": "Some CPU", "commit": "abc", "pairs": 5749,
            "pooling": {"mode": "mean", "normalize": True, "max_seq_length": 256},
            "config": {"steps": 500, "batch_size": 64, "texts": None, "min_tokens": 8,
                       "max_tokens": 64, "start": "stage-one", "mse_weight": 1.0,
                       "cosine_weight": 1.0, "contrastive_weight": 1.0, "temperature": 0.05,
                       "lr": 1e-4},
            "seconds": {"embedding distillation": 60.0},
            "teacher": {"sts": {"float32": 80.0, "int8": 79.5},
                        "speed": {"float32 b1": 50.0, "int8 b1": 80.0, "float32 b64": 400.0,
                                  "int8 b64": 900.0}},
            "static_config": {"steps": 2000, "lr": 0.01},
            "groups": {"2x": {"searched": "s2", "uniform": "u2"}},
            "models": {"s2": model("2x", "searched", searched, int8, 800.0),
                       "u2": model("2x", "uniform", uniform, uniform, 800.0),
                       "static": {**model("-", "static", 70.0, 70.0, 40_000.0),
                                  "speed": {"float32 b1": 6000.0, "int8 b1": 6000.0,
                                            "float32 b64": 40_000.0, "int8 b64": 40_000.0}}}}


def test_goals_are_judged_from_the_figures():
    met = goals(_record(searched=79.0, uniform=75.0, int8=78.5))
    assert "keeps 98.8 % of the teacher's Spearman (goal >= 98 %): met" in met[0]
    assert "+4.00 points (goal >= +3): met" in met[1]
    assert met[2] == ("- the static student keeps 87.5 % of the teacher's Spearman "
                      "(goal >= 85 %) at 120x its speed at batch 1 (goal >= 100x): met")
    assert "s2: int8 on PyTorch loses 0.50 points (goal <= 1) and runs 2.50x" in met[3]
    assert met[3].endswith("met")
    missed = goals(_record(searched=77.0, uniform=75.0, int8=75.0))
    assert missed[0].endswith("missed") and missed[1].endswith("missed")
    assert missed[3].endswith("missed")  # int8 lost 2 points


def test_the_page_holds_every_record_s_table_and_the_anchors():
    record = _record(79.0, 75.0, 78.5)
    page = render([record, {**record, "cpu": "Other CPU"}])
    assert page.count("| 2x | searched | 59.00 | 74.00 | **79.00** | 98.8 |") == 2
    assert "| 100 (2.0x) | 800 (2.0x) | 2.50x | - |" in page and "## Anchors" in page
    assert "| - | static (2000 steps, lr 0.01) | | | **70.00** | 87.5 | 70.00 | - |" in page
    assert record_path(record).name == "some-cpu-replication-seed0.json"
