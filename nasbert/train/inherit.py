"""How the supernet inherits the teacher: importance scored once per run (on the run's
own corpus), the teacher's heads and neurons permuted by it, then copied into every path
that can hold them (:meth:`~nasbert.supernet.Supernet.init_from_teacher`); narrower
hidden sizes run on the principal directions of the teacher's hidden states at their
block (:func:`hidden_bases`, :meth:`~nasbert.supernet.SuperBlock.set_basis`). Before
training, :func:`check_teacher_path` proves the inheritance: the supernet's path of the
teacher's shape must compute the teacher's block states."""

from __future__ import annotations

import copy

import torch

from nasbert.errors import ConfigError
from nasbert.hf.teachers import embedding_size
from nasbert.importance import Importance, permute, score
from nasbert.recipe import Recipe
from nasbert.run import RunDir
from nasbert.space import IDENTITY, Arch, BlockArch, SearchSpace
from nasbert.supernet import Supernet
from nasbert.teacher import Teacher


def _key(recipe: Recipe, corpus_key: str | None) -> dict:
    return {"criterion": recipe.train.init, "sequences": recipe.train.init_sequences,
            "seed": recipe.train.seed, "corpus": corpus_key}


def teacher_importance(recipe: Recipe, run: RunDir, space: SearchSpace, *,
                       progress: bool = False) -> Importance | None:
    """The teacher's importance for the recipe's ``train.init`` (None for ``prefix`` and
    ``random``), from the run's file when it was scored the same way, else scored on the
    first ``train.init_sequences`` training sequences (the teacher loaded for ``space``)
    and written there."""
    if recipe.train.init not in ("fisher", "magnitude"):
        return None
    corpus = run.corpus()
    key = _key(recipe, corpus.info.get("key"))
    if run.importance.is_file():
        found = Importance.load(run.importance)
        if found.info.get("key") == key:
            return found
    ids = corpus.train[: recipe.train.init_sequences]
    if progress:
        print(f"scoring the teacher's heads and neurons ({recipe.train.init}, "
              f"{len(ids)} sequences)")
    # packed sequences: no padding
    batches = [(ids[i:i + 16], torch.ones_like(ids[i:i + 16])) for i in range(0, len(ids), 16)]
    teacher = Teacher.load(recipe.teacher, space)
    importance = score(teacher.model, batches, criterion=recipe.train.init,
                       seed=recipe.train.seed)
    importance.info["key"] = key
    importance.save(run.importance)
    return importance


@torch.no_grad()
def hidden_bases(teacher: Teacher, ids: torch.Tensor, *, batch_size: int = 16
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per block: the principal directions of the teacher's hidden states at the
    block's boundaries (its input, each of its layers' outputs), as the rows of a
    ``d x d`` matrix by decreasing energy, and ``energy[h]``, the share the first ``h``
    rows hold (both on the CPU). Uncentred: the best rank-h linear autoencoder
    ``x -> B_h.T B_h x``."""
    bounds = teacher.boundaries
    moments = [0.0] * (len(bounds) - 1)
    count = 0
    for i in range(0, len(ids), batch_size):
        chunk = ids[i:i + batch_size]
        states = teacher.model(input_ids=chunk, attention_mask=torch.ones_like(chunk),
                               output_hidden_states=True).hidden_states
        count += chunk.numel()
        for b in range(len(bounds) - 1):
            for s in states[bounds[b]:bounds[b + 1] + 1]:
                x = s.reshape(-1, s.shape[-1]).double()
                moments[b] = moments[b] + x.T @ x
    out = []
    for m in moments:  # on the CPU: the same decomposition whichever device trains
        values, vectors = torch.linalg.eigh(m.cpu() / count)  # ascending
        values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
        energy = torch.cat([torch.zeros(1, dtype=values.dtype), values.cumsum(0)]) / values.sum()
        out.append((vectors.T.float(), energy.float()))
    return out


def inherit(supernet: Supernet, teacher: Teacher, importance: Importance | None, *,
            basis_sequences: torch.Tensor | None = None) -> list[str]:
    """Initialise ``supernet`` from the teacher, permuted by ``importance`` when given
    (the teacher itself is left as it is), with bases for the narrower widths fitted on
    ``basis_sequences`` when given. Returns what was set."""
    model = teacher.model
    if importance is not None:
        model = permute(copy.deepcopy(model), importance)
    done = supernet.init_from_teacher(model, teacher.boundaries)
    if basis_sequences is not None:
        for i, (basis, energy) in enumerate(hidden_bases(teacher, basis_sequences)):
            block = supernet.blocks[i]
            block.set_basis(basis, energy)
            if bool(block.rotated):
                done.append(f"basis {i}")
    return done


# the largest difference allowed between the teacher and the supernet's teacher-shaped
# path at initialisation (BERT measures about 3e-6 in float32)
TEACHER_PATH_ATOL = 1e-4
CHECK_SEQUENCES = 8


def teacher_path(space: SearchSpace, embed: int) -> Arch | None:
    """The supernet path that holds the teacher after
    :meth:`~nasbert.supernet.Supernet.init_from_teacher`: embedding size ``embed`` and,
    in every block at the teacher's width, position ``p`` runs teacher layer
    ``p * t // L``: its attention at the first such position, its feed-forward at the
    next, identities after. None where the space cannot express it."""
    d = space.dims.hidden_size
    blocks = []
    for spec in space.blocks:
        placed: dict[int, int] = {}
        ops = []
        for p in range(spec.layers):
            layer = p * spec.teacher_layers // spec.layers
            n = placed.get(layer, 0)
            ops.append(("M", "F")[n] if n < 2 else IDENTITY)
            placed[layer] = min(n + 1, 2)
        if any(placed.get(j, 0) < 2 for j in range(spec.teacher_layers)):
            return None
        blocks.append(BlockArch(d, tuple(ops)))
    try:
        return space.validate(Arch(embed, tuple(blocks)))
    except ConfigError:
        return None


@torch.no_grad()
def check_teacher_path(supernet: Supernet, teacher: Teacher, ids: torch.Tensor, *,
                       initialised: list[str], atol: float = TEACHER_PATH_ATOL) -> dict:
    """The largest difference between the teacher's block states and those of the
    supernet's teacher-shaped path (:func:`teacher_path`) on ``ids``, as a record for
    the run's summary; one clear error when it exceeds ``atol`` (a teacher whose weights
    the supernet did not take exactly would be distilled into something else)."""
    arch = teacher_path(supernet.space, embedding_size(teacher.config))
    if arch is None:
        return {"skipped": "the space has no path of the teacher's shape"}
    was = supernet.training
    supernet.eval()
    device = next(supernet.parameters()).device
    ids = ids.to(device)
    mask = torch.ones_like(ids)
    want = teacher.block_states(ids, mask)
    got = supernet(ids, mask, arch=arch, output_hidden_states=True).hidden_states
    supernet.train(was)
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(want, got))
    record = {"sequences": len(ids), "max_abs_diff": diff, "atol": atol, "path": str(arch)}
    if not diff <= atol:
        raise ConfigError(
            f"the supernet's teacher-shaped path {arch} differs from the teacher by "
            f"{diff:.2e} on {len(ids)} corpus sequences (allowed {atol:g}; inherited: "
            f"{', '.join(initialised) or 'nothing'}): the space's heads or feed-forward "
            "size do not match the teacher's; fit the space to the teacher, or set "
            "train.init: random to train from scratch", source=f"teacher {teacher.name!r}")
    return record


def preflight(recipe: Recipe, run: RunDir) -> dict:
    """:func:`check_teacher_path` in this process, on a supernet initialised as the
    training's workers initialise theirs (without the narrower widths' bases, which the
    teacher's path does not use): run before Ray starts workers, so that a teacher the
    supernet cannot reproduce is one line here rather than a worker's traceback."""
    space = SearchSpace.from_yaml(recipe.space)
    teacher = Teacher.load(recipe.teacher, space)
    net = Supernet(teacher.fitted_space(space), dropout=0.0, attention_dropout=0.0,
                   layer_norm_eps=teacher.config.layer_norm_eps)
    importance = (Importance.load(run.importance)
                  if recipe.train.init in ("fisher", "magnitude") else None)
    done = inherit(net, teacher, importance)
    corpus = run.corpus()
    ids = corpus.dev if len(corpus.dev) else corpus.train
    return check_teacher_path(net, teacher, ids[:CHECK_SEQUENCES], initialised=done)
