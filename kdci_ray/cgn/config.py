"""SKDCGN experiment config: its sections, smoke values and value checks.

Everything else is the machinery every kind shares (``kdci_ray.config``): defaults live in the
dataclasses, a YAML file or ``key=value`` overrides set dotted keys (``student.width: 8``), an
unknown key is one error naming the closest valid one, values are type-checked, the layers
resolve in one order (``kdci_ray.config.layers``), ``smoke: true`` shrinks every schedule so the
whole pipeline runs in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdci_ray.cgn.counterfactuals import CounterfactualAugmentation
from kdci_ray.cgn.data import VARIANTS
from kdci_ray.cgn.retrain import RetrainConfig
from kdci_ray.cgn.student import STUDENT_LOSSES, GeneratorStudentConfig
from kdci_ray.cgn.teacher_fit import TeacherFitConfig
from kdci_ray.config.layers import capped, resolve_layers, save_flat
from kdci_ray.config.schema import Schema, check_choice
from kdci_ray.errors import ConfigError
from kdci_ray.models import MODELS


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
    student: GeneratorStudentConfig = field(default_factory=GeneratorStudentConfig)
    queries: QueryConfig = field(default_factory=QueryConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    augmentation: CounterfactualAugmentation = field(default_factory=CounterfactualAugmentation)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    run: CGNRunConfig = field(default_factory=CGNRunConfig)


TOP_LEVEL = ("name", "seed", "smoke")
TEACHER_MODES = ("supervised", "adversarial", "pretrained")
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
    "data": CGNDataConfig, "teacher": TeacherFitConfig, "student": GeneratorStudentConfig,
    "queries": QueryConfig, "retrain": RetrainConfig, "augmentation": CounterfactualAugmentation,
    "classifier": ClassifierConfig, "controls": ControlsConfig, "run": CGNRunConfig,
}, label="SKDCGN ", keys_hint="run `kdci-ray keys --kind skdcgn` to list them", renamed=RENAMED)
valid_keys = CGN_SCHEMA.valid_keys
check_keys = CGN_SCHEMA.check_keys
to_flat = CGN_SCHEMA.to_flat


def smoke_values(cfg: CGNConfig) -> dict[str, Any]:
    """Smoke mode's schedules: :data:`SMOKE`, and :data:`SMOKE_CAPS` as upper bounds."""
    return {**SMOKE, **capped(CGN_SCHEMA, cfg, SMOKE_CAPS)}


def resolve(*layers: dict[str, Any], where: str = "", smoke: bool | None = None) -> CGNConfig:
    """The validated config of one run from dotted-key layers (file, sampled values,
    overrides), in the order every kind resolves (``kdci_ray.config.layers``)."""
    return resolve_layers(CGN_SCHEMA, layers, validate=validate, smoke_values=smoke_values,
                          smoke=smoke, where=where)


def save(cfg: CGNConfig, path: Path) -> Path:
    """The resolved config as flat YAML, written atomically."""
    return save_flat(CGN_SCHEMA, cfg, path)


def validate(cfg: CGNConfig) -> None:
    """Value checks that need more than a type; the first bad value is one ``ConfigError``."""
    check_choice("data.variant", cfg.data.variant, VARIANTS)
    check_choice("teacher.mode", cfg.teacher.mode, TEACHER_MODES)
    check_choice("student.losses", cfg.student.losses, STUDENT_LOSSES)
    check_choice("classifier.arch", cfg.classifier.arch, sorted(MODELS))
    check_teacher_checkpoint(cfg)
    check_ranges(cfg)
    check_sizes(cfg)
    check_perturbations(cfg)
    validate_published(cfg)
    if not 0.0 < cfg.run.gpus_per_trial <= 1.0:
        raise ConfigError(f"config key 'run.gpus_per_trial' must be in (0, 1] (a trial computes "
                          f"on one GPU; a fraction packs several trials on it), got "
                          f"{cfg.run.gpus_per_trial}")
    if cfg.student.width * 2 > cfg.teacher.width:
        raise ConfigError(
            f"student.width={cfg.student.width} is more than half of teacher.width="
            f"{cfg.teacher.width}: SKDCGN students must compress the teacher's mechanisms "
            f"(the published MNIST students were larger than their teachers); lower "
            f"student.width")


def check_teacher_checkpoint(cfg: CGNConfig) -> None:
    """``teacher.checkpoint`` is given exactly when ``teacher.mode`` is ``pretrained``."""
    if cfg.teacher.mode == "pretrained" and not cfg.teacher.checkpoint.strip():
        raise ConfigError("teacher.mode=pretrained needs 'teacher.checkpoint': the path of a "
                          "published CGN-MNIST teacher (e.g. cgn_double_colored_MNIST.pth, a "
                          "plain state dict)")
    if cfg.teacher.mode != "pretrained" and cfg.teacher.checkpoint.strip():
        raise ConfigError(f"config key 'teacher.checkpoint' is read only by teacher.mode="
                          f"pretrained, but teacher.mode is {cfg.teacher.mode}: set "
                          f"teacher.mode=pretrained or drop teacher.checkpoint")


def check_sizes(cfg: CGNConfig) -> None:
    """Counts, widths and schedules >= 1, the data's bias a fraction."""
    for key in ("data.copies", "teacher.steps", "teacher.batch_size", "teacher.width",
                "student.steps", "student.width", "student.batch_size", "queries.per_class",
                "queries.heldout_per_class", "augmentation.per_mask",
                "classifier.counterfactuals", "classifier.steps", "controls.samples",
                "retrain.batch_size"):
        value = CGN_SCHEMA.value(cfg, key)
        if value < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {value}")
    if not 0.0 <= cfg.data.bias <= 1.0:
        raise ConfigError(f"config key 'data.bias' must be in [0, 1], got {cfg.data.bias}")


def check_perturbations(cfg: CGNConfig) -> None:
    """The counterfactuals' augmentation and the composition study's retraining perturb masks
    by amounts in range; the retraining's schedule and mask loss are >= 0."""
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

