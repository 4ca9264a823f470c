"""int8: dynamic quantisation of extracted models, on load, in the latency protocol and
in ONNX Runtime."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModel

from nasbert import ConfigError, Supernet
from nasbert.latency.measure import Protocol, device_id, fingerprint, measure
from nasbert.quantize import is_quantized, quantize

ARCH = "E128|H256:M,F,S5,F|H192:S3,M,F,I|H384:M,F,S7,M"


@pytest.fixture(scope="module")
def model_dir(minilm_space, tmp_path_factory):
    torch.manual_seed(0)
    net = Supernet(minilm_space, vocab_size=2000)
    path = tmp_path_factory.mktemp("subnet")
    net.extract(ARCH).save_pretrained(path)
    return path


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 2000, (3, 40), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    return ids, mask


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


def test_every_linear_layer_is_quantised_and_outputs_stay_close(model_dir):
    import nasbert  # noqa: F401

    model = AutoModel.from_pretrained(model_dir).eval()
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    int8 = quantize(model)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    assert sum(isinstance(m, DynamicLinear) for m in int8.modules()) == linears
    assert not is_quantized(model) and is_quantized(int8)  # a copy by default
    ids, mask = _batch()
    with torch.no_grad():
        want = model(ids, attention_mask=mask).last_hidden_state
        got = int8(ids, attention_mask=mask).last_hidden_state
    # random weights, 8 blocks of error: measured 3.6 % relative L2 (per channel)
    assert 0 < _relative(want, got) < 0.08


def test_a_folder_that_says_int8_loads_quantised(model_dir, tmp_path):
    import nasbert  # noqa: F401

    model = AutoModel.from_pretrained(model_dir).eval()
    model.config.precision = "int8"
    model.save_pretrained(tmp_path)  # float32 weights, the precision in the config
    loaded = AutoModel.from_pretrained(tmp_path)
    assert is_quantized(loaded) and loaded.config.precision == "int8"
    ids, mask = _batch()
    with torch.no_grad():
        assert torch.equal(loaded(ids, attention_mask=mask).last_hidden_state,
                           quantize(model)(ids, attention_mask=mask).last_hidden_state)


def test_the_precision_is_part_of_the_device_fingerprint(model_dir):
    import nasbert  # noqa: F401

    fp32, int8 = Protocol(repeats=3, warmup=1), Protocol(repeats=3, warmup=1, dtype="int8")
    assert device_id(fingerprint(fp32)) != device_id(fingerprint(int8))
    assert "int8" in device_id(fingerprint(int8))
    model = AutoModel.from_pretrained(model_dir)
    assert measure(model, int8) > 0
    assert not is_quantized(model)  # measure quantises a copy
    with pytest.raises(ConfigError, match="runs on the CPU"):
        Protocol(dtype="int8", device="cuda")


def test_onnx_int8_graph_is_smaller_and_close_to_float32(model_dir, tmp_path):
    import onnxruntime as ort

    from nasbert.export import export_onnx

    report = export_onnx(model_dir, tmp_path / "model.onnx", precision="int8")
    fp32, int8 = tmp_path / "model.onnx", tmp_path / "model.int8.onnx"
    assert report.path == str(int8) and fp32.is_file()
    assert int8.stat().st_size < 0.6 * fp32.stat().st_size
    ids, mask = _batch()
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
             "token_type_ids": torch.zeros_like(ids).numpy()}
    a = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    b = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert 0 < _relative(torch.from_numpy(a), torch.from_numpy(b)) < 0.1
    assert report.int8_relative_error < 0.1


@pytest.mark.slow  # ~9 s; measure_precisions also runs in every deployment test
def test_both_precisions_are_measured_side_by_side(model_dir, tiny_teacher):
    """One clean process times every model in float32 and in int8; a config that says
    int8 is honoured for any model type (here transformers' BERT, the tiny teacher)."""
    from nasbert.latency.measure import measure_precisions, prepare

    bert = AutoModel.from_pretrained(tiny_teacher)
    bert.config.precision = "int8"
    assert is_quantized(prepare(bert, Protocol()))
    times = measure_precisions([model_dir, tiny_teacher], Protocol(seq=32, repeats=3, rounds=1))
    assert set(times) == {"float32", "int8"}
    assert all(len(t) == 2 and min(t) > 0 for t in times.values())


def test_fake_quantised_training_computes_as_int8_and_leaves_a_plain_model(model_dir):
    import nasbert  # noqa: F401
    from nasbert.quantize import fake_quantized

    model = AutoModel.from_pretrained(model_dir).eval()
    keys = list(model.state_dict())
    ids, mask = _batch()
    with torch.no_grad():
        fp32 = model(ids, attention_mask=mask).last_hidden_state
        int8 = quantize(model)(ids, attention_mask=mask).last_hidden_state
    with fake_quantized(model):
        fake = model(ids, attention_mask=mask).last_hidden_state
        fake.square().mean().backward()  # straight-through: gradients reach the weights
    # measured: 0.015 % from int8 against 3.3 % for float32 on an AMD EPYC (fbgemm); on
    # an Intel Sapphire Rapids (AMX) 0.51 % against 3.3 %, although each linear alone
    # matches the kernel to 4e-7 there too (activation_levels' probe)
    assert _relative(int8, fake.detach()) < 0.25 * _relative(int8, fp32)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in linears)
    assert sorted(model.state_dict()) == sorted(keys)  # plain again: saves and loads as before
    with torch.no_grad():
        assert torch.equal(model(ids, attention_mask=mask).last_hidden_state, fp32)
