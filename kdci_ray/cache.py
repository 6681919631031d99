"""The cache directory every cached artifact lives under: ``$KDCI_RAY_CACHE``, by default
``~/.cache/kdci_ray`` (teachers, KDCI dictionaries, pool selections, SKDCGN teachers and
students), each kind in its own sub-directory and keyed by everything that changes it."""

from __future__ import annotations

import os
from pathlib import Path

from kdci_ray.atomic import NOT_A_DIRECTORY, write_problem
from kdci_ray.config import ConfigError


def cache_dir() -> Path:
    return Path(os.environ.get("KDCI_RAY_CACHE", Path.home() / ".cache" / "kdci_ray")).expanduser()


def check_cache_dir() -> None:
    """``$KDCI_RAY_CACHE`` (teachers, selections, dictionaries) is a directory this process can
    write to (``atomic.write_problem``): found now, not after training finished."""
    root = cache_dir()
    problem = write_problem(root)
    if problem is None:
        return
    what = "is not a directory" if problem[1] == NOT_A_DIRECTORY and problem[0] == root else \
        f"cannot be written ({problem[0]}: {problem[1]})"
    raise ConfigError(f"the cache directory {root} {what}; point KDCI_RAY_CACHE at a writable "
                      f"directory (default ~/.cache/kdci_ray)")
