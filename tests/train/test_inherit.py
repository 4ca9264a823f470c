"""What the supernet inherits: principal-direction bases for narrower widths, and
rotated paths that extract exactly."""

from __future__ import annotations

import torch

from nasbert.space import SearchSpace
from nasbert.supernet import Supernet
from nasbert.teacher import Teacher
from nasbert.train.inherit import hidden_bases, inherit

from conftest import SPACES


def _teacher(tiny_teacher):
    space = SearchSpace.from_yaml(SPACES / "tiny.yaml")
    teacher = Teacher.load(str(tiny_teacher), space)
    return teacher, teacher.fitted_space(space)


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(7, 60, (n, 24), generator=torch.Generator().manual_seed(seed))


def test_pca_bases_reconstruct_hidden_states_better_than_prefixes(tiny_teacher):
    teacher, _ = _teacher(tiny_teacher)
    bases = hidden_bases(teacher, _ids(24, 0))
    with torch.no_grad():  # held-out sequences
        states = teacher.model(input_ids=_ids(8, 1), output_hidden_states=True).hidden_states
    for b, (basis, energy) in enumerate(bases):
        assert torch.allclose(basis @ basis.T, torch.eye(32), atol=1e-4)  # orthonormal rows
        assert energy[0] == 0 and abs(float(energy[-1]) - 1) < 1e-5
        x = states[b + 1].reshape(-1, 32)
        for h in (8, 16, 24):
            pca = x @ basis[:h].T @ basis[:h]
            prefix = torch.cat([x[:, :h], torch.zeros(len(x), 32 - h)], dim=1)
            assert (x - pca).pow(2).sum() < 0.8 * (x - prefix).pow(2).sum(), (b, h)


def test_rotated_paths_extract_exactly_and_start_nearer_the_teacher(tiny_teacher):
    teacher, space = _teacher(tiny_teacher)
    ids = _ids(6, 2)
    with torch.no_grad():
        states = teacher.block_states(ids)

    def block_loss(net, path):
        with torch.no_grad():
            return float((net.forward_block(0, states[0], path) - states[1]).pow(2).mean())

    plain = Supernet(space, dropout=0.0, attention_dropout=0.0).eval()
    inherit(plain, teacher, None)
    rotated = Supernet(space, dropout=0.0, attention_dropout=0.0).eval()
    assert inherit(rotated, teacher, None, basis_sequences=_ids(24, 0))[-2:] == [
        "basis 0", "basis 1"]
    from nasbert.space import BlockArch

    path = BlockArch(16, ("M", "F"))
    assert block_loss(rotated, path) < block_loss(plain, path)
    # the teacher-width path is untouched by the basis
    full = BlockArch(32, ("M", "F"))
    assert block_loss(rotated, full) == block_loss(plain, full) < 1e-8
    # a rotated architecture extracts to a standalone model with the same outputs
    for text in ("E32|H16:M,F|H24:S3,F", "E16|H16:F,I|H32:M,F"):
        arch = space.parse(text)
        model = rotated.extract(arch).eval()
        with torch.no_grad():
            a = rotated(ids, arch=arch).last_hidden_state
            b = model(ids).last_hidden_state
        assert torch.allclose(a, b, atol=1e-5)
