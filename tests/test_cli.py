from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nasbert.cli import main

from conftest import SPACES


def test_space_show(capsys):
    assert main(["space", "show", "minilm_l6"]) == 0  # a shipped space, by name
    out = capsys.readouterr().out
    assert "7,309,188,968,448 architectures" in out
    assert "largest       E384" + "|H384:F,F" * 6 in out


def test_space_sample(capsys):
    from nasbert import Arch, SearchSpace

    assert main(["space", "sample", str(SPACES / "tiny.yaml"), "-n", "5", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.split()
    space = SearchSpace.from_yaml(SPACES / "tiny.yaml")
    assert len(lines) == 5 and all(space.validate(Arch.parse(line)) for line in lines)


def test_extract_then_export(tmp_path, capsys):
    out = tmp_path / "sub"
    assert main(["extract", str(SPACES / "tiny.yaml"), "--arch", "E16|H16:M,F|H24:S3,I",
                 "--out", str(out)]) == 0
    assert "max |diff|" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    record = json.loads((out / "nasbert.json").read_text())
    assert record["arch"] == "E16|H16:M,F|H24:S3,I" and record["max_abs_diff"] < 1e-5
    assert "E16|H16:M,F|H24:S3,I" in (out / "README.md").read_text()
    assert main(["export", str(out), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 0


@pytest.mark.parametrize("args, words", [
    (["space", "show", "missing.yaml"], "missing.yaml: no such file"),
    (["space", "show", "minilm_l7"], "minilm_l7: is neither a file nor a shipped search space"),
    (["train-supernet", "quickstar", "--run", "r"], "is neither a file nor a shipped supernet"),
    (["extract", str(SPACES / "tiny.yaml"), "--arch", "E16|H16:M,Q|H24:S3,I", "--out", "x"],
     "unknown operation 'Q'"),
    (["extract", str(SPACES / "tiny.yaml"), "--arch", "E99|H16:M,F|H24:S3,I", "--out", "x"],
     "embedding size 99"),
    (["export", "no_such_dir", "--onnx", "x.onnx"], "no_such_dir: is not a directory"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, words):
    proc = subprocess.run([sys.executable, "-m", "nasbert", *args], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasbert: error:") and words in lines[0]
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("order", ["nasbert first", "transformers first"])
def test_import_is_light_and_registers_the_auto_classes(tmp_path, order):
    from nasbert import SearchSpace, Supernet

    Supernet(SearchSpace.from_yaml(SPACES / "tiny.yaml")).extract(
        "E16|H16:M,F|H24:S3,I").save_pretrained(tmp_path)
    if order == "nasbert first":  # and importing it pulls in neither torch nor transformers
        head = "import sys; import nasbert; light = 'torch' not in sys.modules; "
    else:
        head = "from transformers import AutoModel; import nasbert; light = True; "
    code = (head + "from transformers import AutoConfig, AutoModel; "
            f"m = AutoModel.from_pretrained({str(tmp_path)!r}); "
            f"print(light, type(AutoConfig.from_pretrained({str(tmp_path)!r})).__name__, "
            "type(m).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["True", "NasBertConfig", "NasBertModel"], out.stderr
