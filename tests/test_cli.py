from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
import typing

import pytest

from nasbert.cli import (
    _VERBS,
    _budgets,
    _configs,
    _overrides,
    _run_given,
    _unoptional,
    build_parser,
    main,
)

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
    (["train-supernet", "r", "--recipe", "quickstar"], "is neither a file nor a shipped supernet"),
    (["extract", str(SPACES / "tiny.yaml"), "--arch", "E16|H16:M,Q|H24:S3,I", "--out", "x"],
     "unknown operation 'Q'"),
    (["extract", str(SPACES / "tiny.yaml"), "--arch", "E99|H16:M,F|H24:S3,I", "--out", "x"],
     "embedding size 99"),
    (["export", "no_such_dir", "--onnx", "x.onnx"], "no_such_dir: is not a directory"),
    (["export", "no_such_dir", "--onnx", "x.onnx", "--opset", "13"], "opset: must be in [18,"),
    (["extract", str(SPACES / "tiny.yaml"), "--arch", "", "--out", "x"], "does not parse"),
    (["space", "sample", str(SPACES / "tiny.yaml"), "-n", "-3"], "-n: must be at least 1"),
    (["train-supernet", "r", "--recipe", "quickstart", "--batch-size", "0"],
     "train.batch_size: must be positive"),
    (["train-supernet", "r", "--recipe", "quickstart", "--set", "train.max_steps=-1"],
     "with --set train.max_steps=-1"),
    (["train-supernet", "r", "--recipe", "quickstart", "--workers", "0"],
     "scaling.workers: must be positive"),
    (["latency", "profile", "r", "--timing-batch", "0"], "batch: must be at least 1"),
    (["latency", "profile", "r", "--timing-repeats", "0"], "repeats: must be at least 1"),
    (["latency", "profile", "r", "--samples", "-1"], "samples: must be 0 or more"),
    (["search", "r", "--latency-ms", "5", "--top-k", "0"], "top_k: must be at least 1"),
    (["finetune", "r", "--task", "sst2", "--max-train-examples", "0"],
     "max_train_examples: must be positive"),
    (["finetune", "r", "--task", "sst2", "--lr", "fast"], "lr: 'fast' is not a float"),
    (["finetune", "r", "--task", "sst2", "--set", "nonsense=1"], "unknown key 'nonsense'"),
    (["query", "r", "--timing-device", "tpu"], "invalid choice: 'tpu'"),
    (["query", "r", "--set", "batch=8"], "names no section here; give one of timing"),
    (["query", "r"], "give a budget"),
    (["search", "r", "--latency-ms", "fast"], "'fast' is not a number"),
    (["query", "r", "--latency-ms", "4", "8", "--export", "out"], "give one budget"),
    (["deploy", "r", "--task", "sst2", "--length-trials", "5"],
     "--length-trials: applies with --length-adaptive only; add --length-adaptive"),
    (["sweep", "r", "--task", "sst2", "--sweep-lr", "1e-3", "1e-5"], "sweep.lr: must be"),
    (["train-supernet", "r"], "give the recipe"),
    (["deploy", "r", "--task", "squad", "--quantisation-aware"], "drop --quantisation-aware"),
    (["ngram", "r", "--task", "conll2003"], "does not apply to answer spans or per-token"),
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
        (["train-supernet", "afile", "--recipe", "quickstart", "--max-steps", "1"], "is a file"),
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


# ----------------------------------------------------------------------------- the grammar


@pytest.mark.parametrize("verb", sorted(_VERBS))
def test_every_verb_has_its_help(verb, capsys):
    assert main([*verb.split(), "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: nasbert {verb} ") and "options:" in out


def _leaves(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _unoptional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            yield from _leaves(tp, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


@pytest.mark.parametrize("verb", sorted(_VERBS))
def test_every_field_of_every_config_a_verb_takes_is_a_flag(verb):
    p = argparse.ArgumentParser()
    _VERBS[verb][1](p)
    for section in p.get_default("sections") or []:
        flags = {key for _, key, _, _ in section.entries}
        assert flags == set(_leaves(section.cls)) - set(section.skip), section.name
        spelled = [flag for _, _, _, flag in section.entries]
        assert len(spelled) == len(set(spelled))


def _parsed(argv):
    args = build_parser(argv).parse_args(argv)
    if args.command == "train-supernet":  # its config is the recipe file, with flags over it
        from nasbert.recipe import load_recipe

        return args, load_recipe(args.recipe, _overrides(args, args.sections[0]))
    return args, _configs(args)


def test_flags_and_set_round_trip_into_the_dataclasses():
    from nasbert.finetune.augment import AugmentConfig
    from nasbert.finetune.config import FinetuneConfig
    from nasbert.pipeline import QuickstartConfig

    _, configs = _parsed(["finetune", "r", "--task", "sst2", "--lr", "3e-5", "--set",
                          "epochs=2", "--augment-per-example", "4", "--no-group-by-length",
                          "--init", "extracted", "--set", "max_dev_examples=50"])
    assert configs == {"": FinetuneConfig(lr=3e-5, epochs=2,
                                          augment=AugmentConfig(per_example=4),
                                          group_by_length=False, init="extracted",
                                          max_dev_examples=50)}
    # a flag wins over --set; lists take several values; a string stays as typed
    _, configs = _parsed(["ngram", "r", "--task", "sst2", "--set", "lr=0.5", "--lr", "0.2",
                          "--texts", "a.txt", "hf:x", "--token-pattern", "[a-z]+",
                          "--mlp-sizes", "64", "32", "--max-n", "2", "--timing-batch", "4"])
    ngram, timing = configs[""], configs["timing"]
    assert (ngram.lr, ngram.texts, ngram.mining.token_pattern, ngram.mlp_sizes,
            ngram.mining.max_n, timing.batch) == (0.2, ("a.txt", "hf:x"), "[a-z]+", (64, 32),
                                                  2, 4)
    _, configs = _parsed(["sweep", "r", "--task", "sst2", "--sweep-trials", "7",
                          "--sweep-lr", "1e-5", "1e-3", "--sweep-epochs", "1", "2",
                          "--address", "auto", "--set", "sweep.grace_period=2"])
    sweep = configs["sweep"]
    assert (sweep.trials, sweep.lr, sweep.epochs, sweep.address, sweep.grace_period) == \
        (7, (1e-5, 1e-3), (1, 2), "auto", 2)
    _, configs = _parsed(["deploy", "r", "--task", "sst2", "--length-adaptive",
                          "--length-grid", "0.5", "1", "--length-drop-epochs", "0.5",
                          "--quantisation-aware", "--qat-lr", "2e-5", "--bound-quantile",
                          "0.8", "--timing-dtype", "int8"])
    assert (configs["length"].grid, configs["length_drop"].epochs, configs["qat"].lr,
            configs["qat"].threshold, configs["bound"].quantile, configs["timing"].dtype) == \
        ((0.5, 1.0), 0.5, 2e-5, 0.01, 0.8, "int8")
    _, configs = _parsed(["distill", "r", "--tokens", "100", "--freeze-embeddings",
                          "--workers", "2", "--device", "cuda"])
    assert (configs[""].tokens, configs[""].freeze_embeddings, configs["scaling"].workers,
            configs["scaling"].use_gpu) == (100, True, 2, True)
    # a nested config keeps the defaults of the config it sits in (the quickstart's
    # stage one is not DistillConfig()'s)
    _, configs = _parsed(["quickstart", "--distill-lr", "1e-3", "--finetune-epochs", "1",
                          "--ngram-mining-max-n", "2", "--device", "cuda"])
    quick, default = configs[""], QuickstartConfig()
    assert quick == dataclasses.replace(
        default, gpu=True, distill=dataclasses.replace(default.distill, lr=1e-3),
        finetune=dataclasses.replace(default.finetune, epochs=1.0),
        ngram=dataclasses.replace(default.ngram, mining=dataclasses.replace(
            default.ngram.mining, max_n=2)))


def test_recipe_flags_land_in_the_recipe():
    from nasbert.recipe import load_recipe
    from nasbert.schema import to_dict

    argv = ["train-supernet", "r", "--recipe", "quickstart", "--lr", "3e-4", "--workers", "2",
            "--shrink-bins", "4", "--set", "train.max_steps=7", "--corpus-sources", "bbc",
            "--no-shrink-enabled"]
    args = build_parser(argv).parse_args(argv)
    recipe = load_recipe(args.recipe, _overrides(args, args.sections[0]))
    base = to_dict(load_recipe("quickstart"))
    assert to_dict(recipe) == {**base,
                               "train": {**base["train"], "lr": 3e-4, "max_steps": 7},
                               "scaling": {**base["scaling"], "workers": 2},
                               "shrink": {**base["shrink"], "bins": 4, "enabled": False},
                               "corpus": {**base["corpus"], "sources": ["bbc"]}}


def _comparable(args):
    out = {k: v for k, v in vars(args).items() if not k.startswith("config:") and k != "sections"}
    if out.get("latency_ms"):
        out["latency_ms"] = _budgets(args)
    if "old_run" in out and out["command"] != "train-supernet":
        out["run"] = _run_given(args, out["command"])
        del out["old_run"]
    return out


@pytest.mark.parametrize("old, new", [
    (["search", "r", "--latency-ms", "4,8", "--trials", "5", "--batch", "8", "--seq", "64",
      "--threads", "2", "--warmup", "1", "--repeats", "3", "--rounds", "2",
      "--precision", "int8"],
     ["search", "r", "--latency-ms", "4", "8", "--search-trials", "5", "--timing-batch", "8",
      "--timing-seq", "64", "--timing-threads", "2", "--timing-warmup", "1",
      "--timing-repeats", "3", "--timing-rounds", "2", "--timing-dtype", "int8"]),
    (["latency", "fit", "r", "--gpu"], ["latency", "fit", "r", "--timing-device", "cuda"]),
    (["query", "r", "--task", "sst2", "--latency-ms", "3", "--gpu"],
     ["query", "r", "--task", "sst2", "--latency-ms", "3", "--timing-device", "cuda"]),
    (["sweep", "r", "--task", "sst2", "--trials", "4", "--cpus-per-trial", "2"],
     ["sweep", "r", "--task", "sst2", "--sweep-trials", "4", "--sweep-cpus-per-trial", "2"]),
    (["deploy", "r", "--task", "sst2", "--length-adaptive", "--trials", "9",
      "--quantisation-aware", "2"],
     ["deploy", "r", "--task", "sst2", "--length-adaptive", "--length-trials", "9",
      "--quantisation-aware", "--qat-threshold", "0.02"]),
    (["ngram", "r", "--task", "sst2", "--text", "a", "--text", "b", "--dim", "64",
      "--augment", "3", "--batch", "2"],
     ["ngram", "r", "--task", "sst2", "--texts", "a", "b", "--hidden-size", "64",
      "--augment-per-example", "3", "--timing-batch", "2"]),
    (["distill", "r", "--gpu"], ["distill", "r", "--device", "cuda"]),
    (["train-supernet", "r", "--recipe", "quickstart", "--gpu"],
     ["train-supernet", "r", "--recipe", "quickstart", "--device", "cuda"]),
    (["quickstart", "--run", "runs/x", "--gpu"], ["quickstart", "runs/x", "--device", "cuda"]),
])
def test_old_spellings_still_work_and_warn(old, new, capsys):
    old_args, old_configs = _parsed(old)
    before = _comparable(old_args)
    warned = capsys.readouterr().err.strip().splitlines()
    new_args, new_configs = _parsed(new)
    after = _comparable(new_args)
    assert capsys.readouterr().err == ""
    assert old_configs == new_configs and before == after
    assert warned and all(line.startswith("nasbert: warning: --") and " is deprecated " in line
                          for line in warned), warned


def test_train_supernet_in_the_old_order_warns_and_still_reads_the_recipe(tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train-supernet", "quickstar", "--run", "r"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("nasbert: warning: --run is deprecated")
    assert len(lines) == 2 and "quickstar: is neither a file nor a shipped supernet" in lines[1]


def test_query_imports_no_torch_and_answers_fast(tmp_path):
    """The whole command line of ``query`` up to its answer (here: that the run holds no
    search results), in a fresh interpreter: no torch, and well under 1.5 s."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "nasbert", "query",
                           str(tmp_path / "run"), "--latency-ms", "5", "--timing-batch", "2"],
                          capture_output=True, text=True)
    took = time.perf_counter() - t
    lines = proc.stderr.splitlines()
    modules = {line.rsplit("|", 1)[-1].strip() for line in lines
               if line.startswith("import time:")}
    errors = [line for line in lines if not line.startswith("import time:")]
    assert proc.returncode == 2 and len(errors) == 1 and "holds no search results" in errors[0]
    assert {"nasbert.latency.protocol", "nasbert.search.searchers"} <= modules
    assert not {m for m in modules if m.split(".")[0] == "torch"}
    assert took < 1.5, took
