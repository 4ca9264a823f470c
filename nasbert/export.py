"""Export an extracted model to ONNX and check it against PyTorch with ONNX Runtime.

>>> report = export_onnx("subnets/a", "subnets/a/model.onnx")  # doctest: +SKIP
>>> report.max_abs_diff < 1e-4                                  # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from nasbert.errors import ConfigError
from nasbert.extract import check_batch
from nasbert.model import NasBertModel, load_model
from nasbert.provenance import provenance

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclasses.dataclass(frozen=True)
class ExportReport:
    path: str
    arch: str
    opset: int
    checks: tuple[tuple[int, int, float], ...]  # (batch, sequence, max |onnx - torch|)

    @property
    def max_abs_diff(self) -> float:
        return max(d for _, _, d in self.checks)


class _Encoder(nn.Module):
    """Positional inputs, one tensor out: the signature ONNX wants."""

    def __init__(self, model: NasBertModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        return self.model(input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


@contextlib.contextmanager
def _quiet(logger_name: str):
    """Silence a library's info and warning logs (the exporter's are noise for users)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _example(batch: int, seq: int, vocab: int, seed: int) -> dict[str, Tensor]:
    ids, mask = check_batch(vocab, batch=batch, seq=seq, seed=seed)  # padded rows: traced
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def export_onnx(model_dir: str | Path, out: str | Path, *, opset: int = 18,
                check: bool = True, atol: float = 1e-4) -> ExportReport:
    """Write ``model_dir``'s encoder as ONNX with dynamic batch and sequence axes.

    With ``check``, runs the graph in ONNX Runtime on shapes other than the traced one
    and raises :class:`ConfigError` if it differs from PyTorch by more than ``atol``;
    the output file is written only when the check passes (atomically).
    """
    import onnx  # the 'export' extra
    import onnxruntime as ort

    model = load_model(model_dir).eval()
    assert isinstance(model, NasBertModel)
    out = Path(out)
    if out.is_dir():
        raise ConfigError("is a directory; give the path of the .onnx file to write",
                          source=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    vocab = model.config.vocab_size
    batch, seq = torch.export.Dim("batch"), torch.export.Dim(
        "sequence", max=model.config.max_position_embeddings)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad(), _quiet("torch.onnx"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                _Encoder(model), tuple(_example(2, 16, vocab, 0).values()), dynamo=True,
                input_names=list(INPUTS), output_names=["last_hidden_state"], opset_version=opset,
                dynamic_shapes={name: {0: batch, 1: seq} for name in INPUTS}, verbose=False)
        proto = program.model_proto
        meta = {"nasbert.arch": model.config.arch,
                **{f"nasbert.{k}": str(v) for k, v in provenance().items()}}
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        onnx.save(proto, tmp)
        checks = []
        if check:
            session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
            longest = min(128, model.config.max_position_embeddings)
            for b, t in ((1, 7), (3, 33), (4, longest)):
                feeds = _example(b, t, vocab, seed=b * 1000 + t)
                got = session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
                with torch.no_grad():
                    want = model(**feeds).last_hidden_state.numpy()
                checks.append((b, t, float(abs(got - want).max())))
            worst = max(d for _, _, d in checks)
            if worst > atol:
                raise ConfigError(f"ONNX Runtime differs from PyTorch by {worst:.2e} > {atol:g}; "
                                  "the graph was not written", source=str(out))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return ExportReport(str(out), model.config.arch, opset, tuple(checks))
