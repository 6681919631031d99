"""``environment.json`` beside ``sweep.yaml``: the software a sweep ran with and the cache entries
its driver used (the trials' own are in their ``caches.jsonl``; ``kdci-ray env DIR`` shows both).

Written when the sweep starts; a resume adds its own start to ``resumed`` and its driver's cache
entries, and is refused when the packages that change the numbers, Python or the thread count
differ from the record (its trials would compute other numbers than the finished ones).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from kdci_ray.atomic import atomic_write_text
from kdci_ray.environment import (
    ENVIRONMENT_FILE,
    cache_uses,
    numeric_difference,
    read_environment,
    snapshot,
    unique_uses,
)
from kdci_ray.errors import ConfigError


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def check_resume_environment(out: Path) -> None:
    """A sweep resumes only in the software it ran with (``numeric_difference``)."""
    recorded = read_environment(out)
    if recorded is None:  # a sweep from before the record, or the record deleted
        return
    diff = numeric_difference(recorded, snapshot())
    if diff:
        raise ConfigError(
            f"{out} ran with other software ({diff}; its {ENVIRONMENT_FILE}): resumed trials "
            f"would compute other numbers than its finished ones; install what it ran with "
            f"(`kdci-ray env {out}` lists it; the Makefile installs the lock files), or start "
            f"a new sweep with --output elsewhere")


def write_environment(out: Path, resume: bool = False) -> Path:
    """Write ``out/environment.json``: this environment and the driver's cache uses so far (a
    resume keeps the first record and adds to it)."""
    now = snapshot()
    uses = cache_uses(clear=True)
    recorded = read_environment(out) if resume else None
    if recorded is None:
        record = {"written": _now(), **now, "caches": unique_uses(uses)}
    else:
        record = dict(recorded)
        earlier = [u for u in recorded.get("caches") or [] if isinstance(u, dict)]
        record["caches"] = unique_uses([*earlier, *uses])
        record["resumed"] = [*(recorded.get("resumed") or []),
                             {"written": _now(), "host": now["host"],
                              "kdci_ray": now["kdci_ray"]}]
    return atomic_write_text(out / ENVIRONMENT_FILE, json.dumps(record, indent=2) + "\n")
