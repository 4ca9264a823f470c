"""Extracting a subnet to disk: weights, config and model card, checked on reload.

>>> report = save_subnet(supernet, arch, "subnets/a")  # doctest: +SKIP
>>> report.max_abs_diff                                # supernet vs reloaded model
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from transformers import AutoModel

from nasbert.hf.quiet import quiet_transformers
from nasbert.io import atomic_dir
from nasbert.provenance import provenance
from nasbert.space import Arch
from nasbert.supernet import Supernet


@dataclasses.dataclass(frozen=True)
class SubnetReport:
    path: str
    arch: str
    params: int
    flops: int
    max_abs_diff: float  # supernet on arch vs the saved-and-reloaded model, with padding


def check_batch(vocab_size: int, *, batch: int = 4, seq: int = 32, seed: int = 0):
    """A batch with padding of several lengths, for equivalence checks."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    for i in range(1, batch):
        mask[i, seq - i * seq // (2 * batch):] = 0
    return ids, mask


def model_card(arch: Arch, supernet: Supernet, info: dict) -> str:
    lines = [
        f"# NAS-BERT subnet `{arch}`", "",
        "Extracted from a NAS-BERT supernet by [nasbert](https://pypi.org/project/nasbert/). "
        "Load with `import nasbert; AutoModel.from_pretrained(dir)`.", "",
        "| field | value |", "| --- | --- |",
        f"| architecture | `{arch}` |",
        f"| parameters | {arch.num_params(supernet.dims):,} |",
        f"| FLOPs (seq 128) | {arch.flops(supernet.dims, 128):.3e} |",
        f"| search space | {supernet.space.name} ({supernet.space.source}) |",
    ]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    return "\n".join(lines) + "\n"


def save_subnet(supernet: Supernet, arch: Arch | str, out_dir: str | Path, *,
                info: dict | None = None, atol: float = 5e-5,
                rtol: float = 1e-4) -> SubnetReport:
    """Extract ``arch``, save it (config.json, model.safetensors, README.md) to
    ``out_dir`` atomically, reload it with ``AutoModel`` and check it against the
    supernet; the folder is left untouched if the check fails."""
    arch = supernet.space.validate(arch)
    info = {**provenance(), **(info or {})}
    model = supernet.extract(arch, provenance={k: str(v) for k, v in info.items()}).eval()
    was_training = supernet.training
    supernet.eval()
    try:
        ids, mask = check_batch(supernet.dims.vocab_size)
        with atomic_dir(out_dir) as tmp, quiet_transformers():
            model.save_pretrained(tmp)
            (tmp / "README.md").write_text(model_card(arch, supernet, info), encoding="utf-8")
            reloaded = AutoModel.from_pretrained(tmp).eval()
            with torch.no_grad():
                want = supernet(ids, attention_mask=mask, arch=arch).last_hidden_state
                got = reloaded(ids, attention_mask=mask).last_hidden_state
            diff = float((want - got).abs().max())
            # float32 rounding only: projections folded in float64 and bases applied to
            # the weights (not the activations) round differently, up to ~1e-5 measured
            if not torch.allclose(got, want, rtol=rtol, atol=atol):
                raise AssertionError(f"extracted model differs from the supernet by {diff:.2e}")
            report = SubnetReport(str(out_dir), str(arch), arch.num_params(supernet.dims),
                                  arch.flops(supernet.dims), diff)
            (tmp / "nasbert.json").write_text(json.dumps(dataclasses.asdict(report), indent=2))
    finally:
        supernet.train(was_training)
    return report
