"""A controlled class-imbalance shift of the substitution data (``shift.imbalance``).

KDCI (Wang et al., CVPR 2024) claims that substitution data skewed by the teacher's preferences
confounds the student, and that more shift means more gain from de-confounding; the paper never
sets the shift with a knob. Here the knob is an imbalance ratio ``r >= 1``: the class of rank
``i`` (0 = most common) gets the share ``r^(-i/(C-1)) / sum_j r^(-j/(C-1))`` (an exponential
profile, as in long-tailed CIFAR), so the rarest class is ``r`` times rarer than the most common
and ``r = 1`` is balanced.

- Generation-based methods with conditional targets (Fast, CMI, DeepInversion) draw their targets
  from the profile, class index = rank (class 0 most common, class C-1 rarest).
- Sampling-based methods keep per-class quotas of the open-world pool (``quota_select``): the
  teacher's arg-max is the class, classes are ranked by how many pool images the teacher gives
  them (so the quotas can be met), and within a class the method's own criterion picks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def class_profile(num_classes: int, ratio: float) -> Tensor:
    """``(C,)`` shares by rank for imbalance ``ratio`` (sums to 1; rank 0 largest)."""
    if ratio < 1:
        raise ValueError(f"imbalance ratio must be >= 1, got {ratio}")
    ranks = torch.arange(num_classes, dtype=torch.float64)
    weights = float(ratio) ** (-ranks / max(1, num_classes - 1))
    return (weights / weights.sum()).float()


def quotas(shares: np.ndarray, n: int) -> np.ndarray:
    """Integer counts summing to ``n`` closest to ``n * shares`` (largest remainders)."""
    raw = np.asarray(shares, dtype=np.float64) * n
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:n - int(counts.sum())]] += 1
    return counts


def quota_select(scores: np.ndarray, labels: np.ndarray, n: int, ratio: float,
                 num_classes: int, strict: bool = True) -> np.ndarray:
    """Sorted indices of ``n`` images whose arg-max classes follow the profile of ``ratio``.

    Classes are ranked by availability (most labelled images first; ties: lower class); class of
    rank ``i`` keeps its ``quota_i`` highest-scoring images. A quota larger than what the pool
    holds is an error naming the fix (the shift would silently be smaller than asked); with
    ``strict=False`` (smoke mode's tiny pools) such a quota keeps what there is."""
    available = np.bincount(labels, minlength=num_classes)
    ranked = np.argsort(-available, kind="stable")
    counts = quotas(class_profile(num_classes, ratio).numpy(), n)
    short = [(int(c), int(q), int(available[c])) for c, q in zip(ranked, counts, strict=True)
             if q > available[c]]
    if short and strict:
        detail = ", ".join(f"class {c} needs {q}, has {a}" for c, q, a in short)
        raise ValueError(f"shift.imbalance={ratio:g}: the pool cannot fill the class quotas of "
                         f"{n} images ({detail}); lower the selection size or raise pool.size")
    ranked_scores = np.where(np.isnan(scores), -np.inf, scores)
    keep = []
    for c, q in zip(ranked, counts, strict=True):
        members = np.flatnonzero(labels == c)
        order = np.argsort(-ranked_scores[members], kind="stable")
        keep.append(members[order[:q]])
    return np.sort(np.concatenate(keep)).astype(np.int64)
