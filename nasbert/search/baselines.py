"""Hand-designed students, so that the value of the search is measured, not assumed.

Two families, each matched to a target latency (the teacher's over a speedup), measured
side by side in one clean process on this device; the search then works under the
latency of the fastest of them near the target (:func:`nasbert.pipeline.plan_models`),
so that a comparison is at equal latency, or at more for the baseline:

* **uniform**: BERT-shaped stacks, ``L x [M, F]`` at one hidden size (embedding of the
  same size), spread as evenly as the space allows over its blocks. They lie in the
  search space, so they are extracted from the same trained supernet as the searched
  subnets and fine-tuned by exactly the same procedure: the only difference is the
  architecture;
* **teacher-first-k**: the teacher's embeddings and first ``k`` layers, with its own
  weights, built as the nasbert model of that shape where the space expresses it (the
  students' kernels: a latency compares architectures, not implementations).

Each is written under ``subnets/<id>/`` like a searched subnet, so that ``nasbert
finetune`` treats all of them alike.

>>> chosen = build_baselines(RunDir("runs/qs"), {"4x": 6.9})  # doctest: +SKIP
>>> chosen.groups["4x"]   # {"uniform": "uniform-L3-H192", "teacher-first-k": "teacher-first-2"}
>>> chosen.latency_ms["uniform-L3-H192"]   # 6.4 (ms): a budget the search can be held to
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch

from nasbert.errors import ConfigError
from nasbert.hf.quiet import quiet_transformers
from nasbert.io import atomic_dir
from nasbert.latency.measure import Protocol, measure_clean
from nasbert.run import RunDir
from nasbert.space import IDENTITY, Arch, BlockArch, SearchSpace


def uniform_archs(space: SearchSpace) -> dict[str, Arch]:
    """Every ``L x [M, F]`` stack the space holds: one hidden size in every block (and
    the embedding, or the largest embedding below it), the ``L`` layers spread as evenly
    as possible with earlier blocks taking the remainder. Keyed ``uniform-L<L>-H<h>``."""
    if not {"M", "F"} <= set(space.ops):
        return {}
    hiddens = set(space.blocks[0].hidden_sizes)
    for b in space.blocks[1:]:
        hiddens &= set(b.hidden_sizes)
    capacity = [b.layers // 2 for b in space.blocks]
    out = {}
    for h in sorted(hiddens):
        smaller = [e for e in space.embed_sizes if e <= h]
        embed = max(smaller) if smaller else min(space.embed_sizes)
        for total in range(1, sum(capacity) + 1):
            n = len(capacity)  # spread evenly, earlier blocks take the remainder
            pairs = [total // n + (i < total % n) for i in range(n)]
            if any(p > c for p, c in zip(pairs, capacity)):
                continue
            blocks = tuple(BlockArch(h, ("M", "F") * n + (IDENTITY,) * (b.layers - 2 * n))
                           for n, b in zip(pairs, space.blocks))
            arch = Arch(embed, blocks)
            try:
                space.validate(arch)
            except ConfigError:  # e.g. an empty block where min_layers forbids one
                continue
            out[f"uniform-L{total}-H{h}"] = arch
    return out


def prefix_arch(space: SearchSpace, k: int, embed: int | None = None) -> Arch | None:
    """The teacher's first ``k`` layers as an architecture of ``space`` (its own layers
    as ``M, F`` at full width in the first ``k`` one-layer blocks, identity after; its
    embeddings at ``embed``, the hidden size unless given), so that the search's
    estimate can score the prefix baseline too; None when the space cannot express it."""
    d = space.dims.hidden_size
    embed = embed or d
    blocks, left = [], k
    for b in space.blocks:
        pairs = min(left, b.teacher_layers) if b.teacher_layers * 2 <= b.layers else 0
        blocks.append(BlockArch(d, ("M", "F") * pairs + (IDENTITY,) * (b.layers - 2 * pairs)))
        left -= pairs
    if left or embed not in space.embed_sizes:
        return None
    try:
        return space.validate(Arch(embed, tuple(blocks)))
    except ConfigError:
        return None


def save_teacher_prefix(teacher: str, k: int, out_dir: str | Path,
                        space: SearchSpace | None = None) -> Path:
    """The teacher's embeddings and first ``k`` layers, saved as an ordinary model: in
    nasbert form where ``space`` expresses it (:func:`as_nasbert`), otherwise the
    teacher's encoder in BERT's layout (:mod:`nasbert.hf.teachers`), truncated."""
    from nasbert.hf.teachers import load_encoder
    from nasbert.teacher import resolve

    model = load_encoder(resolve(teacher), source=f"teacher {teacher!r}").eval()
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if layers is None or not 0 < k <= len(layers):
        raise ConfigError(f"has no encoder.layer list with at least {k} layers; a first-k "
                          "baseline needs a BERT-like encoder", source=f"teacher {teacher!r}")
    n = len(layers)
    model.encoder.layer = layers[:k]
    model.config.num_hidden_layers = k
    ours = as_nasbert(model, space) if space is not None else None
    out = ours or model
    with atomic_dir(out_dir) as tmp, quiet_transformers():
        out.save_pretrained(tmp)
        params = sum(p.numel() for p in out.parameters())
        info = {"path": str(out_dir), "arch": f"teacher's first {k} of {n} layers",
                "teacher": teacher, "params": params}
        if ours is not None:
            info["nasbert_arch"] = ours.config.arch
        (tmp / "nasbert.json").write_text(json.dumps(info))
        (tmp / "README.md").write_text(
            f"# Baseline: the teacher's first {k} layers\n\nTeacher `{teacher}`; "
            f"{params:,} parameters"
            + (f"; as the nasbert architecture `{ours.config.arch}`" if ours else "") + ".\n")
    return Path(out_dir)


def as_nasbert(model: torch.nn.Module, space: SearchSpace) -> torch.nn.Module | None:
    """A BERT encoder's first layers (``BertModel``, or ``BertForSequenceClassification``
    as fine-tuning leaves it) as the nasbert model of the same shape and weights, checked
    to compute the same thing; None where ``space`` cannot express it.

    Why: the nasbert model runs on the same kernels as the searched and uniform students,
    so that a latency between them compares architectures, not implementations: measured
    on this machine, the same 6-layer model took 0.78 of ``BertModel``'s time at batch 1
    (``results/inference.md``)."""
    from nasbert.extract import check_batch
    from nasbert.hf.bert import bert_classifier_state, bert_stack_state, is_bert_like
    from nasbert.hf.teachers import embedding_size
    from nasbert.model import NasBertConfig, NasBertForSequenceClassification, NasBertModel
    from nasbert.ops import load_exact
    from nasbert.provenance import provenance

    c = model.config
    classifier = hasattr(model, "classifier") and hasattr(model, "bert")
    encoder = model.bert if classifier else model
    # BERT, or ELECTRA with its embedding projection (the teacher families' layouts)
    kind = "bert" if classifier else ("bert", "electra")
    if c.model_type not in kind or not is_bert_like(encoder.state_dict()):
        return None
    if classifier and getattr(encoder, "pooler", None) is None:  # the head needs BERT's
        return None
    arch = prefix_arch(space, int(c.num_hidden_layers), embedding_size(c))
    if arch is None:
        return None
    extra = {"num_labels": c.num_labels, "id2label": c.id2label, "label2id": c.label2id,
             "problem_type": c.problem_type, "classifier_dropout": c.classifier_dropout
             } if classifier else {}
    config = NasBertConfig.from_dims(
        space.dims, arch, hidden_dropout_prob=c.hidden_dropout_prob,
        attention_probs_dropout_prob=c.attention_probs_dropout_prob,
        layer_norm_eps=c.layer_norm_eps, initializer_range=c.initializer_range,
        provenance={key: str(v) for key, v in provenance().items()}, **extra)
    if classifier:
        ours = load_exact(NasBertForSequenceClassification(config),
                          bert_classifier_state(model.state_dict(), arch), what="as_nasbert")
    else:
        ours = load_exact(NasBertModel(config), bert_stack_state(model.state_dict(), arch),
                          what="as_nasbert")
    ours.eval()
    was_training = model.training
    model.eval()
    ids, mask = check_batch(space.dims.vocab_size)
    with torch.no_grad():
        want, got = model(ids, attention_mask=mask), ours(ids, attention_mask=mask)
    model.train(was_training)
    if classifier:
        diff = float((want.logits - got.logits).abs().max())
    else:
        real = mask.bool()
        diff = float((want.last_hidden_state[real] - got.last_hidden_state[real]).abs().max())
    if diff > 1e-4:
        raise AssertionError(f"the nasbert form of a {c.num_hidden_layers}-layer BERT "
                             f"differs from it by {diff:.2e}")
    return ours


def convert_to_nasbert(folder: str | Path, space: SearchSpace) -> bool:
    """Rewrite a saved BERT prefix model (``config.json`` and weights; its other files
    kept) in nasbert form, atomically; False, untouched, where :func:`as_nasbert` cannot.
    For runs whose teacher-first-k baselines were saved before they were built in nasbert
    form: their fine-tuned models compute the same function after it."""
    import shutil

    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    if config.model_type != "bert":
        return False
    heads = config.architectures and "ForSequenceClassification" in config.architectures[0]
    with quiet_transformers():
        model = (AutoModelForSequenceClassification if heads else AutoModel).from_pretrained(
            folder)
    ours = as_nasbert(model, space)
    if ours is None:
        return False
    with atomic_dir(folder) as tmp, quiet_transformers():
        for f in folder.iterdir():  # tokenizer, cards: kept
            if f.is_file() and f.name != "config.json" and not f.name.endswith(
                    (".safetensors", ".bin")):
                shutil.copy2(f, tmp / f.name)
        ours.save_pretrained(tmp)
    return True


def _nearest(options: Mapping[str, float], target: float) -> str:
    return min(options, key=lambda k: abs(math.log(options[k] / target)))


@dataclasses.dataclass(frozen=True)
class Baselines:
    """What :func:`build_baselines` chose: per group, ``{"uniform": id, "teacher-first-k":
    id}``, and the latency of every model it measured (ms, side by side, rescaled by the
    teacher as profiled: the units of the run's budgets)."""

    groups: dict[str, dict[str, str]]
    latency_ms: dict[str, float]

    def to_dict(self) -> dict:
        return {"groups": self.groups, "latency_ms": self.latency_ms}

    @classmethod
    def from_dict(cls, data: Mapping) -> Baselines:
        return cls({k: dict(v) for k, v in data["groups"].items()},
                   {k: float(v) for k, v in data["latency_ms"].items()})


def build_baselines(run: RunDir | str | Path, targets: Mapping[str, float], *,
                    protocol: Protocol | None = None, shortlist: int = 3,
                    progress: bool = True) -> Baselines:
    """For each target (group name -> a latency in ms, in the units of the run's latency
    table), the uniform stack and the teacher prefix whose measured latency is nearest to
    it (in ratio), written under ``subnets/``. Uniform stacks are short-listed by the
    run's latency predictor; the short-lists and every teacher prefix are then measured
    side by side in one clean process, and matched on those figures."""
    from nasbert.extract import save_subnet
    from nasbert.latency.stage import load_predictor, reference

    run = RunDir.of(run)
    protocol = protocol or Protocol()
    supernet = run.supernet()
    uniform = uniform_archs(supernet.space)
    if not uniform:
        raise ConfigError("has no uniform M,F stacks (needs operations M and F and a hidden "
                          "size common to all blocks)", source=f"space {supernet.space.name}")
    predictor = load_predictor(run, protocol)
    predicted = dict(zip(uniform, predictor.predict(
        list(uniform.values()))))  # to short-list the uniform stacks worth measuring
    teacher = run.teacher_name()
    prefixes = [f"teacher-first-{k}" for k in range(1, _num_layers(teacher))]
    shortlists = {name: sorted(uniform, key=lambda k: abs(math.log(predicted[k] / target)))
                  [:shortlist] for name, target in targets.items()}
    ids = list(dict.fromkeys([*prefixes, *(i for s in shortlists.values() for i in s)]))
    for model_id in ids:
        folder = run.subnet_dir(model_id)
        if (folder / "config.json").is_file():
            continue
        if model_id.startswith("uniform-"):
            save_subnet(supernet, uniform[model_id], folder,
                        info={"baseline": "uniform L x [M, F] stack, same supernet weights"})
        else:
            save_teacher_prefix(teacher, int(model_id.rsplit("-", 1)[1]), folder,
                                supernet.space)
    measured = dict(zip(ids, measure_clean([run.subnet_dir(i) for i in ids], protocol,
                                           reference=reference(run, protocol))))
    if progress:
        print("measured      " + ", ".join(f"{i} {measured[i]:.2f} ms" for i in ids),
              flush=True)
    groups = {name: {"uniform": _nearest({k: measured[k] for k in shortlists[name]}, target),
                     "teacher-first-k": _nearest({k: measured[k] for k in prefixes}, target)}
              for name, target in targets.items()}
    return Baselines(groups, measured)


def _num_layers(teacher: str) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(teacher).num_hidden_layers)
