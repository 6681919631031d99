"""SKDCGN experiment config: dataclass sections, flat dotted keys, a built-in smoke mode.

Same conventions as the distillation configs (``kdci_ray.config``): defaults live in the
dataclasses, a YAML file or ``key=value`` overrides set dotted keys (``student.width: 8``), an
unknown key is one error naming it, values are type-checked, ``smoke: true`` shrinks every
schedule so the whole pipeline runs in seconds.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdci_ray.cgn.counterfactuals import CompositionVariant
from kdci_ray.cgn.data import VARIANTS
from kdci_ray.cgn.student import StudentConfig
from kdci_ray.cgn.teacher_fit import TeacherFitConfig
from kdci_ray.config import ConfigError
from kdci_ray.config.keys import coerce_value, field_type


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
SECTIONS = ("data", "teacher", "student", "queries", "composition", "classifier")
SMOKE: dict[str, Any] = {
    "data.copies": 1, "teacher.steps": 20, "teacher.batch_size": 32, "student.steps": 20,
    "student.batch_size": 32, "queries.per_class": 20, "queries.heldout_per_class": 5,
    "classifier.counterfactuals": 256, "classifier.steps": 20,
}


def valid_keys() -> list[str]:
    keys = list(TOP_LEVEL)
    for section in SECTIONS:
        cls = type(getattr(CGNConfig(), section))
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


def check_keys(settings: dict[str, Any], where: str = "") -> None:
    """One error naming the first unknown key (and the closest valid one)."""
    keys = valid_keys()
    for key in settings:
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else \
                f"; valid keys: {', '.join(keys)}"
            src = f" in {where}" if where else ""
            raise ConfigError(f"unknown SKDCGN config key '{key}'{src}{hint}")


def _set(cfg: CGNConfig, key: str, value: Any, where: str) -> None:
    check_keys({key: value}, where)
    section, _, name = key.rpartition(".")
    target = getattr(cfg, section) if section else cfg
    value = coerce_value(key, value, field_type(type(target), name))
    setattr(target, name, value)


def flatten(mapping: dict[str, Any]) -> dict[str, Any]:
    """``a.b: v`` and one level of nesting ``a: {b: v}`` -> dotted keys."""
    flat = {}
    for key, value in mapping.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[str(key)] = value
    return flat


def resolve(*layers: dict[str, Any], where: str = "") -> CGNConfig:
    """The config of one run from dotted-key layers (file, sampled values, overrides)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(flatten(layer))
    cfg = CGNConfig()
    for key, value in merged.items():
        _set(cfg, key, value, where)
    if cfg.smoke:
        for key, value in SMOKE.items():
            _set(cfg, key, value, "smoke mode")
    validate(cfg)
    return cfg


def validate(cfg: CGNConfig) -> None:
    if cfg.data.variant not in VARIANTS:
        raise ConfigError(f"config key 'data.variant' must be one of {', '.join(VARIANTS)}, "
                          f"got {cfg.data.variant!r}")
    if cfg.teacher.mode not in ("supervised", "adversarial"):
        raise ConfigError(f"config key 'teacher.mode' must be one of supervised, adversarial, "
                          f"got {cfg.teacher.mode!r}")
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


def to_flat(cfg: CGNConfig) -> dict[str, Any]:
    out = {k: getattr(cfg, k) for k in TOP_LEVEL}
    for section in SECTIONS:
        out.update({f"{section}.{k}": v for k, v in dataclasses.asdict(getattr(cfg, section))
                    .items()})
    return out


def save(cfg: CGNConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_flat(cfg), sort_keys=False))
