"""The inference kernel of the standalone ops: oneDNN's matrix product (GELU fused) where
it may run, the layer's own call everywhere else."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasbert.ops import onednn, project

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason="this PyTorch has no oneDNN")


def _kernels(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.fixture
def layer_and_input():
    torch.manual_seed(0)
    return nn.Linear(48, 96), torch.randn(3, 7, 48).transpose(0, 1)  # not contiguous


@pytest.mark.parametrize("gelu", [False, True])
def test_at_inference_onednn_computes_what_the_layer_does(layer_and_input, gelu):
    layer, x = layer_and_input
    with torch.no_grad():
        want = F.gelu(layer(x)) if gelu else layer(x)
        assert "mkldnn::_linear_pointwise" in _kernels(lambda: project(layer, x, gelu=gelu))
        got = project(layer, x, gelu=gelu)
        with onednn(False):
            assert "mkldnn::_linear_pointwise" not in _kernels(
                lambda: project(layer, x, gelu=gelu))
            plain = project(layer, x, gelu=gelu)
    assert got.shape == want.shape == (7, 3, 96)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert torch.equal(plain, want)


def test_autograd_hooks_and_other_layers_take_their_own_call(layer_and_input):
    layer, x = layer_and_input
    y = project(layer, x)  # autograd on: the kernel has no backward
    assert y.grad_fn is not None
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        project(layer, x)
    handle.remove()
    assert seen == [(7, 3, 96)]
    sliced = lambda t: F.linear(t, layer.weight[:10], layer.bias[:10])  # noqa: E731
    with torch.no_grad():
        assert "mkldnn::_linear_pointwise" not in _kernels(lambda: project(sliced, x))
        assert project(sliced, x).shape == (7, 3, 10)
