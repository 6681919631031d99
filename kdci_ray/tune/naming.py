"""Readable trial directory names: method, KDCI on/off, seed and the other searched values."""

from __future__ import annotations

import re
from typing import Any


def _short(key: str, value: Any) -> str:
    if key == "kdci.enabled":
        return "kdci" if value else "vanilla"
    if key == "method":
        return str(value)
    name = key.rsplit(".", 1)[-1]
    if isinstance(value, float):
        value = f"{value:.4g}"
    return f"{name}{value}"


def trial_dirname(trial: Any) -> str:
    """``dafl_kdci_seed0_00003``: searched keys in a fixed order, then the trial index."""
    params = dict(trial.evaluated_params)
    order = ["method", "kdci.enabled"] + sorted(k for k in params if k not in
                                                ("method", "kdci.enabled"))
    parts = [_short(k, params[k]) for k in order if k in params]
    index = trial.trial_id.rsplit("_", 1)[-1]
    name = "_".join(parts + [index]) if parts else f"trial_{index}"
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", name)[:120]
