"""Readable trial directory names: case names, method, KDCI on/off, seed, other searched values."""

from __future__ import annotations

import re
from typing import Any

from kdci_ray.search.cases import case_name, is_case_key


def _short(key: str, value: Any) -> str:
    if is_case_key(key):
        return case_name(value)
    if key == "kdci.enabled":
        return "kdci" if value else "vanilla"
    if key == "method":
        return str(value)
    name = key.rsplit(".", 1)[-1]
    if isinstance(value, float):
        value = f"{value:.4g}"
    return f"{name}{value}"


def trial_dirname(trial: Any) -> str:
    """``r34-r18_dafl_kdci_seed0_00003``: case names, then the searched keys in a fixed order
    (method, KDCI, the rest sorted), then the trial index."""
    params = dict(trial.evaluated_params)
    fixed = ("method", "kdci.enabled")
    cases = sorted(k for k in params if is_case_key(k))
    rest = sorted(k for k in params if k not in fixed and not is_case_key(k))
    parts = [_short(k, params[k]) for k in [*cases, *fixed, *rest] if k in params]
    index = trial.trial_id.rsplit("_", 1)[-1]
    name = "_".join(parts + [index]) if parts else f"trial_{index}"
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", name)[:120]
