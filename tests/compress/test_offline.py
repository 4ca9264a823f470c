"""Offline compression (``nasbert compress``): low-rank factorisation by autoencoder and
SVD, and Fisher pruning with least-squares tuning, on tiny BERT classifiers."""

from __future__ import annotations

import json

import pytest
import torch

from nasbert.cli import main

from conftest import _write_tiny_teacher, write_glue_task


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A tiny BERT sequence classifier (random weights) with its tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    folder = _write_tiny_teacher(tmp_path_factory.mktemp("clf"))
    config = BertConfig.from_pretrained(folder)
    config.num_labels = 2
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def mrpc(tmp_path_factory):
    return write_glue_task(tmp_path_factory.mktemp("glue"), "mrpc", train=48, dev=16)


def _model(folder):
    from transformers import AutoModelForSequenceClassification

    import nasbert  # noqa: F401 - registers nasbert's model types

    return AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()


def _batches(folder, mrpc, n=48):
    from transformers import AutoTokenizer

    from nasbert.compress.offline import OfflineConfig, calibration_batches
    from nasbert.data.tasks import load_task

    data = load_task("mrpc", mrpc)
    return calibration_batches(AutoTokenizer.from_pretrained(str(folder)), data.split("train"),
                               OfflineConfig("svd", ratio=2, calibration=n, batch_size=16))


def _logits(model, batches):
    with torch.no_grad():
        return torch.cat([model(**b).logits for b in batches])


@pytest.mark.parametrize("method", ["svd", "autoencoder"])
def test_full_rank_factorisation_is_exact(classifier_dir, mrpc, method):
    from nasbert.compress import lowrank

    model, batches = _model(classifier_dir), _batches(classifier_dir, mrpc)
    linears = lowrank.encoder_linears(model.base_model)
    full = {n: min(m.in_features, m.out_features) for n, m in linears.items()}
    stats = lowrank.output_statistics(model, linears, batches) if method == "autoencoder" else None
    out = lowrank.factorize(model, full, method, stats)
    assert isinstance(out.bert.encoder.layer[0].attention.self.query, lowrank.LowRankLinear)
    assert torch.allclose(_logits(out, batches), _logits(model, batches), atol=1e-4)


def test_the_autoencoder_reconstructs_a_layers_outputs_better_than_svd(classifier_dir, mrpc):
    """PCA of the outputs is the best rank-k affine map of them on the calibration data;
    SVD is best for the weight, not for what the layer computes."""
    from nasbert.compress import lowrank

    model, batches = _model(classifier_dir), _batches(classifier_dir, mrpc)
    name = "encoder.layer.0.intermediate.dense"
    linear = model.base_model.get_submodule(name)
    stats = lowrank.output_statistics(model, {name: linear}, batches)
    inputs = []
    hook = linear.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    _logits(model, batches)
    hook.remove()
    x = torch.cat([i.reshape(-1, i.shape[-1]) for i in inputs]).double()
    y = x @ linear.weight.double().T + linear.bias.double()
    errors = {}
    for method in ("svd", "autoencoder"):
        f = (lowrank.svd_factors(linear, 8) if method == "svd"
             else lowrank.autoencoder_factors(linear, 8, *stats[name]))
        approx = x @ f["down.weight"].T @ f["up.weight"].T + f["up.bias"]
        errors[method] = (approx - y).pow(2).mean().item()
    assert errors["autoencoder"] < errors["svd"]


def test_ranks_remove_what_was_asked(classifier_dir):
    from nasbert.compress import lowrank

    model = _model(classifier_dir)
    linears = lowrank.encoder_linears(model.base_model)
    weights = sum(m.weight.numel() + m.bias.numel() for m in linears.values())
    for saved in (weights // 4, weights // 2):
        ranks = lowrank.ranks_for(linears, saved)
        removed = sum(m.weight.numel() + m.bias.numel() - lowrank.LowRankLinear.params(
            m.in_features, m.out_features, ranks[n]) for n, m in linears.items())
        assert saved <= removed < saved + weights // 10
    with pytest.raises(ValueError, match="rank 1"):
        lowrank.ranks_for(linears, weights)


def _importance(model, batches):
    from nasbert.importance import score

    keys = ("input_ids", "attention_mask", "token_type_ids")
    return score(model, [tuple(b[k] for k in keys) for b in batches], target="logits")


def test_pruned_model_written_as_nasbert_equals_the_masked_bert(classifier_dir, mrpc):
    from nasbert.compress import prune
    from nasbert.model import NasBertForSequenceClassification

    model, batches = _model(classifier_dir), _batches(classifier_dir, mrpc)
    imp = _importance(model, batches)
    head_cost, neuron_cost = prune.unit_costs(model)
    saved = 3 * head_cost + 100 * neuron_cost
    kept = prune.select(imp, model, saved)
    removed = (sum(4 - len(h) for h in kept.heads) * head_cost
               + sum(128 - len(n) for n in kept.neurons) * neuron_cost)
    assert removed >= saved
    # the least important go: every removed unit scores at most what a kept one of its kind does
    for scores, keep in ((imp.heads, kept.heads), (imp.neurons, kept.neurons)):
        flat, mask = torch.cat(scores), torch.cat(
            [torch.isin(torch.arange(len(s)), k) for s, k in zip(scores, keep)])
        if mask.any() and (~mask).any():
            assert flat[~mask].max() <= flat[mask].min()
    out = prune.to_nasbert(model, kept)
    assert isinstance(out, NasBertForSequenceClassification)
    with torch.no_grad():  # the reference: the BERT with removed units' columns zeroed
        for k, layer in enumerate(model.bert.encoder.layer):
            hs, ns = prune._scales(kept, k, 4, 128)
            layer.attention.output.dense.weight.mul_(hs.repeat_interleave(8))
            layer.output.dense.weight.mul_(ns)
    assert torch.allclose(_logits(out, batches), _logits(model, batches), atol=1e-5)


def test_least_squares_tuning_brings_the_pruned_model_nearer_the_original(classifier_dir, mrpc):
    from nasbert.compress import prune

    model, batches = _model(classifier_dir), _batches(classifier_dir, mrpc)
    imp = _importance(model, batches)
    head_cost, neuron_cost = prune.unit_costs(model)
    kept = prune.select(imp, model, 3 * head_cost + 120 * neuron_cost)
    def encoded(m):  # the encoder's output: what the layer-wise refit reconstructs
        with torch.no_grad():
            return torch.cat([m.base_model(**b).last_hidden_state[:, 0] for b in batches])

    reference = encoded(model)
    plain = encoded(prune.to_nasbert(model, kept))
    tuned_kept = prune.tune(model, kept, batches)
    assert any(not torch.allclose(s, torch.ones_like(s)) for s in tuned_kept.neuron_scale)
    tuned = encoded(prune.to_nasbert(model, tuned_kept))
    assert (tuned - reference).pow(2).mean() < 0.8 * (plain - reference).pow(2).mean()
    assert torch.equal(encoded(model), reference)  # the original is untouched


@pytest.mark.parametrize("method", ["autoencoder", "svd", "prune"])
def test_compress_writes_a_model_folder_of_the_asked_size(classifier_dir, mrpc, tmp_path, method,
                                                          capsys):
    out = tmp_path / "small"
    assert main(["compress", str(classifier_dir), "--out", str(out), "--method", method,
                 "--ratio", "2", "--task", "mrpc", "--data-dir", str(mrpc),
                 "--calibration", "32"]) == 0
    assert "wrote" in capsys.readouterr().out
    model = _model(out)
    cfg = json.loads((out / "config.json").read_text())
    record = cfg["provenance"]
    assert record["method"] == method and record["source"] == str(classifier_dir)
    assert record["after"]["params"] == sum(p.numel() for p in model.base_model.parameters())
    assert record["ratio"] >= 2.0 - 1e-6 and record["ratio"] < 2.6
    assert (out / "tokenizer_config.json").is_file()
    batches = _batches(out, mrpc, 16)
    logits = _logits(model, batches)
    assert logits.shape == (16, 2) and torch.isfinite(logits).all()


@pytest.mark.parametrize("argv, message", [
    (["--method", "autoencoder", "--ratio", "2"], "calibration text"),
    (["--method", "svd", "--ratio", "1"], "above 1"),
    (["--method", "svd", "--params-m", "500"], "not below"),
    (["--method", "svd", "--params-m", "0.001"], "embeddings"),
])
def test_bad_compress_requests_are_one_line_errors(classifier_dir, tmp_path, capsys, argv,
                                                   message):
    out = tmp_path / "out"  # an earlier output, which a good request would replace
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "keep.txt").write_text("x")
    assert main(["compress", str(classifier_dir), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nasbert: error:") and message in err and "\n" not in err
    assert (out / "keep.txt").read_text() == "x"  # nothing written over


def test_compress_refuses_a_model_that_is_not_a_bert_classifier(tiny_teacher, tmp_path, capsys):
    from transformers import AutoConfig

    folder = tmp_path / "nas"
    import nasbert  # noqa: F401
    from nasbert.model import NasBertConfig, NasBertForSequenceClassification

    NasBertForSequenceClassification(NasBertConfig(arch="E32|H32:M,F", hidden_size=32,
                                                   head_size=8)).save_pretrained(folder)
    assert AutoConfig.from_pretrained(folder).model_type == "nasbert"
    assert main(["compress", str(folder), "--out", str(tmp_path / "o"), "--method", "svd",
                 "--ratio", "2"]) == 2
    assert "model_type 'bert'" in capsys.readouterr().err
