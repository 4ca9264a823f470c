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

>>> int8 = quantize(model)                                   # doctest: +SKIP
>>> quantize_onnx("model.onnx", "model.int8.onnx")           # doctest: +SKIP
"""

from __future__ import annotations

import copy
import warnings
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
