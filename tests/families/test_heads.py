"""NAS-BERT's span and token heads: loaded from any subnet folder by transformers' Auto
classes, trained by their losses, and length-adaptive with every token answered."""

from __future__ import annotations

import pytest
import torch

from nasbert import Supernet

ARCH = "E128|H256:M,F,S5,F|H192:S3,M,F,I|H384:M,F,S7,M"


@pytest.fixture(scope="module")
def subnet(minilm_space, tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("subnet")
    Supernet(minilm_space, vocab_size=2000).extract(ARCH).save_pretrained(folder)
    return folder


def _batch(n: int = 2, t: int = 24):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 2000, (n, t), generator=g)
    mask = torch.ones_like(ids)
    mask[1, t // 2:] = 0
    return ids, mask


def test_the_question_answering_head_learns_and_answers_every_token(subnet, tmp_path):
    from transformers import AutoModelForQuestionAnswering

    import nasbert  # noqa: F401 - registers the head

    model = AutoModelForQuestionAnswering.from_pretrained(subnet)
    ids, mask = _batch()
    starts, ends = torch.tensor([3, 5]), torch.tensor([4, 99])  # 99: past the end, ignored
    out = model(ids, attention_mask=mask, start_positions=starts, end_positions=ends)
    assert out.start_logits.shape == out.end_logits.shape == ids.shape
    first = out.loss.item()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(10):
        optimiser.zero_grad()
        model(ids, attention_mask=mask, start_positions=starts, end_positions=ends).loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        out = model(ids, attention_mask=mask, start_positions=starts, end_positions=ends)
        short = model(ids, attention_mask=mask, length_config=[0.5, 0.8, 1.0])
    assert float(out.loss) < 0.5 * first
    assert out.start_logits[0].argmax() == 3 and out.end_logits[0].argmax() == 4
    assert short.start_logits.shape == ids.shape  # restored: every token may answer
    model.save_pretrained(tmp_path)
    again = AutoModelForQuestionAnswering.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids, attention_mask=mask).start_logits,
                                   out.start_logits)


def test_the_token_head_ignores_unlabelled_sub_tokens(subnet):
    from transformers import AutoModelForTokenClassification

    import nasbert  # noqa: F401 - registers the head

    model = AutoModelForTokenClassification.from_pretrained(subnet, num_labels=5).eval()
    ids, mask = _batch()
    labels = torch.full(ids.shape, -100)
    labels[:, 1] = 2
    with torch.no_grad():
        out = model(ids, attention_mask=mask, labels=labels)
        expected = torch.nn.functional.cross_entropy(out.logits[:, 1], labels[:, 1])
        torch.testing.assert_close(out.loss, expected)
        short = model(ids, attention_mask=mask, length_config=[0.5, 1.0, 1.0])
    assert out.logits.shape == (*ids.shape, 5) and short.logits.shape == (*ids.shape, 5)
