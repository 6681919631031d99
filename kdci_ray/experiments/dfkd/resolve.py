"""One distillation run's config from dotted-key layers, its save, and command-line overrides.

Resolution order (later wins; ``kdci_ray.config.layers``, the same for every kind):
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

import difflib
from pathlib import Path
from typing import Any

from kdci_ray.config.files import split_overrides
from kdci_ray.config.layers import resolve_layers, save_flat
from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd.config import SMOKE, ExperimentConfig
from kdci_ray.experiments.dfkd.keys import DFKD_SCHEMA
from kdci_ray.experiments.dfkd.validate import resolved_k, resolved_trainer, validate
from kdci_ray.methods import METHODS

CHOOSING = ("method", "preset", "smoke")  # set first: they choose the preset and smoke values


def method_preset(cfg: ExperimentConfig) -> tuple[str, dict[str, Any]]:
    """The chosen method's preset (none for ``paper``); an unknown method or preset is an error
    naming the known ones."""
    if cfg.method not in METHODS:
        close = difflib.get_close_matches(cfg.method, list(METHODS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown method '{cfg.method}' (known: {', '.join(METHODS)}){hint}")
    method = METHODS[cfg.method]
    if cfg.preset == "paper":
        return "", {}
    if cfg.preset not in method.PRESETS:
        raise ConfigError(f"method '{cfg.method}' has no preset '{cfg.preset}' "
                          f"(known: paper, {', '.join(method.PRESETS)})")
    return f"{cfg.method} preset '{cfg.preset}'", method.PRESETS[cfg.preset]


def smoke_values(cfg: ExperimentConfig) -> dict[str, Any]:
    """Smoke mode's schedule: ``SMOKE`` and the chosen method's own smoke values."""
    return {**SMOKE, **{f"{cfg.method}.{k}": v for k, v in METHODS[cfg.method].SMOKE.items()}}


def decide(cfg: ExperimentConfig) -> None:
    """The "decide for me" values decided, so the saved config says what ran: ``run.trainer:
    auto`` (which trainer), ``kdci.k: 0`` (the method's default dictionary size) and
    ``pool.seed: -1`` (the trial's seed)."""
    cfg.run.trainer = resolved_trainer(cfg.run)
    cfg.kdci.k = resolved_k(cfg)
    if cfg.pool.seed == -1:  # every seed of a sweep draws its own pool
        cfg.pool.seed = cfg.seed


def resolve(*layers: dict[str, Any], smoke: bool | None = None) -> ExperimentConfig:
    """Build the config of one run from dotted-key layers (YAML, sampled values, overrides).

    ``method``, ``preset`` and ``smoke`` are read from the layers first because they choose
    which preset and smoke overrides apply. After validation the "decide for me" values are
    decided (``decide``). A resolved config resolves to itself.
    """
    return resolve_layers(DFKD_SCHEMA, layers, validate=validate, smoke_values=smoke_values,
                          preset=method_preset, choosing=CHOOSING, decide=decide, smoke=smoke)


def save_resolved(cfg: ExperimentConfig, path: str | Path) -> Path:
    """The resolved config as flat YAML, written atomically (a resume check reads it)."""
    return save_flat(DFKD_SCHEMA, cfg, path)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=0.1", ...]`` as dotted keys, checked against the distillation schema (values
    are parsed later, per type)."""
    out = split_overrides(items, DFKD_SCHEMA.valid_keys())
    DFKD_SCHEMA.check_keys(out, "command-line overrides")
    return out
