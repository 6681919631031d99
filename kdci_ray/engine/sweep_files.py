"""What a sweep writes into its directory, so ``--overwrite`` removes exactly that.

The top level of a sweep directory holds (measured on a Ray 2.60 sweep; one name or pattern each):

- kdci-ray: ``sweep.yaml`` (the record), ``environment.json`` (the software it ran with),
  ``.kdci-ray.lock`` (the writer's lock, kept while a sweep replaces the rest), the report
  (``summary.csv``, ``summary.md``, ``report.md``, ``curves.png``, ``kdci_gain.png``,
  ``acc_vs_<key>.png``), and what an interrupted atomic write or writability probe can leave
  (``.<name>.*.tmp``, ``.kdci-ray-probe-*``);
- Ray Tune: ``experiment_state-*.json``, ``basic-variant-state-*.json``,
  ``search_gen_state-*.json``, ``searcher-state-*.pkl``, ``callback-states-*.pkl``,
  ``tuner.pkl``, ``trainable.pkl``, ``.validate_storage_marker`` and its interrupted writes
  (``.<uuid>-tmp-*``);
- one directory per trial, named by ``naming.trial_dirname`` (``..._00003``), holding the
  trial's ``config.yaml`` / Tune's ``params.json``; a trial directory is the sweep's as a whole.
  An empty directory holds nothing to lose and is removed too.

Anything else (a user's notes, plots, analysis folders) is ``foreign``: ``--overwrite`` refuses,
naming it, before anything is deleted.
"""

from __future__ import annotations

import re
import shutil
from fnmatch import fnmatchcase
from pathlib import Path

from kdci_ray.engine.lock import LOCK_FILE
from kdci_ray.environment import ENVIRONMENT_FILE
from kdci_ray.results.record import SWEEP_FILE

_REPORT_FILES = ("summary.csv", "summary.md", "report.md", "curves.png", "kdci_gain.png",
                 "acc_vs_*.png")
_TUNE_FILES = ("experiment_state-*.json", "basic-variant-state-*.json", "search_gen_state-*.json",
               "searcher-state-*.pkl", "callback-states-*.pkl", "tuner.pkl", "trainable.pkl",
               ".validate_storage_marker")
SWEEP_WRITES = (SWEEP_FILE, ENVIRONMENT_FILE, LOCK_FILE, *_REPORT_FILES, *_TUNE_FILES)
_LEFTOVERS = (".kdci-ray-probe-*", ".*-tmp-*")  # a probe, a Tune write cut short
_TRIAL_DIR = re.compile(r"[A-Za-z0-9_.=-]*_\d{5,}")  # trial_dirname: ..._<Tune trial index>
_TRIAL_FILES = ("config.yaml", "params.json", "result.json")
_SHOWN = 8


def _written_file(name: str) -> bool:
    if any(fnmatchcase(name, pattern) for pattern in (*SWEEP_WRITES, *_LEFTOVERS)):
        return True
    # an atomic write cut short: ``.<target>.<random>.tmp`` (``kdci_ray.atomic``)
    return any(fnmatchcase(name, f".{pattern}.*.tmp") for pattern in SWEEP_WRITES)


def _trial_dir(path: Path) -> bool:
    if _TRIAL_DIR.fullmatch(path.name) or any((path / f).is_file() for f in _TRIAL_FILES):
        return True
    return not any(path.iterdir())


def is_sweep_entry(path: Path) -> bool:
    """Whether a top-level entry of a sweep directory is one a sweep writes."""
    if path.is_dir() and not path.is_symlink():
        return _trial_dir(path)
    return _written_file(path.name)


def foreign_entries(out: Path) -> list[str]:
    """The names of ``out``'s top-level entries no sweep writes, sorted."""
    return sorted(p.name for p in out.iterdir() if not is_sweep_entry(p))


def foreign_problem(out: Path) -> str | None:
    """Why ``--overwrite`` must not empty ``out`` (files no sweep writes), or None."""
    foreign = foreign_entries(out) if out.is_dir() else []
    if not foreign:
        return None
    shown = ", ".join(foreign[:_SHOWN])
    more = f" (and {len(foreign) - _SHOWN} more)" if len(foreign) > _SHOWN else ""
    return (f"{out} holds files no sweep writes: {shown}{more}; --overwrite removes only what a "
            f"sweep wrote: move them out, or choose another --output")


def remove_sweep_entries(out: Path) -> None:
    """Delete what a sweep wrote in ``out`` (its lock file excepted: the writer holds it)."""
    for path in out.iterdir():
        if path.name == LOCK_FILE or not is_sweep_entry(path):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
