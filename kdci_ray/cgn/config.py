"""SKDCGN experiment config: dataclass sections, flat dotted keys, a built-in smoke mode.

The same machinery as the distillation configs (``kdci_ray.config.schema``): defaults live in
the dataclasses, a YAML file or ``key=value`` overrides set dotted keys (``student.width: 8``), an
unknown key is one error naming it, values are type-checked, ``smoke: true`` shrinks every
schedule so the whole pipeline runs in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdci_ray.atomic import atomic_write_text
from kdci_ray.cgn.counterfactuals import CompositionVariant
from kdci_ray.cgn.data import VARIANTS
from kdci_ray.cgn.student import StudentConfig
from kdci_ray.cgn.teacher_fit import TeacherFitConfig
from kdci_ray.config import ConfigError
from kdci_ray.config.schema import Schema


@dataclass
class CGNDataConfig:
    variant: str = "double_colored"  # colored | double_colored | wildlife
    copies: int = 2  # coloured copies of each train digit
    bias: float = 1.0  # share of train images whose textures follow the digit's label


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


@dataclass
class CGNConfig:
    name: str = "skdcgn"
    seed: int = 0
    smoke: bool = False
    data: CGNDataConfig = field(default_factory=CGNDataConfig)
    teacher: TeacherFitConfig = field(default_factory=TeacherFitConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    queries: QueryConfig = field(default_factory=QueryConfig)
    composition: CompositionVariant = field(default_factory=CompositionVariant)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)


TOP_LEVEL = ("name", "seed", "smoke")
SMOKE: dict[str, Any] = {
    "data.copies": 1, "teacher.steps": 20, "teacher.batch_size": 32, "student.steps": 20,
    "student.batch_size": 32, "queries.per_class": 20, "queries.heldout_per_class": 5,
    "classifier.counterfactuals": 256, "classifier.steps": 20,
}


CGN_SCHEMA = Schema(CGNConfig, TOP_LEVEL, {
    "data": CGNDataConfig, "teacher": TeacherFitConfig, "student": StudentConfig,
    "queries": QueryConfig, "composition": CompositionVariant, "classifier": ClassifierConfig,
}, label="SKDCGN ", keys_hint="see kdci_ray/cgn/config.py")
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
        CGN_SCHEMA.apply(cfg, SMOKE, "smoke mode")
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
    positive = {"data.copies": cfg.data.copies, "teacher.steps": cfg.teacher.steps,
                "teacher.batch_size": cfg.teacher.batch_size, "teacher.width": cfg.teacher.width,
                "student.steps": cfg.student.steps, "student.width": cfg.student.width,
                "student.batch_size": cfg.student.batch_size,
                "queries.per_class": cfg.queries.per_class,
                "queries.heldout_per_class": cfg.queries.heldout_per_class,
                "composition.per_mask": cfg.composition.per_mask,
                "classifier.counterfactuals": cfg.classifier.counterfactuals,
                "classifier.steps": cfg.classifier.steps}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {value}")
    if not 0.0 <= cfg.data.bias <= 1.0:
        raise ConfigError(f"config key 'data.bias' must be in [0, 1], got {cfg.data.bias}")
    if not 0.0 < cfg.composition.transparency <= 1.0:
        raise ConfigError(f"config key 'composition.transparency' must be in (0, 1], got "
                          f"{cfg.composition.transparency}")
    if cfg.composition.mask_noise < 0 or cfg.composition.rotation < 0:
        raise ConfigError("config keys 'composition.mask_noise' and 'composition.rotation' "
                          "must be >= 0")
    if cfg.student.width * 2 > cfg.teacher.width:
        raise ConfigError(
            f"student.width={cfg.student.width} is more than half of teacher.width="
            f"{cfg.teacher.width}: SKDCGN students must compress the teacher's mechanisms "
            f"(the published MNIST students were larger than their teachers); lower "
            f"student.width")


def save(cfg: CGNConfig, path: Path) -> None:
    """The resolved config as flat YAML, written atomically."""
    atomic_write_text(path, yaml.safe_dump(to_flat(cfg), sort_keys=False))
