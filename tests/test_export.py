from __future__ import annotations

import json

import onnx
import pytest
import torch

from nasbert import ConfigError, Supernet
from nasbert.export import _example, export_onnx, ort_session


@pytest.fixture(scope="module")
def model_dir(minilm_space, tmp_path_factory):
    torch.manual_seed(0)
    net = Supernet(minilm_space, vocab_size=2000)
    path = tmp_path_factory.mktemp("subnet")
    net.extract("E128|H256:M,F,S5,F|H192:S3,M,F,I|H384:M,F,S7,M").save_pretrained(path)
    return path


def test_onnx_matches_torch_on_dynamic_shapes(model_dir, tmp_path):
    out = tmp_path / "model.onnx"
    report = export_onnx(model_dir, out)
    # checked at shapes other than the traced (2, 16), with padding
    assert {(b, t) for b, t, _ in report.checks} == {(1, 7), (3, 33), (4, 128)}
    assert report.max_abs_diff < 1e-4
    graph = onnx.load(out)
    dims = [d.dim_param for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert all(dims), f"batch and sequence axes must be symbolic, got {dims}"
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["nasbert.arch"].startswith("E128|") and "nasbert.torch" in meta
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary left
    # ONNX Runtime's fusions ran: the bias + GELU of each feed-forward (4 F) and
    # separable convolution (3 S), and the residual + LayerNorm after the layers, are
    # single ops in the written graph
    fused = dict(report.fusions)
    ops = [n.op_type for n in graph.graph.node]
    assert fused.get("BiasGelu") == ops.count("BiasGelu") == 7
    assert fused.get("SkipLayerNormalization", 0) >= 10 and "Gelu" not in ops
    assert json.loads(meta["nasbert.fusions"]) == fused


def test_unoptimized_export_computes_the_same(model_dir, tmp_path):
    plain = export_onnx(model_dir, tmp_path / "plain.onnx", optimize=False)
    fused = export_onnx(model_dir, tmp_path / "fused.onnx")
    assert plain.fusions == () and plain.max_abs_diff < 1e-4
    assert "BiasGelu" not in [n.op_type for n in onnx.load(tmp_path / "plain.onnx").graph.node]
    feeds = {k: v.numpy() for k, v in _example(2, 50, 2000, seed=5).items()}
    a = ort_session(tmp_path / "plain.onnx").run(None, feeds)[0]
    b = ort_session(tmp_path / "fused.onnx").run(None, feeds)[0]
    assert abs(a - b).max() < 1e-4 and fused.fusions


def test_export_refuses_a_broken_model_dir(model_dir, tmp_path):
    with pytest.raises(ConfigError, match="is missing"):
        export_onnx(tmp_path, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
