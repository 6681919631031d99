"""SKDCGN experiment config: dataclass sections, flat dotted keys, a built-in smoke mode.

The same machinery as the distillation configs (``kdci_ray.config.schema``): defaults live in
the dataclasses, a YAML file or ``key=value`` overrides set dotted keys (``student.width: 8``), an
unknown key is one error naming it, values are type-checked, ``smoke: true`` shrinks every
schedule so the whole pipeline runs in seconds.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdci_ray.atomic import atomic_write_text
from kdci_ray.cgn.counterfactuals import CounterfactualAugmentation
from kdci_ray.cgn.data import VARIANTS
from kdci_ray.cgn.retrain import RetrainConfig
from kdci_ray.cgn.student import STUDENT_LOSSES, StudentConfig
from kdci_ray.cgn.teacher_fit import TeacherFitConfig
from kdci_ray.config.schema import Schema
from kdci_ray.errors import ConfigError


@dataclass
class CGNDataConfig:
    variant: str = "double_colored"  # colored | double_colored | wildlife
    copies: int = 2  # coloured copies of each train digit
    bias: float = 1.0  # share of train images whose textures follow the digit's label
    # 32x32 with the published datasets' facts (palette, jitter, binarisation, textures;
    # kdci_ray.cgn.data_published), the data of the published teachers; else our 16x16 variants
    published: bool = False
    textures: str = ""  # published wildlife only: absolute path of object/ and background/
    # published only: the digit's box in the 32x32 image and the binarisation threshold (the
    # published recipe on MNIST: 32 and 0.1; ours, closer to MNIST's shapes: see data_published)
    digit_box: int = 22
    binarise_at: float = 0.3


@dataclass
class QueryConfig:
    per_class: int = 1000  # stored black-box queries per class and mechanism (the paper's ~1k)
    heldout_per_class: int = 100  # fresh queries for the fidelity metrics


@dataclass
class ClassifierConfig:
    counterfactuals: int = 10000  # images per counterfactual training set
    steps: int = 500
    batch_size: int = 64
    lr: float = 0.05
    arch: str = "digits_cnn"  # a kdci_ray.models name
    input_size: int = 0  # > 0: the classifier reads images area-downsampled to this side


@dataclass
class ControlsConfig:
    """What the students keep, and where not (``kdci_ray.cgn.controls``)."""

    samples: int = 2000  # composites per set for label fidelity and KID
    swaps: bool = False  # all 8 teacher/student mechanism assignments, a classifier each (+6)
    untrained: bool = False  # untrained students' counterfactuals, a classifier (+1)
    shape_gap: bool = False  # the teacher's shapes vs the data's digits (+3 classifiers)


@dataclass
class CGNRunConfig:
    """Where a trial computes (as the distillation kind's ``run.use_gpu`` / ``gpus_per_worker``)."""

    use_gpu: bool = False  # the trial's pipeline (teacher, students, classifiers) on its GPU
    gpus_per_trial: float = 1.0  # with use_gpu; a fraction packs several trials on one GPU
    tf32: bool = False  # TF32 matmuls and convolutions on a GPU (off: float32 means float32)
    deterministic: bool = False  # deterministic algorithms and cuDNN: bit for bit on a GPU too


@dataclass
class CGNConfig:
    name: str = "skdcgn"
    seed: int = 0
    smoke: bool = False
    data: CGNDataConfig = field(default_factory=CGNDataConfig)
    teacher: TeacherFitConfig = field(default_factory=TeacherFitConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    queries: QueryConfig = field(default_factory=QueryConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    augmentation: CounterfactualAugmentation = field(default_factory=CounterfactualAugmentation)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    run: CGNRunConfig = field(default_factory=CGNRunConfig)


TOP_LEVEL = ("name", "seed", "smoke")
SMOKE: dict[str, Any] = {
    "data.copies": 1, "teacher.steps": 20, "teacher.batch_size": 32, "student.steps": 20,
    "student.batch_size": 32, "queries.per_class": 20, "queries.heldout_per_class": 5,
    "classifier.counterfactuals": 256, "classifier.steps": 20, "retrain.batch_size": 16,
    "controls.samples": 200,
}
SMOKE_CAPS: dict[str, int] = {"retrain.steps": 5, "retrain.d_warmup": 5}  # 0 stays 0
# the sampling-time perturbations were called "composition" until they were told apart from
# SKDCGN's composition study, which perturbs the CGN's training (``retrain``)
RENAMED = {f"composition.{k}": f"augmentation.{k}"
           for k in ("mask_noise", "transparency", "rotation", "per_mask")}


CGN_SCHEMA = Schema(CGNConfig, TOP_LEVEL, {
    "data": CGNDataConfig, "teacher": TeacherFitConfig, "student": StudentConfig,
    "queries": QueryConfig, "retrain": RetrainConfig, "augmentation": CounterfactualAugmentation,
    "classifier": ClassifierConfig, "controls": ControlsConfig, "run": CGNRunConfig,
}, label="SKDCGN ", keys_hint="see kdci_ray/cgn/config.py", renamed=RENAMED)
valid_keys = CGN_SCHEMA.valid_keys
check_keys = CGN_SCHEMA.check_keys
to_flat = CGN_SCHEMA.to_flat


def flatten(mapping: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``a.b: v`` and one level of nesting ``a: {b: v}`` -> dotted keys."""
    return CGN_SCHEMA.flatten(mapping, where)


def resolve(*layers: dict[str, Any], where: str = "") -> CGNConfig:
    """The config of one run from dotted-key layers (file, sampled values, overrides)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(CGN_SCHEMA.flatten(layer, where))
    cfg = CGN_SCHEMA.apply(CGNConfig(), merged, where)
    if cfg.smoke:
        validate(cfg)  # the user's own values as given: smoke mode must not hide a bad one
        CGN_SCHEMA.apply(cfg, SMOKE, "smoke mode")
        CGN_SCHEMA.apply(cfg, {k: min(cap, CGN_SCHEMA.value(cfg, k))
                               for k, cap in SMOKE_CAPS.items()}, "smoke mode")
    validate(cfg)
    return cfg


def validate(cfg: CGNConfig) -> None:
    teacher_modes = ("supervised", "adversarial", "pretrained")
    if cfg.data.variant not in VARIANTS:
        raise ConfigError(f"config key 'data.variant' must be one of {', '.join(VARIANTS)}, "
                          f"got {cfg.data.variant!r}")
    if cfg.teacher.mode not in teacher_modes:
        raise ConfigError(f"config key 'teacher.mode' must be one of {', '.join(teacher_modes)}, "
                          f"got {cfg.teacher.mode!r}")
    if cfg.teacher.mode == "pretrained" and not cfg.teacher.checkpoint.strip():
        raise ConfigError("teacher.mode=pretrained needs 'teacher.checkpoint': the path of a "
                          "published CGN-MNIST teacher (e.g. cgn_double_colored_MNIST.pth, a "
                          "plain state dict)")
    if cfg.teacher.mode != "pretrained" and cfg.teacher.checkpoint.strip():
        raise ConfigError(f"config key 'teacher.checkpoint' is read only by teacher.mode="
                          f"pretrained, but teacher.mode is {cfg.teacher.mode}: set "
                          f"teacher.mode=pretrained or drop teacher.checkpoint")
    check_ranges(cfg)
    positive = {"data.copies": cfg.data.copies, "teacher.steps": cfg.teacher.steps,
                "teacher.batch_size": cfg.teacher.batch_size, "teacher.width": cfg.teacher.width,
                "student.steps": cfg.student.steps, "student.width": cfg.student.width,
                "student.batch_size": cfg.student.batch_size,
                "queries.per_class": cfg.queries.per_class,
                "queries.heldout_per_class": cfg.queries.heldout_per_class,
                "augmentation.per_mask": cfg.augmentation.per_mask,
                "classifier.counterfactuals": cfg.classifier.counterfactuals,
                "classifier.steps": cfg.classifier.steps, "controls.samples": cfg.controls.samples,
                "retrain.batch_size": cfg.retrain.batch_size}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {value}")
    if not 0.0 <= cfg.data.bias <= 1.0:
        raise ConfigError(f"config key 'data.bias' must be in [0, 1], got {cfg.data.bias}")
    for section in ("augmentation", "retrain"):
        values = getattr(cfg, section)
        level = values.transparency if section == "augmentation" else values.opacity
        name = "transparency" if section == "augmentation" else "opacity"
        if not 0.0 < level <= 1.0:
            raise ConfigError(f"config key '{section}.{name}' must be in (0, 1], got {level}")
        if values.mask_noise < 0 or not 0 <= values.rotation <= 180:
            raise ConfigError(f"config keys '{section}.mask_noise' (>= 0) and "
                              f"'{section}.rotation' (degrees, 0 to 180) are out of range: "
                              f"{values.mask_noise}, {values.rotation}")
    if cfg.retrain.steps < 0 or cfg.retrain.d_warmup < 0 or cfg.retrain.mask_loss_weight < 0:
        raise ConfigError("config keys 'retrain.steps', 'retrain.d_warmup' and "
                          "'retrain.mask_loss_weight' must be >= 0")
    validate_published(cfg)
    if not 0.0 < cfg.run.gpus_per_trial <= 1.0:
        raise ConfigError(f"config key 'run.gpus_per_trial' must be in (0, 1] (a trial computes "
                          f"on one GPU; a fraction packs several trials on it), got "
                          f"{cfg.run.gpus_per_trial}")
    if cfg.student.losses not in STUDENT_LOSSES:
        raise ConfigError(f"config key 'student.losses' must be one of "
                          f"{', '.join(STUDENT_LOSSES)}, got {cfg.student.losses!r}")
    from kdci_ray.models import MODELS

    if cfg.classifier.arch not in MODELS:
        close = difflib.get_close_matches(cfg.classifier.arch, list(MODELS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"config key 'classifier.arch': unknown model "
                          f"{cfg.classifier.arch!r}{hint} (one of {', '.join(sorted(MODELS))})")
    if cfg.student.width * 2 > cfg.teacher.width:
        raise ConfigError(
            f"student.width={cfg.student.width} is more than half of teacher.width="
            f"{cfg.teacher.width}: SKDCGN students must compress the teacher's mechanisms "
            f"(the published MNIST students were larger than their teachers); lower "
            f"student.width")


def check_ranges(cfg: CGNConfig) -> None:
    """Learning rates > 0, Adam's betas in [0, 1), widths, intervals and other sizes >= 1,
    loss weights >= 0 and fractions in [0, 1]: a bad one is named before Ray starts."""
    t, value = cfg.teacher, CGN_SCHEMA.value
    for key in ("teacher.lr", "teacher.code_lr", "student.lr", "student.d_lr", "retrain.lr",
                "classifier.lr"):
        if not 0 < value(cfg, key) < math.inf:
            raise ConfigError(f"config key '{key}' must be a learning rate > 0, got "
                              f"{value(cfg, key)}")
    for key in ("student.beta1", "student.beta2", "retrain.beta1", "retrain.beta2"):
        if not 0 <= value(cfg, key) < 1:
            raise ConfigError(f"config key '{key}' (an Adam beta) must be in [0, 1), got "
                              f"{value(cfg, key)}")
    for key in ("teacher.latent_dim", "student.d_width", "student.adv_every",
                "retrain.d_width"):
        if value(cfg, key) < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {value(cfg, key)}")
    for key in ("student.pixel_weight", "student.adv_weight", "student.mask_loss_weight",
                "teacher.mask_entropy_weight", "classifier.input_size"):
        if not 0 <= value(cfg, key) < math.inf:
            raise ConfigError(f"config key '{key}' must be >= 0, got {value(cfg, key)}")
    for key in ("student.pixel_decay", "teacher.mask_min", "teacher.mask_max"):
        if not 0 <= value(cfg, key) <= 1:
            raise ConfigError(f"config key '{key}' (a fraction) must be in [0, 1], got "
                              f"{value(cfg, key)}")
    if t.mask_min > t.mask_max:
        raise ConfigError(f"config keys 'teacher.mask_min' ({t.mask_min}) and 'teacher.mask_max' "
                          f"({t.mask_max}): the smallest mask share must not exceed the largest")


def validate_published(cfg: CGNConfig) -> None:
    """The published teachers, their 32x32 data and the retraining go together."""
    d, t = cfg.data, cfg.teacher
    if t.mode == "pretrained" and not d.published:
        raise ConfigError("teacher.mode=pretrained: the published CGN-MNIST teachers generate "
                          "32x32 images with the published datasets' colours and textures; set "
                          "data.published: true (32x32 data built with those facts)")
    if d.published and d.variant == "wildlife" and not d.textures.strip():
        raise ConfigError("data.published with data.variant=wildlife needs 'data.textures': the "
                          "absolute path of the directory holding object/ and background/ (one "
                          "'<class>_*.jpg' per class; the CGN authors' mnists/data/textures)")
    if not 8 <= d.digit_box <= 32 or not 0.0 <= d.binarise_at < 1.0:
        raise ConfigError(f"config keys 'data.digit_box' (8 to 32 px) and 'data.binarise_at' "
                          f"(0 to 1) are out of range: {d.digit_box}, {d.binarise_at}")
    if d.textures.strip() and not (d.published and d.variant == "wildlife"):
        raise ConfigError("config key 'data.textures' is read only by the published wildlife "
                          "data (data.published: true, data.variant: wildlife): drop it")
    if cfg.retrain.steps > 0 and t.mode != "pretrained":
        raise ConfigError("config key 'retrain.steps' fine-tunes a published CGN-MNIST teacher "
                          "(SKDCGN's composition study): it needs teacher.mode=pretrained")


def save(cfg: CGNConfig, path: Path) -> None:
    """The resolved config as flat YAML, written atomically."""
    atomic_write_text(path, yaml.safe_dump(to_flat(cfg), sort_keys=False))
