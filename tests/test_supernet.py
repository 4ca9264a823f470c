"""The invariant that guards everything: the supernet run on an architecture and the
extracted, saved, reloaded model give the same outputs."""

from __future__ import annotations

import random
import shutil

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

import nasbert
from nasbert import NasBertForSequenceClassification, NasBertModel, Supernet
from nasbert.extract import check_batch

ATOL = 1e-5


@pytest.fixture(scope="module")
def minilm_supernet(minilm_space):
    torch.manual_seed(0)
    net = Supernet(minilm_space).eval()
    # random LayerNorm weights too, so a slicing mistake there cannot hide
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2) if name.endswith("weight") else p.normal_(0.0, 0.2)
    return net


def _archs(space, n, seed):
    rng = random.Random(seed)
    fixed = [space.max_arch(), space.min_arch()]
    return fixed + [space.sample(rng) for _ in range(n - len(fixed))]


def test_fifty_architectures_match_after_extraction_ten_after_a_reload(
        minilm_space, minilm_supernet, tmp_path):
    ids, mask = check_batch(minilm_space.dims.vocab_size, batch=4, seq=24)
    worst = 0.0
    for i, arch in enumerate(_archs(minilm_space, 50, seed=0)):
        model = minilm_supernet.extract(arch).eval()
        assert isinstance(model, NasBertModel)
        assert sum(p.numel() for p in model.parameters()) == arch.num_params(minilm_space.dims)
        with torch.no_grad():
            for m in (None, mask):  # without and with padding
                want = minilm_supernet(ids, attention_mask=m, arch=arch).last_hidden_state
                got = model(ids, attention_mask=m).last_hidden_state
                assert got.shape == (4, 24, minilm_space.dims.hidden_size)
                worst = max(worst, float((want - got).abs().max()))
                assert torch.allclose(want, got, atol=ATOL, rtol=0), (str(arch), worst)
        if i % 5:  # a save and a reload for one in five (the suite's time)
            continue
        path = tmp_path / f"m{i}"
        model.save_pretrained(path)
        reloaded = AutoModel.from_pretrained(path).eval()
        assert type(reloaded) is NasBertModel and reloaded.config.arch == str(arch)
        with torch.no_grad():
            for m in (None, mask):
                again = reloaded(ids, attention_mask=m).last_hidden_state
                want = minilm_supernet(ids, attention_mask=m, arch=arch).last_hidden_state
                assert torch.allclose(want, again, atol=ATOL, rtol=0), str(arch)
        shutil.rmtree(path)
    assert worst < ATOL


def test_real_tokens_do_not_see_padding(minilm_space, minilm_supernet):
    g = torch.Generator().manual_seed(1)
    for arch in _archs(minilm_space, 12, seed=1):
        model = minilm_supernet.extract(arch).eval()
        short = torch.randint(0, 1000, (1, 9), generator=g)
        padded = torch.cat([short, torch.randint(0, 1000, (1, 7), generator=g)], dim=1)
        mask = torch.ones_like(padded)
        mask[0, 9:] = 0
        with torch.no_grad():
            for run in (lambda i, m: model(i, attention_mask=m),
                        lambda i, m: minilm_supernet(i, attention_mask=m, arch=arch)):
                alone = run(short, None).last_hidden_state
                in_batch = run(padded, mask).last_hidden_state[:, :9]
                assert torch.allclose(alone, in_batch, atol=ATOL, rtol=0), str(arch)


def test_padding_leaks_without_mask_for_conv(minilm_space, minilm_supernet):
    # the check above can fail: without the mask, a convolution sees the pad tokens
    arch = minilm_space.parse("E128|H128:S7,I,I,I|H128:S7,I,I,I|H128:S7,I,I,I")
    short = torch.randint(0, 1000, (1, 9))
    padded = torch.cat([short, torch.randint(0, 1000, (1, 7))], dim=1)
    with torch.no_grad():
        alone = minilm_supernet(short, arch=arch).last_hidden_state
        unmasked = minilm_supernet(padded, arch=arch).last_hidden_state[:, :9]
    assert not torch.allclose(alone, unmasked, atol=ATOL)


def test_block_forward_is_the_full_forward_piecewise(minilm_space, minilm_supernet):
    arch = minilm_space.sample(3)
    ids, mask = check_batch(minilm_space.dims.vocab_size, batch=2, seq=16)
    with torch.no_grad():
        full = minilm_supernet(ids, attention_mask=mask, arch=arch, output_hidden_states=True)
        x = minilm_supernet.embed(ids, size=arch.embed)
        for i, block in enumerate(arch.blocks):
            x = minilm_supernet.forward_block(i, x, block, attention_mask=mask)
            assert torch.equal(x, full.hidden_states[i + 1])
    assert torch.equal(x, full.last_hidden_state)


def test_weights_are_shared_and_gradients_reach_only_the_slice(tiny_space):
    torch.manual_seed(0)
    net = Supernet(tiny_space)
    arch = tiny_space.parse("E16|H16:M,F|H24:S3,I")
    ids, mask = check_batch(tiny_space.dims.vocab_size, batch=2, seq=8)
    net(ids, attention_mask=mask, arch=arch).last_hidden_state.pow(2).mean().backward()
    qkv = net.blocks[0].layers[0]["M"].qkv.weight.grad.view(3, 32, 32)
    assert qkv[:, :16, :16].abs().sum() > 0 and qkv[:, 16:, :].abs().sum() == 0
    assert qkv[:, :, 16:].abs().sum() == 0
    assert net.blocks[0].layers[0]["F"].fc1.weight.grad is None  # not on the path
    # the word table's columns beyond E16 are their own segment: no gradient at all
    assert net.embeddings.word_segments[0].grad.abs().sum() > 0
    assert net.embeddings.word_segments[1].grad is None


def test_teacher_width_blocks_have_no_projection(minilm_supernet, minilm_space):
    model = minilm_supernet.extract("E384|H384:M,F,M,F|H384:M,F,M,F|H384:M,F,M,F")
    assert all(b.proj is None for b in model.blocks) and model.proj_out is None
    model = minilm_supernet.extract("E128|H384:M,F,M,F|H256:M,F,M,F|H256:M,F,M,F")
    assert [tuple(b.proj.weight.shape) if b.proj is not None else None for b in model.blocks] == \
        [(384, 128), (256, 384), (256, 256)]
    assert tuple(model.proj_out.weight.shape) == (384, 256)


def test_sequence_classification_loads_the_encoder(minilm_supernet, tmp_path):
    arch = "E128|H256:M,F,S5,F|H192:S3,M,F,I|H384:M,F,S7,M"
    minilm_supernet.extract(arch).save_pretrained(tmp_path)
    ids, mask = check_batch(1000, batch=3, seq=12)
    for num_labels, labels in ((3, torch.tensor([0, 2, 1])), (1, torch.tensor([0.5, 1.0, 2.0]))):
        clf = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=num_labels)
        assert isinstance(clf, NasBertForSequenceClassification)
        clf.eval()
        with torch.no_grad():
            want = minilm_supernet(ids, attention_mask=mask, arch=arch).last_hidden_state
            got = clf.nasbert(ids, attention_mask=mask).last_hidden_state
        assert torch.allclose(want, got, atol=ATOL, rtol=0)
        out = clf(ids, attention_mask=mask, labels=labels)
        assert out.logits.shape == (3, num_labels) and out.loss.ndim == 0
        expected = "regression" if num_labels == 1 else "single_label_classification"
        assert clf.config.problem_type == expected
        out.loss.backward()
        assert clf.classifier.weight.grad is not None


def test_load_model_reports_missing_and_corrupt_files(minilm_supernet, tmp_path):
    good = tmp_path / "good"
    minilm_supernet.extract("E64|H128:S3,I,I,I|H128:S3,I,I,I|H128:S3,I,I,I").save_pretrained(good)
    assert isinstance(nasbert.load_model(good), NasBertModel)
    with pytest.raises(nasbert.ConfigError, match="not a directory"):
        nasbert.load_model(tmp_path / "absent")
    weights = good / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(nasbert.ConfigError, match="model.safetensors: is corrupt"):
        nasbert.load_model(good)
    weights.unlink()
    with pytest.raises(nasbert.ConfigError, match="model.safetensors: is missing"):
        nasbert.load_model(good)
    (good / "config.json").write_text("{not json")
    with pytest.raises(nasbert.ConfigError, match="config.json: is not valid JSON"):
        nasbert.load_model(good)
    (good / "config.json").unlink()
    with pytest.raises(nasbert.ConfigError, match="config.json: is missing"):
        nasbert.load_model(good)


@pytest.mark.parametrize("op", ["M", "M1", "F", "F24", "S3"])
def test_each_elastic_op_exports_a_right_sized_standalone_copy(op):
    from nasbert.ops import elastic_op, make_masks
    from nasbert.space import Dims, op_family

    torch.manual_seed(0)
    dims = Dims(vocab_size=8, hidden_size=32, head_size=8)
    elastic = elastic_op(op_family(op), 32, dims, dropout=0.0, attention_dropout=0.0,
                         eps=1e-12).eval()
    x = torch.randn(2, 7, 16)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    masks = make_masks(mask, x.dtype)
    standalone = elastic.export(16, op).eval()
    assert type(standalone).__name__ in ("Attention", "FeedForward", "SepConv")
    assert sum(p.numel() for p in standalone.parameters()) == dims.op_params(op, 16)
    with torch.no_grad():
        assert torch.equal(elastic(x, masks, 16, op), standalone(x, masks))
