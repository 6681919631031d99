"""An SKDCGN trial's result row: what its ``metrics.json`` holds, written by the trial
(``kind.SKDCGN.run_trial``) and read by the tables (``kdci_ray.results.skdcgn``).

A trial's ``variant`` is its ``cases.variant`` case name (the composition study's variants),
else its searched values other than the seed, else ``baseline`` (``variant_name``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdci_ray.atomic import atomic_write_text
from kdci_ray.config.cases import CASES, column_name, is_case_key

METRICS_FILE = "metrics.json"  # an SKDCGN trial's one result row


def variant_name(params: dict[str, Any]) -> str:
    """The ``variant`` case's name, else the searched values other than the seed, else
    ``baseline``."""
    if f"{CASES}.variant" in params:
        value = params[f"{CASES}.variant"]
        return str(value.get("name") if isinstance(value, dict) else value)
    parts = [f"{column_name(k) if is_case_key(k) else k.rsplit('.', 1)[-1]}="
             f"{v.get('name') if isinstance(v, dict) else v}"
             for k, v in sorted(params.items()) if k != "seed"]
    return ",".join(parts) or "baseline"


def write_row(trial_dir: Path, point: dict[str, Any], seed: int,
              metrics: dict[str, Any]) -> dict[str, Any]:
    """The trial's row (its variant, seed and metrics) written to ``metrics.json``; returned."""
    row = {"variant": variant_name(point), "seed": seed, **metrics}
    atomic_write_text(Path(trial_dir) / METRICS_FILE, json.dumps(row, indent=2))
    return row
