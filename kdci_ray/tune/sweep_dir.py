"""A sweep's directory: what it records (``sweep.yaml``) and what may be written into it.

A sweep writes into a new directory; ``--overwrite`` replaces an earlier sweep there and
``--resume`` continues the same sweep; anything else (a different sweep, a directory that is not
a sweep) is refused before anything is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kdci_ray.atomic import atomic_write_text
from kdci_ray.config import ConfigError

if TYPE_CHECKING:
    from kdci_ray.tune.driver import SweepPlan

SWEEP_FILE = "sweep.yaml"


def sweep_record(plan: SweepPlan) -> dict[str, Any]:
    """What ``sweep.yaml`` holds: the experiment as launched (it identifies the sweep)."""
    record = {"name": plan.name, "settings": plan.settings, "overrides": plan.overrides,
              "search": plan.search}
    if plan.only:
        record["only"] = plan.only
    return record


def read_record(out: Path) -> dict[str, Any] | None:
    """``out/sweep.yaml``; None when it is missing or unreadable."""
    try:
        return yaml.safe_load((out / SWEEP_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None


def _has_tune_state(out: Path) -> bool:
    return any(out.glob("experiment_state-*.json"))


def check_output(plan: SweepPlan, overwrite: bool, resume: bool = False) -> None:
    """What ``prepare_output`` will do is allowed (raises otherwise; writes nothing)."""
    out = plan.out_dir
    ours = yaml.safe_load(yaml.safe_dump(sweep_record(plan), sort_keys=False))
    if resume and overwrite:
        raise ConfigError("--resume continues a sweep and --overwrite replaces it: pass one")
    occupied = out.exists() and any(out.iterdir())
    if resume:
        recorded = read_record(out) if occupied else None
        if recorded is None:
            raise ConfigError(
                f"nothing to resume in {out}: it holds no kdci-ray sweep ({SWEEP_FILE}); "
                f"run without --resume to start the sweep there"
            )
        if recorded != ours:
            raise ConfigError(
                f"{out} holds a different sweep ('{recorded.get('name')}', launched with other "
                f"settings, grid or overrides) than the one given; resume it with "
                f"`kdci-ray sweep {out} --resume`, or choose another --output"
            )
        if not _has_tune_state(out):
            raise ConfigError(
                f"{out} holds the sweep but no Tune experiment state (it was stopped before its "
                f"first trial started); run it again with --overwrite"
            )
        return
    if occupied:
        recorded = read_record(out) if (out / SWEEP_FILE).is_file() else None
        if recorded is None and (out / SWEEP_FILE).is_file():
            raise ConfigError(f"{out / SWEEP_FILE} is unreadable; choose another --output")
        if recorded is None:
            raise ConfigError(
                f"refusing to write into {out}: it exists, is not empty and is not a kdci-ray "
                f"sweep directory (no {SWEEP_FILE}); choose another --output"
            )
        if not overwrite:
            same = "the same sweep" if recorded == ours else \
                f"a different sweep ('{recorded.get('name')}')"
            hint = "pass --resume to continue it, --overwrite to replace it" if \
                recorded == ours else "pass --overwrite to replace it"
            raise ConfigError(
                f"output directory {out} already holds {same}; {hint}, or choose another "
                f"directory with --output"
            )


def prepare_output(plan: SweepPlan, overwrite: bool, resume: bool = False) -> None:
    """A sweep writes into a new directory; ``overwrite`` replaces an earlier sweep's results;
    ``resume`` continues the same sweep there (anything else there is refused, untouched)."""
    check_output(plan, overwrite, resume)
    out = plan.out_dir
    if resume:
        return
    if out.exists() and any(out.iterdir()):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SWEEP_FILE, yaml.safe_dump(sweep_record(plan), sort_keys=False))
