"""Export an extracted model to ONNX and check it against PyTorch with ONNX Runtime.

>>> report = export_onnx("subnets/a", "subnets/a/model.onnx")  # doctest: +SKIP
>>> report.max_abs_diff < 1e-4                                  # doctest: +SKIP
True
>>> ort_session("subnets/a/model.onnx").run(None, feeds)        # doctest: +SKIP

The graph is optimised with ONNX Runtime's transformer fusions (bias + GELU, residual +
LayerNorm) before it is checked and written; :func:`ort_session` opens it the way it was
measured (``results/runtimes.md``, a 2-core AVX2 EPYC, batch 1: the fused float32 graph
ran 1.21-1.26x faster than PyTorch in float32, its int8 form 1.76-1.82x).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput

from nasbert.errors import ConfigError
from nasbert.extract import check_batch
from nasbert.hf.quiet import quiet_logger, quiet_transformers
from nasbert.model import NasBertModel, load_model
from nasbert.provenance import provenance

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclasses.dataclass(frozen=True)
class ExportReport:
    path: str
    arch: str
    opset: int
    checks: tuple[tuple[int, int, float], ...]  # (batch, sequence, max |onnx - torch|)
    # precision "int8": the quantised graph's relative L2 error against PyTorch's float32
    # output over the checks (the float32 graph is written too, beside it)
    int8_relative_error: float | None = None
    # ONNX Runtime's transformer fusions applied to the graph: fused op -> count
    fusions: tuple[tuple[str, int], ...] = ()

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


def ort_session(path: str | Path, *, threads: int = 0):
    """An ONNX Runtime CPU session on ``path`` with ``threads`` intra-op threads (0: as
    many as torch uses) that sleep between runs. ONNX Runtime's threads spin after a run
    by default, and spinning threads take the cores from whatever runs next in the
    process: PyTorch's forward right after such a session took 2.06x as long as after
    one of these (``results/runtimes.md``, 2 cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxEncoder(nn.Module):
    """An exported encoder (:func:`export_onnx`) run by ONNX Runtime behind the call of a
    :class:`~nasbert.model.NasBertModel`: ``model(input_ids, attention_mask=...)`` gives
    ``last_hidden_state``. Put in a classifier's place (``classifier.nasbert =
    OnnxEncoder(path)``) it evaluates the graph on a task; latency measurement times it
    as any encoder. The session opens on the first call, with as many threads as torch
    has then (inside a latency protocol: the protocol's)."""

    def __init__(self, path: str | Path):
        import onnx

        super().__init__()
        self.path = str(path)
        meta = {p.key: p.value for p in onnx.load(self.path, load_external_data=False)
                .metadata_props}
        if "nasbert.vocab_size" not in meta:
            raise ConfigError("was not written by nasbert's export_onnx (no nasbert.vocab_size "
                              "in its metadata); export the model folder again",
                              source=self.path)
        # what latency measurement reads of a model's config; the graph holds its precision
        self.config = SimpleNamespace(vocab_size=int(meta["nasbert.vocab_size"]),
                                      precision="float32", arch=meta.get("nasbert.arch"))
        self._session = None

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, **_: object) -> BaseModelOutput:
        if self._session is None:
            self._session = ort_session(self.path)
        ids = input_ids.cpu().numpy().astype(np.int64)
        feeds = {"input_ids": ids,
                 "attention_mask": (np.ones_like(ids) if attention_mask is None
                                    else attention_mask.cpu().numpy().astype(np.int64)),
                 "token_type_ids": (np.zeros_like(ids) if token_type_ids is None
                                    else token_type_ids.cpu().numpy().astype(np.int64))}
        out = self._session.run(None, feeds)[0]
        return BaseModelOutput(last_hidden_state=torch.from_numpy(out).to(input_ids.device))


def optimize_graph(proto, *, heads: int = 0, hidden: int = 0):
    """``proto`` with ONNX Runtime's transformer fusions (its Python pass only: the
    session applies its own graph optimisations when it loads), and what it fused.
    ``heads`` and ``hidden`` 0: detected (a searched model's vary by layer)."""
    from onnxruntime.transformers.optimizer import optimize_model

    with quiet_logger("onnxruntime.transformers", "onnx_model", "fusion_base"):
        model = optimize_model(proto, model_type="bert", num_heads=heads, hidden_size=hidden,
                               opt_level=0)
    fused = tuple(sorted((op, n) for op, n in model.get_fused_operator_statistics().items()
                         if n))
    proto = model.model
    if fused and "com.microsoft" not in {o.domain for o in proto.opset_import}:
        proto.opset_import.add(domain="com.microsoft", version=1)  # the fused ops' domain
    return proto, fused


def _example(batch: int, seq: int, vocab: int, seed: int) -> dict[str, Tensor]:
    ids, mask = check_batch(vocab, batch=batch, seq=seq, seed=seed)  # padded rows: traced
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _comparable(got, want, mask: Tensor, model: NasBertModel):
    """What must agree: every position, or with a length configuration (tokens dropped,
    padding behind the kept ones), the rows without padding and every row's [CLS]; the
    padding slots of a shortened row hold whichever tokens the sort put there."""
    if not model.config.length_config:
        return got, want
    full = mask.bool().all(1).numpy()
    return (np.concatenate([got[full].reshape(-1), got[:, 0].reshape(-1)]),
            np.concatenate([want[full].reshape(-1), want[:, 0].reshape(-1)]))


def export_onnx(model_dir: str | Path, out: str | Path, *, opset: int = 18,
                check: bool = True, atol: float = 1e-4, precision: str | None = None,
                int8_rtol: float = 0.1, optimize: bool = True) -> ExportReport:
    """Write ``model_dir``'s encoder as ONNX with dynamic batch and sequence axes;
    ``optimize``: with ONNX Runtime's transformer fusions (:func:`optimize_graph`).

    With ``check``, runs the graph in ONNX Runtime on shapes other than the traced one
    and raises :class:`ConfigError` if it differs from PyTorch by more than ``atol``;
    the output file is written only when the check passes (atomically).

    ``precision`` (default: the folder's): ``"int8"`` also writes ONNX Runtime's dynamic
    quantisation of the graph as ``<out stem>.int8.onnx``, checked against PyTorch's
    float32 output (relative L2 error at most ``int8_rtol``), and reports that path.
    """
    import onnx  # the 'export' extra

    newest = onnx.defs.onnx_opset_version()
    if not 18 <= opset <= newest:  # torch.onnx's exporter writes opset 18 and later
        raise ConfigError(f"must be in [18, {newest}] (torch.onnx's exporter and this onnx), "
                          f"not {opset}", source="export", field="opset")
    if atol <= 0:
        raise ConfigError(f"must be positive, not {atol}", source="export", field="atol")
    with quiet_transformers():  # a classifier's folder: its head is not the encoder's
        model = load_model(model_dir, precision="float32").eval()
    precision = precision or json.loads(
        (Path(model_dir) / "config.json").read_text()).get("precision", "float32")
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
        with warnings.catch_warnings(), torch.no_grad(), quiet_logger("torch.onnx"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                _Encoder(model), tuple(_example(2, 16, vocab, 0).values()), dynamo=True,
                input_names=list(INPUTS), output_names=["last_hidden_state"], opset_version=opset,
                dynamic_shapes={name: {0: batch, 1: seq} for name in INPUTS}, verbose=False)
        proto, fused = program.model_proto, ()
        if optimize:
            proto, fused = optimize_graph(proto)
        meta = {"nasbert.arch": model.config.arch,
                "nasbert.vocab_size": str(model.config.vocab_size),
                "nasbert.fusions": json.dumps(dict(fused)),
                **{f"nasbert.{k}": str(v) for k, v in provenance().items()}}
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        onnx.save(proto, tmp)
        checks = []
        if check:
            session = ort_session(tmp)
            longest = min(128, model.config.max_position_embeddings)
            for b, t in ((1, 7), (3, 33), (4, longest)):
                feeds = _example(b, t, vocab, seed=b * 1000 + t)
                got = session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
                with torch.no_grad():
                    want = model(**feeds).last_hidden_state.numpy()
                got, want = _comparable(got, want, feeds["attention_mask"], model)
                checks.append((b, t, float(abs(got - want).max())))
            worst = max(d for _, _, d in checks)
            if worst > atol:
                raise ConfigError(f"ONNX Runtime differs from PyTorch by {worst:.2e} > {atol:g}; "
                                  "the graph was not written", source=str(out))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if precision != "int8":
        return ExportReport(str(out), model.config.arch, opset, tuple(checks), fusions=fused)
    report = ExportReport(str(out), model.config.arch, opset, tuple(checks), fusions=fused)
    return _export_int8(model, out, report, int8_rtol)


def _export_int8(model: NasBertModel, fp32: Path, report: ExportReport, rtol: float
                 ) -> ExportReport:
    from nasbert.quantize import quantize_onnx

    target = fp32.with_name(f"{fp32.stem}.int8.onnx")
    quantize_onnx(fp32, target)
    session = ort_session(target)
    num = den = 0.0
    for b, t in ((1, 7), (3, 33), (4, min(128, model.config.max_position_embeddings))):
        feeds = _example(b, t, model.config.vocab_size, seed=b * 1000 + t)
        got = session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
        with torch.no_grad():
            want = model(**feeds).last_hidden_state.numpy()
        got, want = _comparable(got, want, feeds["attention_mask"], model)
        num, den = num + float(((got - want) ** 2).sum()), den + float((want ** 2).sum())
    error = (num / den) ** 0.5
    if error > rtol:
        target.unlink()
        raise ConfigError(f"int8 graph differs from PyTorch's float32 by {error:.1%} (relative "
                          f"L2) > {rtol:.0%}; it was not kept", source=str(target))
    return dataclasses.replace(report, path=str(target), int8_relative_error=error)
