"""Token classification's data, label alignment and metric (nasbert.families.ner): the
first sub-token of a word carries its label, predictions map back to words, entity F1
counts as conlleval does."""

from __future__ import annotations

import pytest

from nasbert import ConfigError
from nasbert.families.ner import (
    IGNORE,
    NERFeatures,
    Sentence,
    entity_scores,
    label_list,
    load_conll,
    read_conll,
    word_predictions,
)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from nasbert.teacher import resolve

    return AutoTokenizer.from_pretrained(resolve("minilm-l6"))


SENTENCES = [Sentence(("Peter", "Blackburn", "visited", "Vollenhoven"),
                      ("B-PER", "I-PER", "O", "B-LOC")),
             Sentence(("EU", "rejects", "Germanophiles"), ("B-ORG", "O", "B-MISC"))]
LABELS = label_list(SENTENCES)


def test_the_label_set_is_o_then_each_type_s_begin_and_inside():
    assert LABELS == ("O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG",
                      "B-PER", "I-PER")


def test_only_the_first_sub_token_of_a_word_is_labelled(tokenizer):
    features = NERFeatures(tokenizer, SENTENCES, LABELS)
    item = features[0]
    tokens = tokenizer.convert_ids_to_tokens(item["input_ids"])
    ids = features.word_ids[0]
    assert ids[0] is None and ids[-1] is None  # [CLS], [SEP]
    assert sum(1 for w in ids if w == 3) == 4  # "Vollenhoven": vol ##len ##ho ##ven
    for k, w in enumerate(ids):
        first = w is not None and ids.index(w) == k
        if first:
            assert item["labels"][k] == LABELS.index(SENTENCES[0].tags[w])
            assert not tokens[k].startswith("##")
        else:
            assert item["labels"][k] == IGNORE
    assert features.truncated == 0


def test_a_byte_level_bpe_reads_each_word_as_running_text_reads_it(tmp_path):
    """RoBERTa's tokenizer, given words one by one, would split a word that follows a space
    differently from how running text (and pre-training) splits it: the words get the
    space back, and the sentence's tokens are the running text's."""
    from conftest import _family_tokenizer

    tokenizer = _family_tokenizer("roberta")
    words = ("the", "model", "is", "fast")
    features = NERFeatures(tokenizer, [Sentence(words, ("O",) * 4)], ("O",))
    running = tokenizer(" " + " ".join(words))["input_ids"]
    assert features[0]["input_ids"] == running
    assert features.word_ids[0][1:-1] == sorted(features.word_ids[0][1:-1])
    # the tokenizer handed in is not changed
    assert tokenizer([list(words)], is_split_into_words=True)["input_ids"][0] != running


def test_predictions_at_first_sub_tokens_map_back_to_words_and_truncated_words_are_o(
        tokenizer):
    features = NERFeatures(tokenizer, SENTENCES, LABELS, max_seq_len=5)
    assert features.truncated > 0  # the first sentence is cut after a few pieces
    logits = []
    for i, ids in enumerate(features.word_ids):
        rows = []
        for k, w in enumerate(ids):
            row = [0.0] * len(LABELS)
            # the gold label at a word's first piece; a wrong one on its other pieces
            first = w is not None and ids.index(w) == k
            row[LABELS.index(SENTENCES[i].tags[w]) if first else 0 if w is None else 1] = 1.0
            rows.append(row)
        logits.append(rows)
    predicted = word_predictions(features, logits, LABELS)
    for sentence, tags, ids in zip(SENTENCES, predicted, features.word_ids):
        kept = {w for w in ids if w is not None}
        assert [t for w, t in enumerate(tags) if w in kept] == [
            t for w, t in enumerate(sentence.tags) if w in kept]
        assert all(tags[w] == "O" for w in range(len(tags)) if w not in kept)


def test_entity_f1_counts_an_entity_right_only_with_its_type_and_both_ends():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC"]]
    assert entity_scores(gold, gold)["f1"] == 100.0
    # PER cut short, LOC right, ORG typed wrong, MISC right: 2 of 4 right, 4 predicted
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-LOC", "O", "B-MISC"]]
    scores = entity_scores(pred, gold)
    assert scores["precision"] == 50.0 and scores["recall"] == 50.0 and scores["f1"] == 50.0
    with pytest.raises(ValueError):
        entity_scores([["O"]], gold[:1])


def test_conll_files_read_with_their_document_lines_and_bad_tags_are_refused(tmp_path):
    (tmp_path / "train.txt").write_text("-DOCSTART- O\n\nEU B-ORG \nrejects O\n\n"
                                        "Peter B-PER\nBlackburn I-PER\n")
    (tmp_path / "valid.txt").write_text("BRUSSELS NNP B-NP B-LOC\n")  # four columns
    with pytest.raises(ConfigError, match="B-LOC that the training split never uses"):
        load_conll(tmp_path)
    (tmp_path / "valid.txt").write_text("Peter NNP B-NP B-PER\n")
    data = load_conll(tmp_path)
    assert [s.words for s in data.split("train")] == [("EU", "rejects"), ("Peter", "Blackburn")]
    assert data.split("dev")[0].tags == ("B-PER",)
    assert data.labels == ("O", "B-ORG", "I-ORG", "B-PER", "I-PER")
    (tmp_path / "valid.txt").write_text("Peter PERSON\n")
    with pytest.raises(ConfigError, match=r"valid.txt:1"):
        read_conll(tmp_path / "valid.txt")


def test_the_conll_2003_files_read_whole(shared_data, tokenizer):
    data = load_conll(shared_data / "conll2003")
    assert len(data.split("train")) == 14041 and len(data.split("dev")) == 3250
    assert data.labels == ("O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG",
                           "B-PER", "I-PER")
    features = NERFeatures(tokenizer, data.split("dev"), data.labels)
    assert features.truncated == 0  # the default 256 sub-tokens hold every dev sentence


def test_a_model_distils_nothing_from_its_own_logits_and_is_scored_end_to_end(tokenizer):
    import torch
    from transformers import AutoModelForTokenClassification

    from nasbert.families.ner import collate, distillation_loss, evaluate, predict
    from nasbert.teacher import resolve

    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(
        resolve("minilm-l6"), num_labels=len(LABELS)).eval()
    features = NERFeatures(tokenizer, SENTENCES, LABELS)
    logits = predict(model, features, batch_size=1)
    assert [x.shape for x in logits] == [(len(ids), len(LABELS))
                                         for ids in features.features["input_ids"]]
    taught = NERFeatures(tokenizer, SENTENCES, LABELS, teacher=logits)
    batch = collate([taught[i] for i in range(len(taught))])
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
    teacher = batch.pop("teacher_logits")
    with torch.no_grad():
        out = model(**batch)
        assert float(distillation_loss(out, {**batch, "teacher_logits": teacher}, 2.0)) < 1e-5
        assert float(distillation_loss(out, {**batch, "teacher_logits": -teacher}, 2.0)) > 1e-3
    scores, tags = evaluate(model, tokenizer, SENTENCES, LABELS)
    assert [len(t) for t in tags] == [len(s.words) for s in SENTENCES]
    assert 0 <= scores["f1"] <= 100
