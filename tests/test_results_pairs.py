"""results/pairs.md from its records: means over folds, shares of the teacher, the goals."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from results_pairs import goals, record_path, render, summary  # noqa: E402


def _record() -> dict:
    groups = {"2x": {"searched": "s2", "uniform": "u2"}, "8x": {"searched": "s8", "uniform": "u8"}}
    folds = {"cross": [{"teacher": 85.0, "s2": 80.0, "u2": 78.0, "s8": 60.0, "u8": 70.0},
                       {"teacher": 87.0, "s2": 82.0, "u2": 80.0, "s8": 62.0, "u8": 72.0}],
             "bi": [{"teacher": 84.0, "s2": 81.0, "u2": 79.0, "s8": 79.0, "u8": 77.0},
                    {"teacher": 86.0, "s2": 83.0, "u2": 81.0, "s8": 81.0, "u8": 79.0}]}
    results = {"stsb": {f: {f"fold {i + 1}": p for i, p in enumerate(v)}
                        for f, v in folds.items()},
               "mrpc": {"cross": {"dev": {"teacher": 88.0, "s2": 85.0, "u2": 81.0, "s8": 80.0,
                                          "u8": 83.0}}}}
    return {"run": "replication-seed1", "cpu": "Some CPU (AVX2)", "groups": groups,
            "results": results, "commit": "abc1234", "created": "2026-12-07",
            "schedules": {}, "teacher_study": {"nasbert's schedule": {
                "pearson": 81.0, "spearman": 80.5, "seconds": 120.0}}}


def test_scores_are_averaged_over_folds_and_judged_against_the_teacher():
    record = _record()
    assert summary(record, "stsb", "cross")["s8"] == [60.0, 62.0]
    found = goals(record, majority=81.22)
    cross = next(line for line in found if line.startswith("- STS-B, cross"))
    assert "s8" in cross and "70.9 %" in cross and cross.endswith("missed")  # 61 / 86
    bi = next(line for line in found if line.startswith("- STS-B, bi"))
    assert "u8" in bi and "91.8 %" in bi and bi.endswith("met")
    mrpc = next(line for line in found if line.startswith("- MRPC, cross"))
    assert "80.00 (s8)" in mrpc and mrpc.endswith("missed")  # under 81.22
    assert "- stsb: the bi-encoder is ahead for 4 of 4 students" in found
    page = render([record], majority=81.22)
    assert "| 8x | searched | 61.00 ± 1.41 (n=2) | 70.9 | 80.00 ± 1.41 (n=2) | 94.1 |" in page
    assert "| nasbert's schedule | 81.00 | 80.50 | 120 |" in page
    assert record_path(record).name == "some-cpu-avx2-replication-seed1.json"
