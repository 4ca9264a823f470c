"""Extractive QA's data, features, post-processing and metric (nasbert.families.qa):
offsets that give back the exact context characters, across stride windows too; the
official v1.1 normalisation; questions whose answer is not where it says are left out
and reported."""

from __future__ import annotations

import json

import pytest

from nasbert import ConfigError
from nasbert.families.qa import (
    QAExample,
    QAFeatures,
    load_squad,
    normalize_answer,
    postprocess,
    squad_scores,
)

CONTEXT = ("Jacksonville is the largest city by population in the state of Florida. It is "
           "the county seat of Duval County, with which the city government consolidated in "
           "1968. Consolidation gave Jacksonville its great size and placed most of its "
           "metropolitan population within the city limits.")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from nasbert.teacher import resolve

    return AutoTokenizer.from_pretrained(resolve("minilm-l6"))


def _example(answer: str, qid: str = "q1", question: str = "Which one?") -> QAExample:
    return QAExample(qid, question, CONTEXT, ((answer, CONTEXT.index(answer)),))


@pytest.mark.parametrize("answer", ["Jacksonville", "Duval County", "1968",
                                    "metropolitan population within the city limits"])
def test_answer_positions_give_back_the_exact_characters_in_every_window(tokenizer, answer):
    """Windows of 24 tokens that overlap by 8: a window holding the whole answer points
    at tokens whose offsets cut exactly the answer from the context; the others at the
    first token."""
    ex = _example(answer)
    features = QAFeatures(tokenizer, [ex], train=True, max_seq_len=24, stride=8)
    assert len(features) > 3  # the context is cut into several windows
    holding = 0
    for i in range(len(features)):
        item = features[i]
        s, e = item["start_positions"], item["end_positions"]
        spans = [o for o in features.offsets[i] if o is not None]
        whole = spans[0][0] <= ex.answers[0][1] and spans[-1][1] >= ex.answers[0][1] + len(answer)
        if whole:
            holding += 1
            assert CONTEXT[features.offsets[i][s][0]:features.offsets[i][e][1]] == answer
        else:
            assert (s, e) == (0, 0)
    assert holding >= 1


def test_post_processing_finds_the_answer_in_whichever_window_holds_it(tokenizer):
    """Logits that point at the answer's tokens in the one window that holds it (and
    noise elsewhere, some of it on question tokens, which never answer) give the answer
    text back; spans longer than the limit or ending before they start are never
    chosen."""
    answers = ["Jacksonville", "metropolitan population"]
    examples = [_example(a, f"q{i}") for i, a in enumerate(answers)]
    features = QAFeatures(tokenizer, examples, train=True, max_seq_len=24, stride=8)
    starts, ends = [], []
    chosen = set()
    for i in range(len(features)):
        n = len(features.offsets[i])
        s_logits, e_logits = [0.0] * n, [0.0] * n
        s_logits[1] = e_logits[1] = 50.0  # a question token: not an answer
        item, ex_i = features[i], features.example_index[i]
        if item["start_positions"] and ex_i not in chosen:
            chosen.add(ex_i)
            s_logits[item["start_positions"]] = 20.0
            e_logits[item["end_positions"]] = 20.0
            e_logits[item["start_positions"] - 1] = 30.0  # ends before it starts (with any
            # start before it the pair scores at most 30, under the answer's 40)
        starts.append(s_logits)
        ends.append(e_logits)
    assert postprocess(features, starts, ends) == {"q0": answers[0], "q1": answers[1]}
    assert postprocess(features, starts, ends, max_answer_tokens=1)["q1"] != answers[1]


def test_the_metric_normalises_as_the_official_v1_1_script():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert normalize_answer("an Apple a day") == "apple day"
    examples = [QAExample("a", "?", "", (("the Big Cat", 0), ("cat sat", 0))),
                QAExample("b", "?", "", (("Denver Broncos", 0),)),
                QAExample("c", "?", "", (("1968", 0),))]
    scores = squad_scores({"a": "a cat", "b": "Broncos of Denver", "c": ""}, examples)
    # a: exact against "the Big Cat"? no ("cat" vs "big cat"); F1 best of 2/3 and 2/3
    # b: F1 2 * (2/3 * 1) / (2/3 + 1) = 0.8; c: nothing predicted
    assert scores["exact_match"] == 0.0
    assert scores["f1"] == pytest.approx(100 * (2 / 3 + 0.8 + 0) / 3)
    assert squad_scores({"a": "Big cat."}, examples[:1])["exact_match"] == 100.0


def _squad(path, qas):
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": CONTEXT, "qas": qas}]}]}))


def test_questions_whose_answer_is_not_at_its_start_are_left_out_and_reported(tmp_path):
    good = {"id": "ok", "question": "When?", "answers": [{"text": "1968",
                                                          "answer_start": CONTEXT.index("1968")}]}
    bad = {"id": "off", "question": "Who?", "answers": [{"text": "Duval", "answer_start": 3}]}
    _squad(tmp_path / "train.json", [good, bad])
    _squad(tmp_path / "dev.json", [bad])
    data = load_squad(tmp_path)
    assert [ex.id for ex in data.split("train")] == ["ok"]
    assert len(data.skipped["train"]) == 1 and data.skipped["train"][0].startswith("question off")
    assert [ex.id for ex in data.split("dev")] == ["off"]  # scored on its texts, all kept
    _squad(tmp_path / "train.json", [bad])
    with pytest.raises(ConfigError, match="no question whose answer is found"):
        load_squad(tmp_path)
    (tmp_path / "train.json").write_text("{}")
    with pytest.raises(ConfigError, match="is not SQuAD v1.1 JSON"):
        load_squad(tmp_path)


def test_the_squad_slice_features_cover_every_answer_with_the_fewest_tokens(shared_data,
                                                                         tokenizer):
    """On the real slice, at the field's 384 / 128: every training window that holds its
    answer points at the fewest tokens that cover it, which cut the answer exactly
    unless it ends inside a word piece ("gold" of "golden")."""
    data = load_squad(shared_data / "squad")
    assert len(data.split("dev")) == 888
    assert len(data.split("train")) + len(data.skipped["train"]) == 7235
    examples = data.split("train")[:400]
    features = QAFeatures(tokenizer, examples, train=True)
    checked = exact = 0
    for i in range(len(features)):
        item = features[i]
        if not item["start_positions"]:
            continue
        ex = examples[features.example_index[i]]
        (text, first), last = ex.answers[0], ex.answers[0][1] + len(ex.answers[0][0])
        offsets = features.offsets[i]
        s, e = item["start_positions"], item["end_positions"]
        assert offsets[s][0] <= first < offsets[s][1] and offsets[e][0] < last <= offsets[e][1]
        exact += normalize_answer(ex.context[offsets[s][0]:offsets[e][1]]) == normalize_answer(text)
        checked += 1
    assert checked >= 390 and exact >= 0.97 * checked, (checked, exact)


def test_a_model_distils_nothing_from_its_own_logits_and_is_scored_end_to_end(tokenizer):
    """Predictions per window, of each window's length; the teacher's logits padded in
    a batch so that padding weighs nothing: a model's KL to its own logits is 0, to
    another's it is not; evaluation post-processes and scores every question."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    from nasbert.families.qa import collate, distillation_loss, evaluate, predict
    from nasbert.teacher import resolve

    torch.manual_seed(0)
    model = AutoModelForQuestionAnswering.from_pretrained(resolve("minilm-l6")).eval()
    examples = [_example("Duval County", "q0", "Which county?"),
                _example("1968", "q1", "When did the city consolidate with its county?")]
    features = QAFeatures(tokenizer, examples, train=True, max_seq_len=48, stride=16)
    logits = predict(model, features, batch_size=3)
    assert [x.shape for x in logits] == [(2, len(ids))
                                         for ids in features.features["input_ids"]]
    taught = QAFeatures(tokenizer, examples, train=True, max_seq_len=48, stride=16,
                        teacher=logits)
    batch = collate([taught[i] for i in range(len(taught))])
    assert (batch["teacher_logits"][:, 1][batch["attention_mask"] == 0] == -1e4).all()
    teacher = batch.pop("teacher_logits")
    with torch.no_grad():
        out = model(**batch)
        assert float(distillation_loss(out, {**batch, "teacher_logits": teacher}, 2.0)) < 1e-5
        shuffled = {**batch, "teacher_logits": teacher.flip(0)}
        assert float(distillation_loss(out, shuffled, 2.0)) > 1e-3
    scores, answers = evaluate(model, tokenizer, examples, max_seq_len=48, stride=16)
    assert set(answers) == {"q0", "q1"} and 0 <= scores["f1"] <= 100
