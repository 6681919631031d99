"""Loss terms shared by several methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al. (2015): ``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean."""
    t = temperature
    log_p = F.log_softmax(student_logits / t, dim=1)
    q = F.softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * (t * t)


def weighted_kd_loss(student_logits: Tensor, teacher_logits: Tensor, weights: Tensor,
                     temperature: float) -> Tensor:
    """Per-sample weighted KD: ``T^2 * sum_i w_i KL_i / B`` (DFND's reference ``kdloss``;
    ``weights`` ``(B,)``, w = 1 is plain KD up to rounding)."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                  reduction="none").sum(1)
    return (kl * weights).sum() / len(kl) * (t * t)


def js_divergence(p_logits: Tensor, q_logits: Tensor, temperature: float) -> Tensor:
    """Jensen-Shannon divergence (natural log, in [0, ln 2]) between two softmax outputs."""
    p = F.softmax(p_logits / temperature, dim=1)
    q = F.softmax(q_logits / temperature, dim=1)
    m = 0.5 * (p + q)
    eps = 1e-8
    kl_pm = (p * (torch.log(p + eps) - torch.log(m + eps))).sum(1)
    kl_qm = (q * (torch.log(q + eps) - torch.log(m + eps))).sum(1)
    return (0.5 * (kl_pm + kl_qm)).mean()


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic TV prior of DeepInversion (L2 norms of the four neighbour differences)."""
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return d1.norm() + d2.norm() + d3.norm() + d4.norm()
