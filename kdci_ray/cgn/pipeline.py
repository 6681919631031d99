"""One SKDCGN experiment, end to end: data, teacher CGN, black-box queries, students,
counterfactuals, invariant classifiers, and the metrics of the report.

Shifted-test accuracy of the classifier trained on (a) the biased originals, (b) teacher
counterfactuals, (c) student counterfactuals, (d) unbiased data (oracle); the retained gain
``(c - a) / (b - a)``; per-mechanism fidelity on held-out queries (L1, and mask IoU at 0.5); the
students' parameter and sampling-speed ratios against the teacher's mechanisms; label fidelity
and KID (``controls``), and with ``controls.*`` the teacher/student swaps, the untrained-student
control and the shape-domain gap.

Everything that trains or evaluates runs on :func:`run`'s ``device`` (the teacher in the black
box's own process); data and random draws are made on the CPU (CPU generators) and moved there,
so a GPU run draws the same noise and labels as a CPU run.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdci_ray.cgn.blackbox import BlackBoxCGN, QuerySet, collect_queries
from kdci_ray.cgn.cache import cached_reference, cached_students_of, cached_teacher_cgn
from kdci_ray.cgn.classifier import accuracy, new_classifier, train_classifier
from kdci_ray.cgn.config import CGNConfig
from kdci_ray.cgn.controls import (
    SWAP_CODES,
    kid_scores,
    label_fidelity,
    mechanism_grids,
    swap_mechanism,
)
from kdci_ray.cgn.counterfactuals import counterfactual_dataset, on_device, students_mechanism
from kdci_ray.cgn.data import MechanismData, make_split
from kdci_ray.cgn.data_published import make_published_split
from kdci_ray.cgn.mechanisms import MECHANISMS, module_device, parameter_count
from kdci_ray.cgn.student import untrained_student
from kdci_ray.train.numerics import numerics


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
    """Per mechanism the L1 of the student's outputs to the held-out answers (and the mask IoU),
    computed on each student's device."""
    out = {}
    with torch.no_grad():
        for name, q in heldout.items():
            device = module_device(students[name])
            pred = students[name](q.noise.to(device), q.labels.to(device))
            answers = q.answers.to(device)
            out[f"l1_{name}"] = float((pred - answers).abs().mean())
            if name == "shape":
                out["mask_iou"] = mask_iou(pred, answers)
    return out


@torch.no_grad()
def images_per_second(mechanism, latent_dim: int, num_classes: int, n: int = 512,
                      batch_size: int = 256, repeats: int = 3,
                      device: str | torch.device = "cpu") -> float:
    """Sampling speed of all three mechanisms (best of ``repeats`` passes over ``n`` samples),
    the inputs already on ``device``; on a GPU the clock is read after it has finished."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, latent_dim, generator=g).to(device)
    y = torch.randint(num_classes, (n,), generator=g).to(device)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for i in range(0, n, batch_size):
            for name in MECHANISMS:
                mechanism(name, z[i:i + batch_size], y[i:i + batch_size])
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return n / best


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a CUDA GPU runs asynchronously; others do not)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_split(cfg: CGNConfig, split: str) -> MechanismData:
    """One split of ``cfg``'s data: the published variants at 32x32 (``data.published``) or our
    16x16 ones; the test split has one copy of each digit."""
    d = cfg.data
    copies = 1 if split == "test" else d.copies
    if d.published:
        return make_published_split(d.variant, split, seed=cfg.seed, copies=copies, bias=d.bias,
                                    textures=d.textures.strip() or None,
                                    digit_box=d.digit_box, binarise_at=d.binarise_at)
    return make_split(d.variant, split, seed=cfg.seed, copies=copies, bias=d.bias)


def run(cfg: CGNConfig, out_dir: Path | None = None, log=print,
        device: str | torch.device = "cpu") -> dict[str, Any]:
    """Everything of one trial on ``device`` (a Tune trial passes ``worker_device``'s; a tool
    may pass ``cuda`` without Ray); returns the metrics (accuracies as fractions). With
    ``out_dir`` it also writes sample grids (``samples.png``, ``mechanisms.png``, TensorBoard
    images). ``run.tf32`` and ``run.deterministic`` hold for its duration
    (``kdci_ray.train.numerics``)."""
    with numerics(cfg.run):
        return _run(cfg, out_dir, log, torch.device(device))


def _run(cfg: CGNConfig, out_dir: Path | None, log, device: torch.device) -> dict[str, Any]:
    """:func:`run`'s steps, each timed: teacher, students (across the black box), the four
    classifiers, the controls, sample sheets, sizes and speeds."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    train, test, oracle = (load_split(cfg, s) for s in ("train", "test", "oracle"))
    num_classes = int(train.labels.max()) + 1

    teacher, cached_teacher = cached_teacher_cgn(cfg, train, log, device=device)
    times["teacher_s"] = time.perf_counter() - t0

    # --- the black-box boundary: from here on the student side sees stored queries only
    t = time.perf_counter()
    box = BlackBoxCGN(teacher, device=device)  # the CPU teacher, put on the device there
    students, cached_students = cached_students_of(cfg, box, num_classes, log, device=device)
    heldout = collect_queries(box, cfg.queries.heldout_per_class, seed=cfg.seed + 10_000)
    times["students_s"] = time.perf_counter() - t

    t = time.perf_counter()
    # both mechanisms take and give tensors on the device (the box answers on the CPU)
    mechanisms = Mechanisms(teacher=on_device(box.query, device),
                            student=on_device(students_mechanism(students), device))
    bench = Classifiers(cfg, test, num_classes, box.latent_dim, device)
    scores = score_counterfactuals(bench, train, oracle, mechanisms, log)
    times["classifiers_s"] = time.perf_counter() - t

    t = time.perf_counter()
    extra = control_metrics(bench, scores, mechanisms, box, train, log)
    times["controls_s"] = time.perf_counter() - t
    if out_dir is not None:
        write_samples(out_dir, sample_sheets(bench, scores, mechanisms, train))

    sizes = size_and_speed(cfg, teacher, students, box, num_classes, device)
    times["total_s"] = time.perf_counter() - t0
    accs = scores.accs
    return {**accs,
            "retained_gain": retained_gain(accs["acc_biased"], accs["acc_teacher_cf"],
                                           accs["acc_student_cf"]),
            **sizes,
            "teacher_cached": float(cached_teacher), "students_cached": float(cached_students),
            "references_cached": float(scores.references_cached),  # of the 2 (biased, oracle)
            **fidelity(students, heldout), **extra, **times}


@dataclass
class Mechanisms:
    """The teacher's (through the black box) and the students' mechanisms, on the device."""

    teacher: Callable
    student: Callable


@dataclass
class Classifiers:
    """The invariant classifiers of one trial (``classifier.*``): built, trained on the trial's
    device and scored on the shifted test split; and the counterfactual sets they train on."""

    cfg: CGNConfig
    test: MechanismData
    num_classes: int
    latent_dim: int
    device: torch.device

    def untrained(self) -> torch.nn.Module:
        c = self.cfg.classifier
        return new_classifier(c.arch, self.num_classes, 3, c.input_size)

    def fit(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.nn.Module, float]:
        """A classifier trained on ``images`` and its shifted-test accuracy."""
        c = self.cfg.classifier
        clf = train_classifier(images, labels, self.num_classes, steps=c.steps,
                               batch_size=c.batch_size, lr=c.lr, seed=self.cfg.seed,
                               arch=c.arch, input_size=c.input_size, device=self.device)
        return clf, accuracy(clf, self.test.images, self.test.labels)

    def reference(self, which: str,
                  split: MechanismData) -> tuple[torch.nn.Module, float, bool]:
        """The ``which`` (biased | oracle) classifier, trained on ``split`` or from the cache:
        ``(model, accuracy, cached)``."""
        return cached_reference(self.cfg, which, lambda: self.fit(split.images, split.labels),
                                self.untrained, device=self.device)

    def counterfactuals(self, mechanism) -> tuple[torch.Tensor, torch.Tensor]:
        """``classifier.counterfactuals`` images composed by ``mechanism``, and their labels."""
        return counterfactual_dataset(mechanism, self.cfg.classifier.counterfactuals,
                                      self.latent_dim, self.num_classes, seed=self.cfg.seed,
                                      variant=self.cfg.augmentation)

    def fit_counterfactuals(self, mechanism) -> float:
        """The shifted-test accuracy of a classifier trained on ``mechanism``'s
        counterfactuals."""
        return self.fit(*self.counterfactuals(mechanism))[1]


@dataclass
class CounterfactualScores:
    """The four classifiers' accuracies (biased, oracle, teacher and student counterfactuals),
    the models the controls score with, and the counterfactual sets the samples show."""

    accs: dict[str, float]
    models: dict[str, torch.nn.Module]  # biased, oracle, teacher_cf
    references_cached: int  # of the 2 reference classifiers (biased, oracle)
    teacher_cf: tuple[torch.Tensor, torch.Tensor]
    student_cf: tuple[torch.Tensor, torch.Tensor]


def score_counterfactuals(bench: Classifiers, train: MechanismData, oracle: MechanismData,
                          mechanisms: Mechanisms, log) -> CounterfactualScores:
    """The paper's four classifiers: on the biased originals and the unbiased data (both
    cached per data and settings), and on the teacher's and the students' counterfactuals."""
    accs, models, reused = {}, {}, 0
    for which, split in (("biased", train), ("oracle", oracle)):
        models[which], accs[f"acc_{which}"], hit = bench.reference(which, split)
        reused += hit
    cf_t = bench.counterfactuals(mechanisms.teacher)
    cf_s = bench.counterfactuals(mechanisms.student)
    models["teacher_cf"], accs["acc_teacher_cf"] = bench.fit(*cf_t)
    _, accs["acc_student_cf"] = bench.fit(*cf_s)
    for key in ("acc_biased", "acc_teacher_cf", "acc_student_cf", "acc_oracle"):
        log(f"{key}: {accs[key]:.4f}")
    return CounterfactualScores(accs, models, reused, cf_t, cf_s)


def control_metrics(bench: Classifiers, scores: CounterfactualScores, mechanisms: Mechanisms,
                    box: BlackBoxCGN, train: MechanismData, log) -> dict[str, float]:
    """What the students keep (``controls``): label fidelity and KID, and with ``controls.*``
    the mechanism swaps, the untrained-student control and the teacher's shape-domain gap."""
    cfg, ctl, shape = bench.cfg, bench.cfg.controls, (bench.latent_dim, bench.num_classes)
    teacher_mech, student_mech = mechanisms.teacher, mechanisms.student
    extra = {**label_fidelity(scores.models["teacher_cf"], teacher_mech, student_mech,
                              ctl.samples, *shape, seed=cfg.seed + 20_000),
             **kid_scores(scores.models["oracle"], teacher_mech, student_mech, ctl.samples,
                          *shape, seed=cfg.seed + 30_000)}
    if ctl.swaps:
        for code in SWAP_CODES:
            if code in ("TTT", "SSS"):  # the teacher and student counterfactuals
                continue
            extra[f"acc_cf_{code}"] = bench.fit_counterfactuals(
                swap_mechanism(teacher_mech, student_mech, code))
            log(f"swap {code} (shape, foreground, background; S = student): "
                f"{extra[f'acc_cf_{code}']:.4f}")
    if ctl.untrained:
        extra.update(untrained_control(bench, scores, box.image_size))
    if ctl.shape_gap:
        extra.update(teacher_shape_gap(cfg, box, train, bench.test, bench.num_classes,
                                       bench.device))
    return extra


def untrained_control(bench: Classifiers, scores: CounterfactualScores,
                      image_size: int) -> dict[str, float]:
    """The classifier trained on untrained students' counterfactuals, and the gain it keeps."""
    cfg = bench.cfg
    blank = {m: untrained_student(m, bench.num_classes, bench.latent_dim, cfg.student.width,
                                  image_size, seed=cfg.seed).to(bench.device)
             for m in MECHANISMS}
    acc = bench.fit_counterfactuals(on_device(students_mechanism(blank), bench.device))
    accs = scores.accs
    return {"acc_untrained_cf": acc,
            "retained_gain_untrained": retained_gain(accs["acc_biased"],
                                                     accs["acc_teacher_cf"], acc)}


def sample_sheets(bench: Classifiers, scores: CounterfactualScores, mechanisms: Mechanisms,
                  train: MechanismData) -> dict[str, dict[str, torch.Tensor]]:
    """The sample grids a trial writes (``samples.png``, ``mechanisms.png``)."""
    return {"samples.png": {"originals (biased train)": train.images[:40],
                            "teacher counterfactuals": scores.teacher_cf[0][:40],
                            "student counterfactuals": scores.student_cf[0][:40],
                            "shifted test": bench.test.images[:40]},
            "mechanisms.png": mechanism_grids(mechanisms.teacher, mechanisms.student,
                                              bench.latent_dim, bench.num_classes,
                                              seed=bench.cfg.seed)}


def size_and_speed(cfg: CGNConfig, teacher, students: dict[str, torch.nn.Module],
                   box: BlackBoxCGN, num_classes: int, device: torch.device) -> dict[str, float]:
    """The students' parameter and sampling-speed ratios against the teacher's mechanisms (the
    teacher timed in its own process, not through the pipe); closes the black box."""
    teacher_params = sum(parameter_count(teacher.mechanisms[m]) for m in MECHANISMS)
    student_params = sum(parameter_count(students[m]) for m in MECHANISMS)
    timing = {"n": 128, "repeats": 1} if cfg.smoke else {}  # smoke: a rough figure, quickly
    speed_t = box.speed(**timing)
    box.close()
    speed_s = images_per_second(students_mechanism(students), box.latent_dim, num_classes,
                                **timing, device=device)
    return {"param_ratio": student_params / teacher_params,
            "sample_speed_ratio": speed_s / speed_t,
            "teacher_params": teacher_params, "student_params": student_params,
            "teacher_images_per_s": speed_t, "student_images_per_s": speed_s}


def teacher_shape_gap(cfg: CGNConfig, box: BlackBoxCGN, train: MechanismData,
                      test: MechanismData, num_classes: int,
                      device: str | torch.device = "cpu") -> dict[str, float]:
    """The shape-domain gap between the teacher's masks (queried from the box) and the data's
    digits (``kdci_ray.cgn.shape_gap``, its classifiers on ``device``), cached per teacher, data,
    classifier, seed and device."""
    from kdci_ray.cgn.cache import cached_metrics, teacher_key
    from kdci_ray.cgn.shape_gap import shape_domain_gap

    c = cfg.classifier

    def compute() -> dict[str, float]:
        g = torch.Generator().manual_seed(cfg.seed + 40_000)
        per_class = max(1, len(train) // num_classes)
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        noise = torch.randn(len(labels), box.latent_dim, generator=g)
        masks = torch.cat([box.query("shape", noise[i:i + 500], labels[i:i + 500])
                           for i in range(0, len(labels), 500)])
        return shape_domain_gap(masks, labels, train.masks, train.labels, test.masks,
                                test.labels, steps=c.steps, batch_size=c.batch_size, lr=c.lr,
                                seed=cfg.seed, arch=c.arch, input_size=c.input_size,
                                device=device)

    # the teacher's key names a device other than the CPU: the classifiers trained there too
    values, _ = cached_metrics("shape-gap", [teacher_key(cfg, device), dataclasses.asdict(c)],
                               compute)
    return values


def write_samples(out_dir: Path, sheets: dict[str, dict[str, torch.Tensor]]) -> list[Path]:
    """Per sheet (file name -> named image sets, on any device) one PNG with a row block per
    image set, and every image set in one TensorBoard event file."""
    from PIL import Image
    from tensorboardX import SummaryWriter

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with SummaryWriter(str(out_dir)) as writer:
        for file_name, grids in sheets.items():
            blocks = [image_grid(x.detach().cpu()) for x in grids.values()]
            sheet = torch.cat([torch.cat([b, torch.ones(3, 2, b.shape[-1])], dim=1)
                               for b in blocks], dim=1)
            paths.append(out_dir / file_name)
            Image.fromarray((sheet.permute(1, 2, 0).clamp(0, 1) * 255).byte().numpy()).resize(
                (sheet.shape[2] * 4, sheet.shape[1] * 4), Image.NEAREST).save(paths[-1])
            for name, block in zip(grids, blocks, strict=True):
                writer.add_image(image_tag(file_name, name), block.clamp(0, 1).numpy(), 0)
    return paths


def image_tag(file_name: str, name: str) -> str:
    """The TensorBoard tag of an image set: ``<sheet>/<name>`` in lower-case words joined by
    ``_`` (``mechanisms.png``, ``shape: teacher`` -> ``mechanisms/shape_teacher``)."""
    words = re.findall(r"[a-z0-9]+", name.lower())
    return f"{Path(file_name).stem}/{'_'.join(words)}"


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
