"""Replications of the whole pipeline (scripts/replicate.py) and their aggregation
(scripts/aggregate_replications.py)."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from aggregate_replications import below_p, comparisons, render, taus  # noqa: E402


def _record(seed: int, edge: float, rng: random.Random) -> dict:
    """A replication's record: the searched model ``edge`` ahead of the better baseline
    (plus noise), block-wise scores that rank the models as they fine-tune."""
    groups = {g: {"searched": f"s{g}", "uniform": f"u{g}", "teacher-first-k": f"t{g}"}
              for g in ("2x", "4x", "8x")}
    models, tasks = {}, {"mrpc": {"metric": "f1", "models": {"teacher": 0.9}, "ablation": {}},
                         "tweets": {"metric": "accuracy", "models": {"teacher": 0.7},
                                    "ablation": {}}}
    for depth, (group, kinds) in enumerate(groups.items()):
        for kind, model_id in kinds.items():
            base = 0.85 - 0.05 * depth - (0.02 if kind == "teacher-first-k" else 0.0)
            value = base + (edge + rng.gauss(0, 0.002) if kind == "searched" else 0.0)
            for task in tasks.values():
                task["models"][model_id] = value
            models[model_id] = {"group": group, "kind": kind, "blockwise_score": 1 - value,
                                "latency_ms": 10.0 / (depth + 1),
                                "sts": {"spearman": 80 * value / 0.85}}
    if seed % 2:
        for task in tasks.values():
            task["ablation"] = {"s4x": {"kind": "searched", "variant": "s4x-extracted",
                                        "metric": task["models"]["s4x"] - 0.03}}
    return {"seed": seed, "cpu": "Test CPU", "commit": "abc1234", "groups": groups,
            "models": models, "tasks": tasks, "teacher": {"latency_ms": 20.0,
                                                          "sts": {"spearman": 84.0}},
            "budgets_ms": {"2x": 10.0, "4x": 5.0, "8x": 3.3},
            "stage_seconds": {"supernet": 1200.0, "fine-tuning mrpc": 1800.0}}


def test_the_page_judges_each_goal_from_the_records():
    rng = random.Random(0)
    ahead = [_record(s, 0.02, rng) for s in range(5)]
    d = comparisons(ahead)
    assert set(d) == {(t, g) for t in ("mrpc", "tweets") for g in ("2x", "4x", "8x")}
    assert all(len(v) == 5 and min(v) > 1.0 for v in d.values())  # 2 points ahead, +- noise
    t, sign = below_p(d[("mrpc", "8x")])
    assert t > 0.9 and sign == 1.0  # nowhere near "below"
    within, pooled = taus(ahead)["mrpc"]
    assert len(within) == 5 and min(within) > 0.9 and pooled > 0.5
    page = render(ahead, "python scripts/aggregate_replications.py")
    assert "- N >= 5 replications landed (5): **met**" in page
    assert "never significantly below: **met**" in page
    assert "8x, mrpc: searched ahead of the best baseline by >= 1 point" in page
    assert "stage one adds +3.00 points on average over 2" in page  # seeds 1 and 3
    # behind, in most replications: the goals say so
    behind = [_record(s, -0.01, rng) for s in range(6)]
    page = render(behind, "cmd")
    assert "never significantly below: **missed**; below: mrpc 2x" in page
    assert re.search(r"8x, mrpc: .* by >= 1 point on average \(-1\.\d\d\): \*\*missed", page)
    # too few to judge: pending, with the figures so far
    assert "- N >= 5 replications landed (2): **pending**" in render(ahead[:2], "cmd")
    # a task that joined later is judged on its own count; a retired one not at all
    for r in ahead[2:]:
        r["tasks"]["cola"] = r["tasks"]["mrpc"]
    ahead[2]["tasks"]["mrpc-bi"] = {**ahead[2]["tasks"]["mrpc"], "models": {
        k: v - (0.5 if k.startswith("s") else 0.0)  # the searched models far behind
        for k, v in ahead[2]["tasks"]["mrpc"]["models"].items()}}
    page = render(ahead, "cmd")
    assert "(fewer than 5: cola 3)" in page and "- N >= 5 replications landed (5)" in page
    assert re.search(r"8x, cola: .*: \*\*pending", page)
    assert re.search(r"8x, tweets: .*: \*\*met", page)
    assert "- mrpc-bi: retired, not judged" in page and "below: mrpc-bi" not in page
    assert "none yet" in render([], "cmd")


def test_a_tie_or_a_single_replication_gives_no_test():
    assert all(p != p for p in below_p([0.0]))  # NaN: nothing to test
    t, sign = below_p([-1.0, -2.0, -1.5])
    assert t < 0.05 and sign == pytest.approx(0.125)


@pytest.mark.slow  # about 3 minutes alone: every stage on the tiny teacher and corpus
def test_a_replication_runs_every_stage_and_records_it(tiny_teacher, tiny_corpus, tmp_path,
                                                       protocol):
    import shutil

    from replicate import ReplicationConfig, replicate

    from conftest import quick_finetune, tiny_recipe_text, write_glue_task

    data = tmp_path / "data"
    shutil.copytree(tiny_corpus, data / "corpus" / "wikipedia")
    write_glue_task(data / "glue", "mrpc", train=96, dev=32)
    write_glue_task(data / "glue", "stsb", train=40, dev=8)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(tiny_recipe_text(tiny_teacher, tiny_corpus, max_steps=20))
    quick = quick_finetune()
    config = ReplicationConfig(
        seed=1, data=str(data), recipe=str(recipe), supernet_steps=20, shrink_epoch_steps=5,
        latency_samples=30, speedups=(1.0,), top_k=2, stage_one_tokens=4 * 8 * 32,
        tasks=("mrpc", "mrpc-bi"),  # a formulation beside the task, as seed 2 ran it
        schedules={"mrpc": dataclasses.replace(quick, epochs=2),
                   "mrpc-bi": dataclasses.replace(quick, epochs=2, formulation="bi")},
        ablation_group="1x")
    record = replicate(tmp_path / "run", config, protocol=protocol, progress=False)
    group = record["groups"]["1x"]
    assert set(group) == {"searched", "uniform", "teacher-first-k"}
    for model_id in group.values():
        m = record["models"][model_id]
        assert m["latency_ms"] > 0 and m["stage_one_loss"] > 0 and m["params"] > 0
        assert -100 <= m["sts"]["spearman"] <= 100 and m["blockwise_score"] > 0
    assert record["tasks"]["mrpc"]["models"].keys() == {"teacher", *group.values()}
    assert record["tasks"]["mrpc-bi"]["models"].keys() == {"teacher", *group.values()}
    assert record["tasks"]["mrpc-bi"]["formulation"] == "bi"
    assert (tmp_path / "run" / "finetune" / "mrpc" / "teacher-bi").is_dir()
    ablation = record["tasks"]["mrpc"]["ablation"]  # an odd seed: the ablation ran
    assert {a["kind"] for a in ablation.values()} >= {"searched"}
    assert record["teacher"]["latency_ms"] > 0 and record["seed"] == 1
    assert {"supernet", "latency", "plan", "stage one", "fine-tuning mrpc",
            "zero-shot embeddings"} <= set(record["stage_seconds"])
    json.dumps(record)  # the record is plain JSON
    page = render([record], "cmd")
    assert "| mrpc | 1x |" in page

    # the embedding students of the same run (scripts/results_embeddings.py)
    import results_embeddings

    from nasbert.train import EmbedDistillConfig

    quick_embed = EmbedDistillConfig(steps=4, batch_size=8, max_tokens=20, dev_batches=1)
    quick_static = EmbedDistillConfig(start="extracted", steps=4, batch_size=8, lr=1e-2,
                                      max_tokens=20, dev_batches=1)
    emb = results_embeddings.measure(tmp_path / "run", data, config=quick_embed,
                                     static_config=quick_static, rounds=1, progress=False)
    for model_id in group.values():
        m = emb["models"][model_id]
        assert set(m["sts"]) == {"extracted", "stage-one", "embeddings", "int8",
                                 "onnx float32", "onnx int8"}
        assert m["speed"]["float32 b64"] > m["speed"]["float32 b1"] > 0
    assert emb["pairs"] == 40 and emb["teacher"]["sts"]["float32"] > -100
    page = results_embeddings.render([emb])
    assert page.count("| 1x |") == 3 and "Goals (issue 37)" in page
    assert emb["models"]["static"]["speed"]["float32 b1"] > 0 and "| - | static" in page
