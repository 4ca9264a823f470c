"""Length-adaptive inference: token dropping between blocks, by the attention tokens
receive, with padding and batches."""

from __future__ import annotations

import math

import pytest
import torch

from nasbert import ConfigError, Supernet
from nasbert.ops import drop_tokens

ARCH = "E128|H256:M,F,S5,F|H192:S3,M,F,I|H384:M,F,S7,M"


@pytest.fixture(scope="module")
def model(minilm_space):
    torch.manual_seed(0)
    return Supernet(minilm_space, vocab_size=2000).extract(ARCH).eval()


def _padded(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 2000, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
    return ids, mask


def test_retention_one_is_the_plain_forward_exactly(model):
    ids, mask = _padded([40, 25, 33])
    blocks = len(model.blocks)
    with torch.no_grad():
        plain = model(ids, attention_mask=mask).last_hidden_state
        same = model(ids, attention_mask=mask, length_config=[1.0] * blocks).last_hidden_state
    assert torch.equal(plain, same)


def test_drop_tokens_keeps_cls_and_real_tokens_in_order():
    g = torch.Generator().manual_seed(0)
    lengths = [10, 4, 7, 1]
    b, t = len(lengths), max(lengths)
    keep = torch.zeros(b, t, dtype=torch.long)
    for i, n in enumerate(lengths):
        keep[i, :n] = 1
    # each token's state is its position, so the kept ones can be read back
    x = torch.arange(t, dtype=torch.float)[None, :, None].expand(b, t, 3).clone()
    significance = torch.rand(b, t, generator=g)
    significance[:, 0] = -5.0  # [CLS] kept although it received the least attention
    significance[keep == 0] = 99.0  # padding attended to the most must still never come in
    kept, mask, sig = drop_tokens(x, keep, significance, 0.5)
    assert kept.shape[1] == max(math.ceil(0.5 * n) for n in lengths)
    for i, n in enumerate(lengths):
        k = math.ceil(0.5 * n)
        assert mask[i].tolist() == [1] * k + [0] * (kept.shape[1] - k)
        positions = kept[i, :k, 0].long().tolist()
        assert positions[0] == 0 and positions == sorted(positions)
        assert all(p < n for p in positions)  # real tokens only
        rest = sorted(range(1, n), key=lambda p: -float(significance[i, p]))[:k - 1]
        assert positions[1:] == sorted(rest)  # the most significant ones
        assert torch.equal(sig[i, :k], significance[i, positions])


def test_a_padded_batch_gives_each_row_what_it_gives_alone(model):
    """Padding neither leaks into real tokens nor changes which are kept."""
    lengths = [40, 25, 33, 9]
    ids, mask = _padded(lengths)
    config = [1.0, 0.7, 0.6]
    with torch.no_grad():
        batched = model(ids, attention_mask=mask, length_config=config).last_hidden_state
        for i, n in enumerate(lengths):
            alone = model(ids[i:i + 1, :n], length_config=config).last_hidden_state
            kept = alone.shape[1]
            assert kept == math.ceil(math.ceil(n * 0.7) * 0.6)
            torch.testing.assert_close(batched[i, :kept], alone[0], atol=2e-5, rtol=1e-4)


def test_dropping_shortens_the_sequence_and_the_config_is_the_default(model, tmp_path):
    ids, mask = _padded([64])
    config = [0.8, 0.8, 0.8]
    with torch.no_grad():
        out = model(ids, attention_mask=mask, length_config=config).last_hidden_state
    expected = 64
    for r in config:
        expected = math.ceil(expected * r)
    assert out.shape[1] == expected
    from transformers import AutoModel

    model.config.length_config = config
    model.save_pretrained(tmp_path)
    model.config.length_config = None
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        again = loaded(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(again, out)


@pytest.mark.parametrize("config, message", [
    ([1.0, 0.5], "2 retentions for a model of 3 blocks"),
    ([1.0, 0.5, 1.2], "outside \\(0, 1\\]"),
    ([1.0, 0.0, 1.0], "outside \\(0, 1\\]"),
])
def test_a_length_config_that_does_not_fit_is_a_config_error(model, config, message):
    ids, mask = _padded([12])
    with pytest.raises(ConfigError, match=message):
        model(ids, attention_mask=mask, length_config=config)


def test_dropping_before_any_attention_is_refused(minilm_space):
    torch.manual_seed(0)
    model = Supernet(minilm_space, vocab_size=2000).extract(
        "E128|H256:S5,F,I,I|H192:S3,M,F,I|H384:M,F,S7,M").eval()
    ids, mask = _padded([12])
    with pytest.raises(ConfigError, match="before any attention"):
        model(ids, attention_mask=mask, length_config=[0.5, 1.0, 1.0])
    out = model(ids, attention_mask=mask, length_config=[1.0, 0.5, 1.0]).last_hidden_state
    assert out.shape[1] == 6


def test_drop_and_restore_with_retention_one_is_the_plain_forward_exactly(model):
    ids, mask = _padded([40, 25, 33])
    with torch.no_grad():
        plain = model(ids, attention_mask=mask).last_hidden_state
        restored = model._adaptive(model.embeddings(ids, None), mask, (1.0, 1.0, 1.0), False,
                                   restore=True).last_hidden_state
    real = mask.bool()  # (padding is not computed on where tokens are restored)
    assert torch.equal(plain[real], restored[real])


def test_restored_tokens_come_back_in_place_as_they_were_when_dropped(model):
    """Half the tokens dropped after the first block: the output is as long as the
    input; the kept tokens' rows are the shortened forward's, in order, and each dropped
    token's row is its first-block state carried through the later blocks' width
    changes (256 -> 192 -> 384), not through their layers."""
    ids, mask = _padded([30])
    config = [0.5, 1.0, 1.0]
    with torch.no_grad():
        plain = model(ids, attention_mask=mask, output_hidden_states=True)
        short = model(ids, attention_mask=mask, length_config=config).last_hidden_state[0]
        full = model(ids, attention_mask=mask, length_config=config,
                     restore=True).last_hidden_state[0]
        carried = model.blocks[2].proj(model.blocks[1].proj(plain.hidden_states[1][0]))
    assert full.shape[0] == 30 and short.shape[0] == 15
    kept = [p for p in range(30) if not torch.allclose(full[p], carried[p], atol=1e-5)]
    assert kept[0] == 0 and len(kept) == 15
    torch.testing.assert_close(full[kept], short)
    assert all(torch.allclose(full[p], carried[p], atol=1e-5) for p in range(30)
               if p not in kept)
