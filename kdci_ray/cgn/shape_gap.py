"""How far apart are the teacher's digit shapes and ours? A shape-only domain-gap probe.

The published CGN-MNIST teachers (Sauer & Geiger, ICLR 2021) learned MNIST's hand: their shape
mechanism draws MNIST-like strokes. We distil them with data built from scikit-learn's 8x8 digits
(``kdci_ray.cgn.data_published``), another hand at another resolution. If the two shape domains
differ, a student can score badly on our test split although the teacher is fine, and the shape
mechanism's counterfactuals fall outside what the invariant classifier saw.

``shape_domain_gap`` measures this on masks alone (no colour or texture): one classifier trained
on our train masks, one on the teacher's masks, each scored in its own and in the other domain.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdci_ray.cgn.classifier import accuracy, train_classifier

HELD_OUT_FRACTION = 0.2  # of every class of the teacher's masks, for the cross-domain score
TEACHER_MASK_THRESHOLD = 0.5  # the teacher's masks lie in [0.0001, 0.9999]; binarise them


def _as_images(masks: Tensor) -> Tensor:
    """(N, 1, H, W) masks -> float (N, 3, H, W) images in [0, 1], as the classifier takes."""
    if masks.dim() != 4 or masks.shape[1] != 1:
        raise ValueError(f"masks must be (N, 1, H, W), got {tuple(masks.shape)}")
    return masks.float().clamp(0.0, 1.0).expand(-1, 3, -1, -1).contiguous()


def stratified_tail_split(labels: Tensor,
                          held_out: float = HELD_OUT_FRACTION) -> tuple[Tensor, Tensor]:
    """Indices ``(fit, held)``: the last ``held_out`` of every class (in input order) is held
    out, so masks generated class by class do not lose whole classes."""
    fit, held = [], []
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        cut = len(idx) - int(len(idx) * held_out)
        fit.append(idx[:cut])
        held.append(idx[cut:])
    return torch.cat(fit).sort().values, torch.cat(held).sort().values


def shape_domain_gap(teacher_masks: Tensor, teacher_labels: Tensor, train_masks: Tensor,
                     train_labels: Tensor, test_masks: Tensor, test_labels: Tensor, *,
                     steps: int = 500, batch_size: int = 64, lr: float = 0.05, seed: int = 0,
                     arch: str = "digits_cnn_small", input_size: int = 0,
                     device: str | torch.device = "cpu") -> dict[str, float]:
    """Shape-only accuracies between the teacher's masks (binarised at 0.5) and our digits',
    the classifiers trained and scored on ``device``.

    - ``shape_acc_digits``: trained on our train masks, tested on our test masks.
    - ``shape_acc_teacher_to_digits``: trained on the teacher's masks (all but the last 20% of
      every class), tested on our test masks.
    - ``shape_acc_digits_to_teacher``: trained on our train masks, tested on the teacher's
      held-out 20%.
    - ``shape_acc_teacher``: trained and tested on the teacher's masks (fit / held-out part).
    - ``shape_gap``: ``shape_acc_digits - shape_acc_teacher_to_digits``; near 0 when the
      teacher's shapes teach our digits as well as our own training shapes do.

    Our masks are used as given: pass binary ones (``make_published_split``'s are). Soft
    intensity masks against binarised teacher masks measure the stroke profile, not the shape
    (with ``kdci_ray.cgn.data`` masks as ours and teacher = the same masks binarised, the
    teacher-to-digits accuracy fell to chance).
    """
    teacher = _as_images((teacher_masks > TEACHER_MASK_THRESHOLD).float())
    train, test = _as_images(train_masks), _as_images(test_masks)
    if not teacher.shape[-2:] == train.shape[-2:] == test.shape[-2:]:
        raise ValueError(f"masks must share one size: teacher {tuple(teacher.shape[-2:])}, "
                         f"train {tuple(train.shape[-2:])}, test {tuple(test.shape[-2:])}")
    fit, held = stratified_tail_split(teacher_labels)
    if len(held) == 0:
        raise ValueError(f"too few teacher masks ({len(teacher_labels)}) to hold out "
                         f"{HELD_OUT_FRACTION:.0%} of a class; pass at least 5 per class")
    options = dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed, arch=arch,
                   input_size=input_size, device=device)
    on_digits = train_classifier(train, train_labels, **options)
    on_teacher = train_classifier(teacher[fit], teacher_labels[fit], **options)
    acc_digits = accuracy(on_digits, test, test_labels)
    acc_teacher_to_digits = accuracy(on_teacher, test, test_labels)
    return {
        "shape_acc_digits": acc_digits,
        "shape_acc_teacher_to_digits": acc_teacher_to_digits,
        "shape_acc_digits_to_teacher": accuracy(on_digits, teacher[held], teacher_labels[held]),
        "shape_acc_teacher": accuracy(on_teacher, teacher[held], teacher_labels[held]),
        "shape_gap": acc_digits - acc_teacher_to_digits,
    }
