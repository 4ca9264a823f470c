"""int8: dynamic quantisation of a model's linear layers, in PyTorch and in ONNX Runtime.

Dynamic quantisation stores each ``nn.Linear``'s weight in int8 (one scale per output
channel) and quantises activations on the fly, batch by batch; nothing is calibrated or
retrained, so the int8 model is a pure function of the float32 one. That is how nasbert
stores it: a model folder keeps its float32 weights and says ``"precision": "int8"`` in
its config; :meth:`~nasbert.model.NasBertPreTrainedModel.from_pretrained` quantises on
load (see :func:`~nasbert.model.load_model`), and the latency stage quantises before it
times (``Protocol(dtype="int8")``). Embeddings, LayerNorms and the depthwise
convolutions stay float32: PyTorch's dynamic quantisation has no kernels for them, and
they are a small share of the time (a depthwise convolution costs ``k`` multiplies per
channel against ``h`` for the pointwise map after it).

Quantisation-aware fine-tuning (:mod:`nasbert.compress.qat`) trains inside
:func:`fake_quantized`: every ``nn.Linear`` computes as its dynamic int8 form will (the
weight rounded per output channel by the same observer :func:`quantize` uses, the input
rounded per tensor from its own range, as the dynamic kernel does), with straight-through
gradients; the float32 weights it leaves quantise on load as any others.

>>> int8 = quantize(model)                                   # doctest: +SKIP
>>> quantize_onnx("model.onnx", "model.int8.onnx")           # doctest: +SKIP
>>> with fake_quantized(model): trainer.train()              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = ("float32", "int8")


def quantize(model: nn.Module, *, per_channel: bool = True, inplace: bool = False
             ) -> nn.Module:
    """``model`` (float32, CPU) with every ``nn.Linear`` dynamically quantised to int8
    (per output channel by default, else one scale per tensor); in eval mode."""
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    if not inplace:
        model = copy.deepcopy(model)
    model = model.float().cpu().eval()  # where it left fine-tuning (a GPU, say)
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    # torch 2.13 warns that torch.ao.quantization and the quantised dtypes will move to
    # torchao (once per call and per quantised tensor); it is still the API this torch
    # ships and documents for eager dynamic quantisation
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"(?s).*quantized tensor creation functions")
        return quantize_dynamic(model, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)


class _FakeQuantWeight(nn.Module):
    """A parametrisation: the weight as per-channel int8 will hold it (symmetric, one
    scale per output channel: the dynamic qconfig's own observer computes it)."""

    def __init__(self, per_channel: bool):
        super().__init__()
        self.per_channel = per_channel

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

        qconfig = per_channel_dynamic_qconfig if self.per_channel else default_dynamic_qconfig
        observer = qconfig.weight()
        observer(weight.detach())
        scale, zero = observer.calculate_qparams()
        if self.per_channel:
            return torch.fake_quantize_per_channel_affine(
                weight, scale.to(weight), zero.to(weight.device, torch.int32), 0,
                observer.quant_min, observer.quant_max)
        return torch.fake_quantize_per_tensor_affine(
            weight, float(scale), int(zero), observer.quant_min, observer.quant_max)


def _round_input(x: torch.Tensor, levels: int) -> torch.Tensor:
    """``x`` as a dynamic kernel quantises it: uint8 over its own range (zero included)
    with ``levels`` steps."""
    low = torch.clamp(x.detach().min(), max=0.0)
    high = torch.clamp(x.detach().max(), min=0.0)
    scale = torch.clamp((high - low) / levels, min=1e-8)
    zero = torch.clamp(torch.round(-low / scale), 0, levels).to(torch.int32)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, levels)


@functools.cache
@torch.no_grad()
def activation_levels() -> int:
    """How many steps this machine's dynamic int8 kernel quantises activations to: 127
    where it reduces the range (fbgemm), 255 where it does not (oneDNN, which the x86
    engine picks on some CPUs). Found by running the real kernel on one small layer."""
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        torch.manual_seed(0)
        layer = nn.Linear(64, 16)
        x = torch.randn(8, 64)
    with _fake_quant_weights(layer):
        simulated = {n: F.linear(_round_input(x, n), layer.weight, layer.bias)
                     for n in (127, 255)}
    real = quantize(nn.Sequential(layer))(x)  # the root module itself is never swapped
    return min(simulated, key=lambda n: float((simulated[n] - real).abs().max()))


def _fake_quant_input(module: nn.Module, args: tuple) -> tuple:
    return (_round_input(args[0], activation_levels()), *args[1:])


@contextlib.contextmanager
def _fake_quant_weights(*linears: nn.Linear, per_channel: bool = True) -> Iterator[None]:
    from torch.nn.utils import parametrize

    try:
        for m in linears:
            parametrize.register_parametrization(m, "weight", _FakeQuantWeight(per_channel))
        yield
    finally:
        for m in linears:
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)


@contextlib.contextmanager
def fake_quantized(model: nn.Module, *, per_channel: bool = True) -> Iterator[nn.Module]:
    """Within the block, every ``nn.Linear`` of ``model`` computes as it will after
    :func:`quantize` (weights and inputs rounded to int8's grid, straight-through
    gradients to the float32 weights), so training adapts the weights to the rounding.
    On exit the model is plain float32 again (its state dict unchanged in form)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    activation_levels()  # probed before any weight is rounded
    hooks = []
    try:
        with _fake_quant_weights(*linears, per_channel=per_channel):
            hooks = [m.register_forward_pre_hook(_fake_quant_input) for m in linears]
            yield model
    finally:
        for h in hooks:
            h.remove()


def is_quantized(model: nn.Module) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return any(isinstance(m, DynamicLinear) for m in model.modules())


def quantize_onnx(source: str | Path, target: str | Path, *, per_channel: bool = True) -> Path:
    """ONNX Runtime's dynamic quantisation of an exported graph: MatMul weights in int8
    (per channel by default), activations quantised at run time; written to ``target``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from nasbert.hf.quiet import quiet_logger

    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    # the quantiser suggests its pre-processing (shape inference, its own optimisation
    # pass) on the root logger at every call; results/runtimes.md measured the graphs
    # quantised without it
    with quiet_logger("root"):
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8,
                         per_channel=per_channel, op_types_to_quantize=["MatMul", "Gemm"])
    tmp.replace(target)
    return target
