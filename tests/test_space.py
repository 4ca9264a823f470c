from __future__ import annotations

import dataclasses
import random

import pytest

from nasbert import Arch, ConfigError, SearchSpace
from nasbert.space import BlockArch

from conftest import SPACES


@pytest.mark.parametrize("name", ["tiny", "minilm_l6", "minilm_l6_nasbert", "nasbert_base"])
def test_shipped_spaces_load_and_roundtrip(name):
    space = SearchSpace.from_yaml(SPACES / f"{name}.yaml")
    assert SearchSpace.from_dict(space.to_dict()) == space
    rng = random.Random(0)
    for _ in range(200):
        arch = space.sample(rng)
        text = str(arch)
        assert Arch.parse(text) == arch
        assert space.parse(text) == arch
        assert str(Arch.parse(text)) == text


def test_string_form_is_compact_and_readable():
    arch = Arch(128, (BlockArch(256, ("M", "F", "S5", "F")), BlockArch(192, ("S3", "M", "F", "I"))))
    assert str(arch) == "E128|H256:M,F,S5,F|H192:S3,M,F,I"
    assert Arch.parse(" E128|H256:M,F,S5,F|H192:S3,M,F,I ") == arch


def _variant(space: SearchSpace, **changes) -> SearchSpace:
    return SearchSpace.from_dict({**space.to_dict(), **changes})


@pytest.mark.parametrize("pruned", [False, True])
@pytest.mark.parametrize("identity", ["anywhere", "block_end"])
@pytest.mark.parametrize("min_layers", [0, 1])
def test_size_matches_brute_force(tiny_space, identity, min_layers, pruned):
    d = tiny_space.to_dict()
    d["identity"] = identity
    if pruned:  # M2 and F64 exist at some widths only (fewer heads / neurons than M / F)
        d["operations"] = ["M", "M2", "F", "F64", "S3", "I"]
    for b in d["blocks"]:
        b["min_layers"] = min_layers
    space = SearchSpace.from_dict(d)
    archs = list(space.enumerate())
    assert len(archs) == len(set(archs)) == space.size()
    # brute force: every sequence of ops, filtered by the rules
    import itertools

    count = 0
    for _ in space.embed_sizes:
        per_block = []
        for b in space.blocks:
            n = 0
            for h, seq in itertools.product(b.hidden_sizes,
                                            itertools.product(space.ops, repeat=b.layers)):
                computing = [op for op in seq if op != "I"]
                if len(computing) < b.min_layers:
                    continue
                if identity == "block_end" and "I" in seq and any(
                        op != "I" for op in seq[seq.index("I"):]):
                    continue
                if not all(space.dims.op_fits(op, h) for op in computing):
                    continue
                n += 1
            per_block.append(n)
        count += per_block[0] * per_block[1]
    assert count == space.size()
    for arch in archs:
        space.validate(arch)


def test_paper_space_counts_as_the_paper():
    space = SearchSpace.from_yaml(SPACES / "nasbert_base.yaml")
    assert space.block_size(0) == 97_650  # NAS-BERT, appendix A.1
    assert space.size() == 5 * 97_650 ** 4


def test_sampling_is_uniform_over_paths(tiny_space):
    space = _variant(tiny_space, identity="block_end")
    paths = list(space.block_paths(0))
    rng = random.Random(1)
    counts = {p: 0 for p in paths}
    n = 200 * len(paths)
    for _ in range(n):
        counts[space.sample_block(0, rng)] += 1
    expected = n / len(paths)
    assert min(counts.values()) > 0.6 * expected and max(counts.values()) < 1.4 * expected


def test_sampling_is_seeded(minilm_space):
    assert [minilm_space.sample(7) for _ in range(3)] == [minilm_space.sample(7)] * 3
    assert minilm_space.sample(1) != minilm_space.sample(2)


def test_extremes_bound_the_parameter_counts(minilm_space):
    lo, hi = minilm_space.param_range()
    for arch in (minilm_space.sample(i) for i in range(500)):
        assert lo <= arch.num_params(minilm_space.dims) <= hi
    assert str(minilm_space.max_arch()) == "E384|H384:F,F,F,F|H384:F,F,F,F|H384:F,F,F,F"
    assert str(minilm_space.min_arch()) == "E64|H128:S3,I,I,I|H128:S3,I,I,I|H128:S3,I,I,I"


def test_teacher_shaped_arch_has_bert_parameter_count(minilm_space):
    # 6 x [M, F] at the teacher's width, no projections: exactly BertModel minus pooler
    from transformers import BertConfig, BertModel

    arch = minilm_space.parse("E384|H384:M,F,M,F|H384:M,F,M,F|H384:M,F,M,F")
    bert = BertModel(BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                intermediate_size=1536), add_pooling_layer=False)
    assert arch.num_params(minilm_space.dims) == sum(p.numel() for p in bert.parameters())


def test_features_have_stable_names(minilm_space):
    names = {tuple(minilm_space.sample(i).features(minilm_space.dims)) for i in range(50)}
    assert len(names) == 1
    f = minilm_space.parse("E128|H256:M,F,S5,F|H192:S3,M,F,I|H384:M,F,S7,M").features(
        minilm_space.dims)
    assert f["n_attn"] == 4 and f["n_ffn"] == 4 and f["n_conv"] == 3 and f["n_layers"] == 11
    assert f["sum_h2_attn"] == 256 ** 2 + 192 ** 2 + 2 * 384 ** 2
    assert f["params"] > 0 and f["flops_128"] > 0


# ----------------------------------------------------------------------------- bad input


def _write(tmp_path, text):
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


GOOD = (SPACES / "tiny.yaml").read_text()


@pytest.mark.parametrize("text, words", [
    ("blocks: [1, 2\n", ["malformed YAML", "line"]),
    (GOOD.replace("[M, F, S3, I]", "[M, F, X9, I]"), ["unknown operation 'X9'", "operations"]),
    (GOOD.replace("[M, F, S3, I]", "[M, F, S4, I]"), ["odd kernel"]),
    (GOOD.replace("head_size: 8", "head_size: 7"),
     ["head_size 7 does not divide hidden size 16", "hidden_sizes"]),
    (GOOD.replace("identity: anywhere", "identity: sometimes"), ["identity"]),
    (GOOD.replace("embedding_sizes", "embeding_sizes"), ["unknown key 'embeding_sizes'"]),
    (GOOD.replace("hidden_sizes: [16, 32]", "hidden_sizes: [16, -32]"), ["blocks[0].hidden_sizes"]),
    (GOOD.replace("num_layers: 2", "num_layers: 3"), ["teacher layers", "blocks"]),
    ("- just\n- a list\n", ["expected a mapping"]),
])
def test_bad_yaml_is_one_clear_error(tmp_path, text, words):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        SearchSpace.from_yaml(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    for w in words:
        assert w in message
    assert isinstance(err.value, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        SearchSpace.from_yaml(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", ["", "E128", "H256:M", "E128|H256", "E128|H256:M,Q",
                                  "E128|H256:M,S4", "E0|H256:M", "E128|h256:M"])
def test_bad_arch_strings(text):
    with pytest.raises(ConfigError, match="architecture string"):
        Arch.parse(text)


@pytest.mark.parametrize("text, field", [
    ("E100|H16:M,F|H24:M,F", "E"),
    ("E16|H16:M,F", "blocks"),
    ("E16|H20:M,F|H24:M,F", "block 0"),
    ("E16|H16:M,F,F|H24:M,F", "block 0"),
    ("E16|H16:M,S5|H24:M,F", "block 0"),
])
def test_arch_must_fit_space(tiny_space, text, field):
    with pytest.raises(ConfigError, match=field):
        tiny_space.parse(text)


def test_identity_rule_checked():
    space = SearchSpace.from_yaml(SPACES / "minilm_l6_nasbert.yaml")
    space.parse("E128|H128:M,F,I,I|H128:M,I,I,I|H128:S3,I,I,I")
    with pytest.raises(ConfigError, match="identity layers must come last"):
        space.parse("E128|H128:M,I,F,I|H128:M,I,I,I|H128:S3,I,I,I")
    with pytest.raises(ConfigError, match="min_layers"):
        space.parse("E128|H128:I,I,I,I|H128:M,I,I,I|H128:S3,I,I,I")


def test_pruned_ops_exist_only_where_they_are_smaller(tiny_space):
    d = tiny_space.to_dict()
    d["operations"] = ["M", "M2", "F", "F64", "I"]
    space = SearchSpace.from_dict(d)
    arch = space.parse("E16|H32:M2,F64|H24:M2,F64")
    assert arch.num_params(space.dims) < space.parse("E16|H32:M,F|H24:M,F").num_params(space.dims)
    with pytest.raises(ConfigError, match="operation 'M2' does not exist at hidden size 16 .it "
                                          "must be smaller than M there: 16 wide"):
        space.parse("E16|H16:M2,F|H24:M,F")
    with pytest.raises(ConfigError, match="'F64' does not exist at hidden size 16"):
        space.parse("E16|H16:M,F64|H24:M,F")
    with pytest.raises(ConfigError, match="unknown operation 'X2'"):
        Arch.parse("E16|H16:X2,F")
    d["operations"] = ["M2", "I"]
    d["blocks"][0]["hidden_sizes"] = [16]
    with pytest.raises(ConfigError, match="no operation exists at hidden size 16"):
        SearchSpace.from_dict(d)


def test_heads_override(tiny_space):
    d = tiny_space.to_dict()
    d["attention"] = {"head_size": 8, "heads": {16: 4}}
    space = SearchSpace.from_dict(d)
    assert space.dims.num_heads(16) == 4 and space.dims.num_heads(32) == 4
    d["attention"] = {"head_size": 8, "heads": {24: 5}}
    with pytest.raises(ConfigError, match="5 heads do not divide hidden size 24"):
        SearchSpace.from_dict(d)
    assert dataclasses.replace(space.dims, head_size=16).num_heads(32) == 2
