"""A sweep directory's record (``sweep.yaml``) as read: its shape checked, nothing trusted.

The engine writes the record at launch (``kdci_ray.engine.sweep_dir``) and checks a resume
against it; the results code reads it to know a sweep's kind and name. Reading needs no Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kdci_ray.atomic import NOT_A_DIRECTORY, write_problem
from kdci_ray.config.files import DuplicateKeyError, UniqueKeyLoader
from kdci_ray.errors import ConfigError

SWEEP_FILE = "sweep.yaml"
DIGEST = "digest"
RECORD_KEYS = ("name", "kind", "settings", "overrides", "search", "num_samples", "only", DIGEST)
_MAPPINGS = ("settings", "overrides", "search")


class BadRecord(ConfigError):
    """``sweep.yaml`` exists but is not a kdci-ray sweep record; ``reason`` says why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} is not a kdci-ray sweep record ({reason})")
        self.reason = reason


def load_record(out: Path) -> dict[str, Any] | None:
    """``out/sweep.yaml``, checked for shape; None when there is none, ``BadRecord`` when it is
    not a sweep record (unreadable, not YAML, a duplicated key, the wrong shape)."""
    path = out / SWEEP_FILE
    if not path.is_file():
        return None
    try:
        record = yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # noqa: S506 - safe
    except (OSError, UnicodeDecodeError) as exc:
        raise BadRecord(path, f"it cannot be read: {exc}") from None
    except DuplicateKeyError as exc:
        raise BadRecord(path, str(exc)) from None
    except yaml.YAMLError as exc:
        raise BadRecord(path, f"not valid YAML: {_one_line(exc)}") from None
    if not isinstance(record, dict):
        raise BadRecord(path, f"it holds a {type(record).__name__}, not a mapping")
    unknown = [str(k) for k in record if k not in RECORD_KEYS]
    if unknown:
        raise BadRecord(path, f"unknown entries {', '.join(map(repr, unknown))}; a record holds "
                              f"{', '.join(RECORD_KEYS)}")
    for key in _MAPPINGS:
        if record.get(key) is not None and not isinstance(record[key], dict):
            raise BadRecord(path, f"its '{key}' is a {type(record[key]).__name__}, not a "
                                  "mapping")
    only = record.get("only")
    if only is not None and not (isinstance(only, list) and all(isinstance(o, str)
                                                                 for o in only)):
        raise BadRecord(path, "its 'only' is not a list of KEY=VALUE filters")
    if record.get(DIGEST) is not None and not isinstance(record[DIGEST], str):
        raise BadRecord(path, "its 'digest' is not a string")
    return record


def _one_line(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def read_record(out: Path) -> dict[str, Any] | None:
    """``out/sweep.yaml``; None when it is missing or not a sweep record."""
    try:
        return load_record(out)
    except ConfigError:
        return None


def record_kind(sweep_dir: Path) -> str:
    """The experiment kind a sweep directory's record names (``dfkd`` when it names none, or
    when there is no readable record)."""
    return str((read_record(sweep_dir) or {}).get("kind") or "dfkd")


def check_writable(directory: Path, fix: str) -> None:
    """``directory`` (or, while it does not exist, its nearest existing parent) is a directory
    this process can create files in (``atomic.write_problem``); else a ConfigError ending in
    ``fix``."""
    problem = write_problem(directory)
    if problem is None:
        return
    existing, why = problem
    if why == NOT_A_DIRECTORY:
        where = f"{existing}" if existing == directory else \
            f"cannot write into {directory}: {existing}"
        raise ConfigError(f"{where} {NOT_A_DIRECTORY}; {fix}")
    raise ConfigError(f"cannot write into {existing} ({why}); {fix}")
