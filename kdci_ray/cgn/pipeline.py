"""One SKDCGN experiment, end to end: data, teacher CGN, black-box queries, students,
counterfactuals, invariant classifiers, and the metrics of the report.

Shifted-test accuracy of the classifier trained on (a) the biased originals, (b) teacher
counterfactuals, (c) student counterfactuals, (d) unbiased data (oracle); the retained gain
``(c - a) / (b - a)``; per-mechanism fidelity on held-out queries (L1, and mask IoU at 0.5); the
students' parameter and sampling-speed ratios against the teacher's mechanisms.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from kdci_ray.cgn.blackbox import BlackBoxCGN, QuerySet, collect_queries
from kdci_ray.cgn.cache import cached_accuracy, cached_students_of, cached_teacher_cgn
from kdci_ray.cgn.classifier import accuracy, train_classifier
from kdci_ray.cgn.config import CGNConfig
from kdci_ray.cgn.counterfactuals import counterfactual_dataset, students_mechanism
from kdci_ray.cgn.data import make_split
from kdci_ray.cgn.mechanisms import MECHANISMS, parameter_count


def retained_gain(biased: float, teacher_cf: float, student_cf: float) -> float:
    """``(student_cf - biased) / (teacher_cf - biased)``: the share of the teacher
    counterfactuals' gain the students keep; NaN when the teacher gains nothing."""
    gain = teacher_cf - biased
    return (student_cf - biased) / gain if gain > 0 else float("nan")


def mask_iou(a: torch.Tensor, b: torch.Tensor, threshold: float = 0.5) -> float:
    """Mean per-image IoU of two masks binarised at ``threshold`` (empty vs empty counts 1)."""
    pa, pb = a > threshold, b > threshold
    inter = (pa & pb).flatten(1).sum(1).float()
    union = (pa | pb).flatten(1).sum(1).float()
    return float(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).mean())


def fidelity(students: dict[str, torch.nn.Module],
             heldout: dict[str, QuerySet]) -> dict[str, float]:
    out = {}
    with torch.no_grad():
        for name, q in heldout.items():
            pred = students[name](q.noise, q.labels)
            out[f"l1_{name}"] = float((pred - q.answers).abs().mean())
            if name == "shape":
                out["mask_iou"] = mask_iou(pred, q.answers)
    return out


@torch.no_grad()
def images_per_second(mechanism, latent_dim: int, num_classes: int, n: int = 2048,
                      batch_size: int = 256, repeats: int = 3) -> float:
    """Sampling speed of all three mechanisms (best of ``repeats`` passes over ``n`` samples)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, latent_dim, generator=g)
    y = torch.randint(num_classes, (n,), generator=g)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, n, batch_size):
            for name in MECHANISMS:
                mechanism(name, z[i:i + batch_size], y[i:i + batch_size])
        best = min(best, time.perf_counter() - start)
    return n / best


def run(cfg: CGNConfig, out_dir: Path | None = None, log=print) -> dict[str, Any]:
    """Everything of one trial; returns the metrics (accuracies as fractions). With ``out_dir``
    it also writes sample grids (``samples.png``, TensorBoard images) there."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    d = cfg.data
    train = make_split(d.variant, "train", seed=cfg.seed, copies=d.copies, bias=d.bias)
    test = make_split(d.variant, "test", seed=cfg.seed)
    oracle = make_split(d.variant, "oracle", seed=cfg.seed, copies=d.copies)
    num_classes = int(train.labels.max()) + 1

    teacher, cached_teacher = cached_teacher_cgn(cfg, train, log)
    times["teacher_s"] = time.perf_counter() - t0

    # --- the black-box boundary: from here on the student side sees stored queries only
    t = time.perf_counter()
    box = BlackBoxCGN(teacher)
    students, cached_students = cached_students_of(cfg, box, num_classes, log)
    heldout = collect_queries(box, cfg.queries.heldout_per_class, seed=cfg.seed + 10_000)
    times["students_s"] = time.perf_counter() - t

    t = time.perf_counter()
    teacher_mech, student_mech = box.query, students_mechanism(students)
    c = cfg.classifier
    cf_t = counterfactual_dataset(teacher_mech, c.counterfactuals, box.latent_dim, num_classes,
                                  seed=cfg.seed, variant=cfg.composition)
    cf_s = counterfactual_dataset(student_mech, c.counterfactuals, box.latent_dim, num_classes,
                                  seed=cfg.seed, variant=cfg.composition)
    def shifted_test_accuracy(x: torch.Tensor, y: torch.Tensor) -> float:
        clf = train_classifier(x, y, num_classes, steps=c.steps, batch_size=c.batch_size,
                               lr=c.lr, seed=cfg.seed)
        return accuracy(clf, test.images, test.labels)

    accs, reused = {}, []
    for key, which, (x, y) in (("acc_biased", "biased", (train.images, train.labels)),
                               ("acc_teacher_cf", None, cf_t), ("acc_student_cf", None, cf_s),
                               ("acc_oracle", "oracle", (oracle.images, oracle.labels))):
        if which is None:  # depends on the composition: always trained
            accs[key] = shifted_test_accuracy(x, y)
        else:  # the same for every composition variant: once per data, classifier and seed
            accs[key], hit = cached_accuracy(cfg, which,
                                             lambda x=x, y=y: shifted_test_accuracy(x, y))
            reused.append(hit)
        log(f"{key}: {accs[key]:.4f}")
    times["classifiers_s"] = time.perf_counter() - t
    if out_dir is not None:
        write_samples(out_dir, {"originals (biased train)": train.images[:40],
                                "teacher counterfactuals": cf_t[0][:40],
                                "student counterfactuals": cf_s[0][:40],
                                "shifted test": test.images[:40]})

    teacher_params = sum(parameter_count(teacher.mechanisms[m]) for m in MECHANISMS)
    student_params = sum(parameter_count(students[m]) for m in MECHANISMS)
    speed_t = box.speed()  # timed in the teacher's own process, not through the pipe
    box.close()
    speed_s = images_per_second(student_mech, box.latent_dim, num_classes)
    times["total_s"] = time.perf_counter() - t0
    return {**accs,
            "retained_gain": retained_gain(accs["acc_biased"], accs["acc_teacher_cf"],
                                           accs["acc_student_cf"]),
            "param_ratio": student_params / teacher_params,
            "sample_speed_ratio": speed_s / speed_t,
            "teacher_params": teacher_params, "student_params": student_params,
            "teacher_images_per_s": speed_t, "student_images_per_s": speed_s,
            "teacher_cached": float(cached_teacher), "students_cached": float(cached_students),
            "references_cached": float(sum(reused)),  # of the 2 (biased, oracle) loaded
            **fidelity(students, heldout), **times}


def write_samples(out_dir: Path, grids: dict[str, torch.Tensor]) -> Path:
    """One PNG with a row block per named image set, and the same grids in TensorBoard."""
    from PIL import Image
    from tensorboardX import SummaryWriter

    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = [image_grid(x) for x in grids.values()]
    sheet = torch.cat([torch.cat([b, torch.ones(3, 2, b.shape[-1])], dim=1) for b in blocks],
                      dim=1)
    path = out_dir / "samples.png"
    Image.fromarray((sheet.permute(1, 2, 0).clamp(0, 1) * 255).byte().numpy()).resize(
        (sheet.shape[2] * 4, sheet.shape[1] * 4), Image.NEAREST).save(path)
    with SummaryWriter(str(out_dir)) as writer:
        for name, block in zip(grids, blocks, strict=True):
            writer.add_image(name, block.clamp(0, 1).numpy(), 0)
    return path


def image_grid(images: torch.Tensor, per_row: int = 10, pad: int = 1) -> torch.Tensor:
    """``(N, C, H, W)`` -> one ``(3, rows*(H+pad), per_row*(W+pad))`` image, white padding."""
    n, c, h, w = images.shape
    rows = -(-n // per_row)
    grid = torch.ones(3, rows * (h + pad), per_row * (w + pad))
    for i, img in enumerate(images):
        r, col = divmod(i, per_row)
        grid[:, r * (h + pad):r * (h + pad) + h, col * (w + pad):col * (w + pad) + w] = \
            img.expand(3, h, w)
    return grid
