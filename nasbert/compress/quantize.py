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
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
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
    model = model.float().eval()
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
                weight, scale.to(weight.dtype), zero.to(torch.int32), 0,
                observer.quant_min, observer.quant_max)
        return torch.fake_quantize_per_tensor_affine(
            weight, float(scale), int(zero), observer.quant_min, observer.quant_max)


def _fake_quant_input(module: nn.Module, args: tuple) -> tuple:
    """The input as the dynamic kernel quantises it: uint8 over its own range (zero
    included) with the reduced range (7 bits) fbgemm uses for dynamic activations."""
    x = args[0]
    low = torch.clamp(x.detach().min(), max=0.0)
    high = torch.clamp(x.detach().max(), min=0.0)
    scale = torch.clamp((high - low) / 127.0, min=1e-8)
    zero = torch.clamp(torch.round(-low / scale), 0, 127).to(torch.int32)
    return (torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 127), *args[1:])


@contextlib.contextmanager
def fake_quantized(model: nn.Module, *, per_channel: bool = True) -> Iterator[nn.Module]:
    """Within the block, every ``nn.Linear`` of ``model`` computes as it will after
    :func:`quantize` (weights and inputs rounded to int8's grid, straight-through
    gradients to the float32 weights), so training adapts the weights to the rounding.
    On exit the model is plain float32 again (its state dict unchanged in form)."""
    from torch.nn.utils import parametrize

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    hooks = []
    try:
        for m in linears:
            parametrize.register_parametrization(m, "weight", _FakeQuantWeight(per_channel))
            hooks.append(m.register_forward_pre_hook(_fake_quant_input))
        yield model
    finally:
        for h in hooks:
            h.remove()
        for m in linears:
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)


def is_quantized(model: nn.Module) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return any(isinstance(m, DynamicLinear) for m in model.modules())


def quantize_onnx(source: str | Path, target: str | Path, *, per_channel: bool = True) -> Path:
    """ONNX Runtime's dynamic quantisation of an exported graph: MatMul weights in int8
    (per channel by default), activations quantised at run time; written to ``target``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8,
                     per_channel=per_channel, op_types_to_quantize=["MatMul", "Gemm"])
    tmp.replace(target)
    return target
