"""Head and neuron importance, the permutation by it, and the supernet's inheritance."""

from __future__ import annotations

import pytest
import torch

from nasbert.importance import Importance, permute, score


def _bert(seed: int = 0, classifier: bool = False):
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=40, num_labels=3)
    model = (BertForSequenceClassification(config) if classifier
             else BertModel(config, add_pooling_layer=False))
    return model.eval()


def _batches(n: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (n, 4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[:, 1, 8:] = 0  # padding is cut off before scoring
    return list(zip(ids, mask))


def _out(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("classifier", [False, True])
def test_permutation_by_importance_preserves_the_outputs(classifier):
    model = _bert(classifier=classifier)
    ids, mask = _batches(1)[0]
    before = _out(model, ids, mask)
    imp = score(model, _batches(2), criterion="fisher",
                target="logits" if classifier else "layers")
    assert any(not torch.equal(imp.head_order(k), torch.arange(4)) for k in range(2))
    permute(model, imp)
    assert torch.allclose(_out(model, ids, mask), before, atol=1e-5)
    # after the permutation the scores are sorted: scoring again gives the identity order
    again = score(model, _batches(2), criterion="fisher",
                  target="logits" if classifier else "layers")
    for k in range(2):
        assert torch.allclose(again.heads[k], imp.heads[k][imp.head_order(k)], rtol=1e-3)


@pytest.mark.parametrize("criterion", ["fisher", "magnitude"])
def test_a_dead_head_scores_last_and_an_amplified_one_first(criterion):
    model = _bert()
    layer = model.encoder.layer[0]
    with torch.no_grad():
        out = layer.attention.output.dense.weight.view(32, 4, 8)
        out[:, 1] = 0.0   # head 1 contributes nothing
        out[:, 2] *= 8.0  # head 2 contributes much
        layer.output.dense.weight[:, 5] = 0.0  # neuron 5 too
        layer.intermediate.dense.weight[5] = 0.0
    imp = score(model, _batches(2), criterion=criterion)
    assert imp.head_order(0)[0] == 2 and imp.head_order(0)[-1] == 1
    assert imp.neuron_order(0)[-1] == 5
    if criterion == "fisher":
        assert imp.heads[0][1] == 0 and imp.neurons[0][5] == 0


def test_fisher_predicts_which_head_removal_hurts_most():
    """The criterion's promise: the head it scores highest changes the layer's output
    most when removed, the lowest least (checked by ablation)."""
    model = _bert(seed=3)
    imp = score(model, _batches(4), criterion="fisher")
    layer = model.encoder.layer[1]
    x = torch.randn(4, 12, 32, generator=torch.Generator().manual_seed(0))

    def ablated(head: int) -> float:
        w = layer.attention.output.dense.weight
        saved = w.detach().clone()
        with torch.no_grad():
            full = layer(x)
            full = full[0] if isinstance(full, tuple) else full
            w.view(32, 4, 8)[:, head] = 0.0
            cut = layer(x)
            cut = cut[0] if isinstance(cut, tuple) else cut
            w.copy_(saved)
        return float((full - cut).pow(2).mean())

    effects = [ablated(h) for h in range(4)]
    order = imp.head_order(1).tolist()
    assert effects[order[0]] > effects[order[-1]]


def test_importance_saves_and_loads(tmp_path):
    imp = score(_bert(), _batches(1), criterion="fisher")
    imp.info["key"] = {"a": 1}
    back = Importance.load(imp.save(tmp_path / "imp.safetensors"))
    assert back.criterion == "fisher" and back.info["key"] == {"a": 1}
    assert all(torch.equal(a, b) for a, b in zip(back.heads + back.neurons,
                                                 imp.heads + imp.neurons))


def test_unknown_criterion_is_one_clear_error():
    from nasbert.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown criterion 'taylor'; use one of"):
        score(_bert(), _batches(1), criterion="taylor")


def test_pruned_ops_inherit_the_most_important_heads_and_neurons(tiny_teacher):
    """A supernet initialised from a permuted teacher: its full path is the teacher's
    layer, and its pruned path ``M2`` is the teacher's layer with only its two most
    important heads (the others' output columns zeroed)."""
    import copy

    from transformers import AutoModel

    from nasbert.space import BlockArch, SearchSpace
    from nasbert.supernet import Supernet
    from nasbert.teacher import fit_space

    from conftest import SPACES

    teacher = AutoModel.from_pretrained(tiny_teacher, attn_implementation="eager").eval()
    d = SearchSpace.from_yaml(SPACES / "tiny.yaml").to_dict()
    d["operations"] = ["M", "M2", "F", "F64", "I"]
    space = fit_space(SearchSpace.from_dict(d), teacher.config)
    imp = score(teacher, _batches(2), criterion="fisher")
    permuted = permute(copy.deepcopy(teacher), imp)
    net = Supernet(space, dropout=0.0, attention_dropout=0.0).eval()
    assert net.init_from_teacher(permuted, [0, 1, 2]) == ["embeddings", "block 0", "block 1"]

    ids = torch.randint(5, 40, (2, 10))
    with torch.no_grad():
        states = teacher(input_ids=ids, output_hidden_states=True).hidden_states
        x = states[0]
        full = net.forward_block(0, x, BlockArch(32, ("M", "F")))
        assert torch.allclose(full, states[1], atol=1e-5)
        # the teacher with only the two most important heads of layer 0
        keep = imp.head_order(0)[:2]
        cut = copy.deepcopy(teacher)
        w = cut.encoder.layer[0].attention.output.dense.weight.view(32, 4, 8)
        for h in range(4):
            if h not in keep:
                w[:, h] = 0.0
        pruned = net.forward_block(0, x, BlockArch(32, ("M2", "F")))
        expected = cut(input_ids=ids, output_hidden_states=True).hidden_states[1]
        assert torch.allclose(pruned, expected, atol=1e-5)
        # and neither equals the other: the heads dropped mattered
        assert not torch.allclose(pruned, full, atol=1e-3)
