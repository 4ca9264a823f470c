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
    (["export", "no_such_dir", "--onnx", "x.onnx", "--opset", "13"], "opset: must be in [18,"),
    (["extract", str(SPACES / "tiny.yaml"), "--arch", "", "--out", "x"], "does not parse"),
    (["space", "sample", str(SPACES / "tiny.yaml"), "-n", "-3"], "-n: must be at least 1"),
    (["train-supernet", "quickstart", "--run", "r", "--batch-size", "0"],
     "train.batch_size: must be positive"),
    (["train-supernet", "quickstart", "--run", "r", "--set", "train.max_steps=-1"],
     "with --set train.max_steps=-1"),
    (["train-supernet", "quickstart", "--run", "r", "--workers", "0"],
     "scaling.workers: must be positive"),
    (["latency", "profile", "r", "--batch", "0"], "batch: must be at least 1"),
    (["latency", "profile", "r", "--repeats", "0"], "repeats: must be at least 1"),
    (["latency", "profile", "r", "--samples", "-1"], "samples: must be 0 or more"),
    (["search", "r", "--latency-ms", "5", "--top-k", "0"], "top_k: must be at least 1"),
    (["finetune", "r", "--task", "sst2", "--max-train-examples", "0"],
     "max_train_examples: must be positive"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, args, words):
    monkeypatch.chdir(tmp_path)  # in this process: the same main() the console script runs
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasbert: error:") and words in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_an_output_never_destroys_what_is_not_an_earlier_output(tmp_path, monkeypatch, capsys):
    """``--out`` / ``--export`` / ``--onnx``: a file, a folder of other things, the input,
    a run's own folders and the current folder are refused before any work, untouched."""
    monkeypatch.chdir(tmp_path)
    tiny = str(SPACES / "tiny.yaml")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    (tmp_path / "afile").write_text("keep me too")
    run = tmp_path / "run"
    (run / "supernet" / "final").mkdir(parents=True)
    (run / "run.yaml").write_text("recipe: {}\n")
    (run / "supernet" / "final" / "weights").write_text("trained")
    cases = [
        (["extract", tiny, "--out", "notes"], "exists and is not a model folder"),
        (["extract", tiny, "--out", "afile"], "is a file"),
        (["extract", tiny, "--out", "."], "is the current folder"),
        (["extract", tiny, "--out", str(run / "supernet" / "final")], "inside the run directory"),
        (["query", str(run), "--latency-ms", "5", "--export", str(run / "supernet" / "final")],
         "inside the run directory"),
        (["query", str(run / "supernet"), "--latency-ms", "5", "--export", str(run)],
         "would overwrite the input"),
        (["compress", "notes", "--out", "notes", "--method", "svd", "--ratio", "2"],
         "would overwrite the input"),
        (["export", "notes", "--onnx", "notes"], "is a folder"),
        (["train-supernet", "quickstart", "--run", "afile", "--max-steps", "1"], "is a file"),
    ]
    before = sorted((p.relative_to(tmp_path), p.is_file() and p.read_text())
                    for p in tmp_path.rglob("*"))
    for args, words in cases:
        assert main(args) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (args, lines)
    assert sorted((p.relative_to(tmp_path), p.is_file() and p.read_text())
                  for p in tmp_path.rglob("*")) == before
    # an earlier output of the same kind is replaced, as before
    assert main(["extract", tiny, "--arch", "E16|H16:M,F|H24:S3,I", "--out", "sub"]) == 0
    assert main(["extract", tiny, "--arch", "E16|H16:M,F|H24:S3,I", "--out", "sub"]) == 0


def test_the_process_exits_2_with_one_line_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nasbert", "space", "show", "missing.yaml"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "nasbert: error: missing.yaml: no such file; check the path"]


_ORDERS = {  # what a user's program imports, in order, before the Auto classes
    "nasbert first": "import sys; import nasbert; light = 'torch' not in sys.modules; ",
    "transformers first": "from transformers import AutoModel; import nasbert; light = True; ",
    # BertConfig and BertModel import the auto modeling module from decorators, while
    # they are themselves half-imported: the low-rank BERT must wait for them
    "BertConfig after nasbert": "import nasbert; from transformers import BertConfig; light = 1; ",
    "BertModel after nasbert": "import nasbert; from transformers import BertModel; light = 1; ",
}


def test_import_is_light_and_registers_the_auto_classes(tmp_path):
    from transformers import BertConfig

    from nasbert import SearchSpace, Supernet
    from nasbert.compress.lowrank import LowRankBertConfig, LowRankBertModel

    Supernet(SearchSpace.from_yaml(SPACES / "tiny.yaml")).extract(
        "E16|H16:M,F|H24:S3,I").save_pretrained(tmp_path / "nas")
    tiny = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=16).to_dict()
    LowRankBertModel(LowRankBertConfig(**{**tiny, "low_rank": {
        "encoder.layer.0.intermediate.dense": 2}})).save_pretrained(tmp_path / "lowrank")
    tail = ("from transformers import AutoConfig, AutoModel; print(bool(light)); "
            f"[print(type(AutoConfig.from_pretrained(d)).__name__, "
            f"type(AutoModel.from_pretrained(d)).__name__) for d in "
            f"({str(tmp_path / 'nas')!r}, {str(tmp_path / 'lowrank')!r})]")
    # each order needs a fresh interpreter; they run side by side
    procs = {order: subprocess.Popen([sys.executable, "-c", head + tail], text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for order, head in _ORDERS.items()}
    for order, proc in procs.items():
        out, err = proc.communicate()
        assert out.split() == ["True", "NasBertConfig", "NasBertModel", "LowRankBertConfig",
                               "LowRankBertModel"], (order, err)
