"""The cache directory every cached artifact lives under: ``$KDCI_RAY_CACHE``, by default
``~/.cache/kdci_ray`` (teachers, KDCI dictionaries, pool selections, SKDCGN teachers and
students), each kind in its own sub-directory and keyed by everything that changes it.

A relative ``$KDCI_RAY_CACHE`` is made absolute once, against the working directory, at the
front door (``pin_cache_dir``, before Ray starts: local Ray workers inherit the value, whatever
directory a trial runs in); an empty one is refused (it would mean the working directory)."""

from __future__ import annotations

import os
from pathlib import Path

from kdci_ray.atomic import NOT_A_DIRECTORY, write_problem
from kdci_ray.errors import ConfigError

CACHE_ENV = "KDCI_RAY_CACHE"
DEFAULT_CACHE = Path("~") / ".cache" / "kdci_ray"


def cache_dir() -> Path:
    """``$KDCI_RAY_CACHE`` (``~`` expanded), else ``~/.cache/kdci_ray``; an empty value is a
    ConfigError."""
    value = os.environ.get(CACHE_ENV)
    if value is None:
        return DEFAULT_CACHE.expanduser()
    if not value.strip():
        raise ConfigError(f"{CACHE_ENV} is set but empty ({value!r}), which would put the cache "
                          f"in whatever directory a process runs in; unset it (default "
                          f"{DEFAULT_CACHE}) or point it at a writable directory")
    return Path(value).expanduser()


def pin_cache_dir() -> Path:
    """Make a relative ``$KDCI_RAY_CACHE`` absolute in this process's environment (against the
    working directory), so that every process started from here means the same directory."""
    root = cache_dir()
    if CACHE_ENV in os.environ and not root.is_absolute():
        root = Path.cwd() / root
        os.environ[CACHE_ENV] = str(root)
    return root


def check_cache_dir() -> None:
    """``$KDCI_RAY_CACHE`` (teachers, selections, dictionaries) is a directory this process can
    write to (``atomic.write_problem``): found now, not after training finished."""
    root = pin_cache_dir()
    problem = write_problem(root)
    if problem is None:
        return
    what = "is not a directory" if problem[1] == NOT_A_DIRECTORY and problem[0] == root else \
        f"cannot be written ({problem[0]}: {problem[1]})"
    raise ConfigError(f"the cache directory {root} {what}; point {CACHE_ENV} at a writable "
                      f"directory (default {DEFAULT_CACHE})")
