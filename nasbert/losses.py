"""The distillation losses the stages share."""

from __future__ import annotations

from torch import Tensor, nn

_FAR = -1e4  # a logit that softmax turns into nothing, without infinities


def masked_mse(student: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error between hidden states over the real (unpadded) tokens: the
    block-wise loss of supernet training, the approximator's score, and the hidden-state
    stage of fine-tuning."""
    m = mask.unsqueeze(-1).to(student.dtype)
    return ((student - target) ** 2 * m).sum() / (m.sum() * student.shape[-1])


def token_kl(student: Tensor, teacher: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """``T^2 KL(softmax(teacher / T) || softmax(student / T))`` over the classes of each
    token (``(B, T, C)`` logits), averaged over the real tokens of ``mask``: token
    classification's distillation."""
    t = temperature
    kl = nn.functional.kl_div(nn.functional.log_softmax(student / t, dim=-1),
                              nn.functional.softmax(teacher.to(student.dtype) / t, dim=-1),
                              reduction="none").sum(-1)
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp(min=1) * t * t


def position_kl(student: Tensor, teacher: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """``T^2 KL`` between the teacher's and the student's distributions over the
    positions of each sequence (``(B, T)`` logits: where an answer starts, or ends),
    padding left out: span distillation."""
    t, real = temperature, mask.bool()
    s = student.masked_fill(~real, _FAR) / t
    p = teacher.to(student.dtype).masked_fill(~real, _FAR) / t
    return nn.functional.kl_div(nn.functional.log_softmax(s, dim=-1),
                                nn.functional.softmax(p, dim=-1),
                                reduction="batchmean") * t * t
