"""Post-hoc label-shift readings of one student, at its final evaluation (``shift.readings``).

A student distilled on shifted substitution data inherits that data's class prior. Each reading
is a class bias ``b`` added to the student's logits, computed without training anything, so one
trial gives all of them for the same student (paired by construction):

- ``control``: logit adjustment by the realised prior, ``b = -(log pi - mean)``, ``pi`` the
  teacher's arg-max histogram over every KD batch (what the student actually trained on; half a
  count per class keeps it finite). ``tau`` is fixed at 1 by the theory of prior correction
  (Saerens et al. 2002; Menon et al. 2021), not chosen on any split.
- ``em``: the same with the EM prior of Saerens, Latinne & Decaestecker (2002), estimated from the
  teacher's posteriors on the KD batches since the previous evaluation.
- ``teacher_ref`` (label-free): the ``b`` that brings ``softmax(s + b)`` closest, in KL weighted to
  balance the teacher's classes, to the teacher on held-out substitution inputs (never used for
  KD; ``Method.heldout_batch``), with a ridge; ``teacher_ref_scalar`` fits only ``tau`` in
  ``b = -tau * (log pi - mean)``. About 0 where the student already mirrors the teacher.
- ``oracle``: the ``b`` fitted on the test split's labels (in-sample): the ceiling of what any
  class bias can reach, reported only, never a deployable prediction (``REPORT_ONLY``).

Metrics: ``eval/acc_<reading>`` and ``eval/recall_rare_<reading>``, the realised prior's ratio of
largest to smallest share (``shift/prior_ratio``; the EM prior's: ``shift/prior_ratio_em``), the
fitted ``shift/tau`` and the bias norms.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdci_ray.kdci.label_shift import (
    adjusted_accuracy,
    em_prior,
    fit_class_bias,
    log_prior,
    teacher_reference,
)

DEPLOYABLE = ("control", "em", "teacher_ref", "teacher_ref_scalar")  # label-free
REPORT_ONLY = ("oracle",)  # fitted on the test labels: a ceiling, never shipped
READINGS = DEPLOYABLE + REPORT_ONLY
EM_FLOOR = 1e-4  # the EM prior's ratio is reported with shares floored here (EM can reach 0)


def prior_ratio(shares: Tensor) -> float:
    """Largest over smallest class share (the realised imbalance)."""
    return float(shares.max() / shares.min().clamp_min(1e-12))


def realised_prior_metrics(counts: Tensor) -> dict[str, float]:
    """The realised prior's imbalance, from the arg-max counts (half a count per class)."""
    c = counts.double() + 0.5
    return {"shift/prior_ratio": prior_ratio(c / c.sum())}


@torch.no_grad()
def model_logits(model: nn.Module, images: Tensor, batch: int = 512) -> Tensor:
    """``model``'s logits on ``images`` in eval mode (its mode restored), on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.cat([model(images[i:i + batch].to(device)).logits.float().cpu()
                     for i in range(0, len(images), batch)])
    model.train(was_training)
    return out


def _rare_recall(logits: Tensor, labels: Tensor, rare: int | None) -> dict[str, float]:
    if rare is None:
        return {}
    members = labels == rare
    return {"recall_rare": float((logits[members].argmax(1) == rare).float().mean())}


def biases(counts: Tensor, test_logits: Tensor, test_labels: Tensor, *,
           kd_posteriors: Tensor | None, heldout_student: Tensor | None,
           heldout_teacher: Tensor | None, ridge: float) -> tuple[dict[str, Tensor],
                                                                  dict[str, float]]:
    """Each reading's ``(C,)`` class bias and the fit's metrics (see the module docstring)."""
    direction = log_prior(counts)
    out = {"control": -direction}
    metrics: dict[str, float] = {}
    if kd_posteriors is not None and len(kd_posteriors):
        em = em_prior(kd_posteriors)
        metrics["shift/prior_ratio_em"] = prior_ratio(em.clamp_min(EM_FLOOR))
        log_em = torch.log(em.double().clamp_min(1e-6))
        out["em"] = -(log_em - log_em.mean()).float()
    if heldout_student is not None and heldout_teacher is not None and len(heldout_student):
        out["teacher_ref"], _ = teacher_reference(heldout_student, heldout_teacher, ridge=ridge)
        out["teacher_ref_scalar"], tau = teacher_reference(heldout_student, heldout_teacher,
                                                           direction, ridge=ridge)
        metrics["shift/tau"] = float(tau)
        metrics["shift/bias_norm"] = float(out["teacher_ref"].norm())
    one_hot = torch.nn.functional.one_hot(test_labels, test_logits.shape[1]).double()
    out["oracle"] = fit_class_bias(test_logits, one_hot, ridge=ridge)
    metrics["shift/oracle_bias_norm"] = float(out["oracle"].norm())
    return out, metrics


def shift_readings(counts: Tensor, test_logits: Tensor, test_labels: Tensor, *,
                   kd_posteriors: Tensor | None = None, heldout_student: Tensor | None = None,
                   heldout_teacher: Tensor | None = None, ridge: float = 1e-3,
                   rare: int | None = None) -> dict[str, float]:
    """Every reading's test accuracy (and rare-class recall) for the student whose test logits
    these are; a reading whose inputs are missing (no held-out inputs, no KD posteriors) is left
    out."""
    found, metrics = biases(counts.cpu(), test_logits, test_labels,
                            kd_posteriors=kd_posteriors, heldout_student=heldout_student,
                            heldout_teacher=heldout_teacher, ridge=ridge)
    metrics.update(realised_prior_metrics(counts.cpu()))
    for name, bias in found.items():
        metrics[f"eval/acc_{name}"] = adjusted_accuracy(test_logits, bias, test_labels)
        for key, value in _rare_recall(test_logits + bias, test_labels, rare).items():
            metrics[f"eval/{key}_{name}"] = value
    return metrics
