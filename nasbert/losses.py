"""The distillation loss every stage shares."""

from __future__ import annotations

from torch import Tensor


def masked_mse(student: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error between hidden states over the real (unpadded) tokens: the
    block-wise loss of supernet training, the approximator's score, and the hidden-state
    stage of fine-tuning."""
    m = mask.unsqueeze(-1).to(student.dtype)
    return ((student - target) ** 2 * m).sum() / (m.sum() * student.shape[-1])
