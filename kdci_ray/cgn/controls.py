"""Controls and scores that say what an SKDCGN student set keeps of its teacher, and where not.

The retained gain (``pipeline``) compresses everything into one ratio; these take it apart:

- **Swaps** (:func:`swap_mechanism`, :data:`SWAP_CODES`): counterfactuals composed with each of
  the 2^3 teacher/student assignments of the three mechanisms (``TTT`` = all teacher, ``SSS`` =
  all student, ``STT`` = the student's shape with the teacher's textures, ...), each training its
  own invariant classifier. The mechanism whose student costs most accuracy carries the gap.
- **Label fidelity** (:func:`label_fidelity`): the classifier trained on *teacher*
  counterfactuals scores composites whose mechanism(s) come from the students, against the
  shape's label. A student shape that draws another digit, or a texture that paints a shape,
  lowers it; the teacher's own composites give the ceiling.
- **KID** (:func:`kernel_inception_distance`): the kernel inception distance (Bińkowski et al.,
  ICLR 2018: unbiased MMD² with the cubic polynomial kernel over subsets) between teacher and
  student counterfactuals, on the penultimate features of the *oracle* classifier (trained on
  unbiased data) instead of Inception's: 0 for the same distribution, and the score of two
  independent teacher sets is reported beside it as the noise floor.
- **Grids** (:func:`mechanism_grids`): mask, foreground, background and composite of teacher
  and students on the same noise and labels, side by side.

The untrained-student control (``student.untrained_student``) and the pixel-L1-only student
(``student.losses: pixel``) run through the same pipeline.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from kdci_ray.cgn.composition import compose, counterfactual_labels, shuffle_texture
from kdci_ray.cgn.counterfactuals import Mechanism
from kdci_ray.cgn.mechanisms import MECHANISMS, module_device

# which mechanism comes from the student (S) or the teacher (T), in MECHANISMS order
SWAP_CODES = tuple("".join(c) for c in itertools.product("TS", repeat=len(MECHANISMS)))
SINGLE_SWAPS = {"shape": "STT", "foreground": "TST", "background": "TTS"}


def swap_mechanism(teacher: Mechanism, student: Mechanism, code: str) -> Mechanism:
    """One ``mechanism(name, noise, labels)`` taking mechanism ``i`` from the student where
    ``code[i] == "S"``, from the teacher where it is ``"T"``."""
    if len(code) != len(MECHANISMS) or set(code) - {"S", "T"}:
        raise ValueError(f"swap code must be {len(MECHANISMS)} letters S/T (one per mechanism, "
                         f"{', '.join(MECHANISMS)}), got {code!r}")
    source = {m: (student if c == "S" else teacher) for m, c in zip(MECHANISMS, code,
                                                                     strict=True)}
    return lambda name, noise, labels: source[name](name, noise, labels)


@torch.no_grad()
def composites(mechanism: Mechanism, n: int, latent_dim: int, num_classes: int, seed: int,
               batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """``n`` counterfactual composites (float [0, 1], textures shuffled) and their shape labels,
    every draw fixed by ``seed``: two mechanisms given the same seed get the same noise and
    labels."""
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        y = torch.randint(num_classes, (b,), generator=g)
        _, fg_y, bg_y = counterfactual_labels(y, g)
        z = {m: torch.randn(b, latent_dim, generator=g) for m in MECHANISMS}
        mask = mechanism("shape", z["shape"], y)
        fg = shuffle_texture(mechanism("foreground", z["foreground"], fg_y), g)
        bg = shuffle_texture(mechanism("background", z["background"], bg_y), g)
        images.append(compose(mask, fg, bg))
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


@torch.no_grad()
def label_fidelity(classifier: torch.nn.Module, teacher: Mechanism, student: Mechanism,
                   n: int, latent_dim: int, num_classes: int, seed: int) -> dict[str, float]:
    """The teacher-counterfactual ``classifier``'s accuracy on composites whose mechanisms come
    from the teacher (``label_fidelity_teacher``), from the students (``label_fidelity``) and
    with one student mechanism at a time (``label_fidelity_<mechanism>``), same noise for all."""
    from kdci_ray.cgn.classifier import accuracy

    codes = {"label_fidelity_teacher": "TTT", "label_fidelity": "SSS"} | {
        f"label_fidelity_{m}": code for m, code in SINGLE_SWAPS.items()}
    out = {}
    for key, code in codes.items():
        x, y = composites(swap_mechanism(teacher, student, code), n, latent_dim, num_classes,
                          seed)
        out[key] = accuracy(classifier, x, y)
    return out


@torch.no_grad()
def classifier_features(classifier: torch.nn.Module, images: Tensor,
                        batch_size: int = 500) -> Tensor:
    """Penultimate features (``Outputs.features``) of images in [0, 1] (centred as in
    ``classifier.train_classifier``), float64, on the classifier's device."""
    device = module_device(classifier)
    feats = [classifier((images[i:i + batch_size].to(device) - 0.5) / 0.5).features
             for i in range(0, len(images), batch_size)]
    return torch.cat(feats).double()


def kernel_inception_distance(x: Tensor, y: Tensor, subsets: int = 10, subset_size: int = 500,
                              seed: int = 0) -> tuple[float, float]:
    """KID between feature sets ``x`` (N, D) and ``y`` (M, D): the unbiased MMD² estimate with
    kernel ``k(a, b) = (a·b / D + 1)^3`` averaged over ``subsets`` random subsets of
    ``subset_size`` (capped at the smaller set; drawn on the CPU, computed on the features'
    device); returns ``(mean, std over subsets)``."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"KID needs two (N, D) feature sets of the same D, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    d = x.shape[1]
    g = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        a = x[torch.randperm(len(x), generator=g)[:m].to(x.device)]
        b = y[torch.randperm(len(y), generator=g)[:m].to(y.device)]
        kxx, kyy, kxy = ((a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3)
        off = m * (m - 1)
        mmd = ((kxx.sum() - kxx.diagonal().sum()) / off + (kyy.sum() - kyy.diagonal().sum()) / off
               - 2 * kxy.mean())
        scores.append(float(mmd))
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / max(1, len(scores) - 1))
    return mean, std


def kid_scores(oracle: torch.nn.Module, teacher: Mechanism, student: Mechanism, n: int,
               latent_dim: int, num_classes: int, seed: int) -> dict[str, float]:
    """``kid`` (teacher vs student counterfactuals) and ``kid_floor`` (two independent teacher
    sets), each on the oracle classifier's features, with their std over subsets."""
    def feats(mechanism: Mechanism, s: int) -> Tensor:
        return classifier_features(oracle, composites(mechanism, n, latent_dim, num_classes,
                                                      s)[0])

    teacher_a, teacher_b = feats(teacher, seed), feats(teacher, seed + 1)
    student_f = feats(student, seed + 2)
    kid, kid_std = kernel_inception_distance(teacher_a, student_f, seed=seed)
    floor, floor_std = kernel_inception_distance(teacher_a, teacher_b, seed=seed)
    return {"kid": kid, "kid_std": kid_std, "kid_floor": floor, "kid_floor_std": floor_std}


@torch.no_grad()
def mechanism_grids(teacher: Mechanism, student: Mechanism, latent_dim: int, num_classes: int,
                    per_class: int = 2, seed: int = 0) -> dict[str, Tensor]:
    """Named image sets for a side-by-side sheet: per mechanism, the teacher's and the
    student's outputs on the same noise and labels (textures unshuffled, masks as grey), then
    both composites."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num_classes).repeat_interleave(per_class)
    z = {m: torch.randn(len(y), latent_dim, generator=g) for m in MECHANISMS}
    grids: dict[str, Tensor] = {}
    outs: dict[str, dict[str, Tensor]] = {"teacher": {}, "student": {}}
    for m in MECHANISMS:
        for who, mech in (("teacher", teacher), ("student", student)):
            out = mech(m, z[m], y)
            outs[who][m] = out
            grids[f"{m}: {who}"] = out.expand(-1, 3, -1, -1) if out.shape[1] == 1 else out
    for who in ("teacher", "student"):
        o = outs[who]
        grids[f"composite: {who}"] = compose(o["shape"], o["foreground"], o["background"])
    return grids


