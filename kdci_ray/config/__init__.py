"""Experiment configuration: dataclasses with defaults in code, flat YAML, dotted overrides.

Resolution order for one run (later wins):
1. dataclass defaults (each method's paper defaults live in its own ``Config`` dataclass),
2. the chosen method's preset (``preset: embedded``), a dict of dotted keys in the method file,
3. the experiment YAML (flat ``section.key: value`` lines; one level of nesting is also accepted),
4. values a sweep's ``search`` section sampled for this trial,
5. ``key=value`` overrides from the command line,
6. smoke mode (``smoke: true`` / ``--smoke``): tiny schedules that exercise every code path.

YAML is parsed with ``yaml.safe_load`` only; it never runs code. Unknown keys are an error that
names the key and the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from kdci_ray.config.files import parse_overrides, save_resolved
from kdci_ray.config.keys import (
    apply,
    check_keys,
    flatten,
    to_flat,
    unknown_key_error,
    valid_keys,
)
from kdci_ray.config.sections import (
    CHOICES,
    SECTIONS,
    SMOKE,
    TOP_LEVEL,
    DataConfig,
    ExperimentConfig,
    KDCIConfig,
    PoolConfig,
    RunConfig,
    ShiftConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
)
from kdci_ray.config.validate import resolved_k, resolved_trainer, validate
from kdci_ray.errors import ConfigError  # noqa: F401 - kdci_ray.errors is its home
from kdci_ray.methods import METHODS

__all__ = [
    "CHOICES", "SECTIONS", "SMOKE", "TOP_LEVEL", "DataConfig",
    "ExperimentConfig", "KDCIConfig", "PoolConfig", "RunConfig", "ShiftConfig", "StudentConfig",
    "TeacherConfig", "TrainConfig", "apply", "check_keys", "flatten",
    "parse_overrides", "resolve", "save_resolved", "to_flat", "unknown_key_error",
    "valid_keys", "validate",
]


def resolve(*layers: dict[str, Any], smoke: bool | None = None) -> ExperimentConfig:
    """Build the config of one run from dotted-key layers (YAML, sampled values, overrides).

    ``method``, ``preset`` and ``smoke`` are read from the layers first because they choose
    which preset and smoke overrides apply. After validation the "decide for me" values are
    decided, so the saved config says what ran: ``run.trainer: auto`` and ``kdci.k: 0`` (the
    method's default dictionary size). A resolved config resolves to itself.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    if smoke is not None:
        merged["smoke"] = smoke
    cfg = ExperimentConfig()
    apply(cfg, {k: merged[k] for k in ("method", "preset", "smoke") if k in merged})
    if cfg.method not in METHODS:
        close = difflib.get_close_matches(cfg.method, list(METHODS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown method '{cfg.method}' (known: {', '.join(METHODS)}){hint}")
    method = METHODS[cfg.method]
    if cfg.preset != "paper":
        if cfg.preset not in method.PRESETS:
            raise ConfigError(
                f"method '{cfg.method}' has no preset '{cfg.preset}' "
                f"(known: paper, {', '.join(method.PRESETS)})"
            )
        apply(cfg, method.PRESETS[cfg.preset], f"{cfg.method} preset '{cfg.preset}'")
    apply(cfg, merged)
    if cfg.smoke:
        # the user's own values are checked as given: smoke mode must not hide a bad one
        validate(dataclasses.replace(cfg, smoke=False))
        apply(cfg, SMOKE, "smoke mode")
        apply(cfg, {f"{cfg.method}.{k}": v for k, v in method.SMOKE.items()}, "smoke mode")
    validate(cfg)
    cfg.run.trainer = resolved_trainer(cfg.run)  # the saved config says which one ran
    cfg.kdci.k = resolved_k(cfg)  # and which dictionary size KDCI built (0: method default)
    return cfg

