"""Atomic file writes: a temp file in the target's directory, fsync, then ``os.replace``.

Readers (other trials of a sweep, a report run while a sweep is going) never see half a file.
The file gets the mode an ordinary ``open(path, "w")`` would give it: ``0666 & ~umask`` for a
new file (``mkstemp`` alone gives 0600, which other users of a shared cache or results folder
cannot read), the existing file's mode when it replaces one.
"""

from __future__ import annotations

import os
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_UMASK_LOCK = threading.Lock()
_cached_umask: int | None = None


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (``/proc``); else
    read once (``os.umask`` sets it while reading it, so only under a lock, and cached)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    global _cached_umask
    with _UMASK_LOCK:
        if _cached_umask is None:
            _cached_umask = os.umask(0o022)
            os.umask(_cached_umask)
        return _cached_umask


def _target_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(fh)`` on a temp file and move it over ``path`` (parents are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fchmod(fh.fileno(), _target_mode(path))
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


NOT_A_DIRECTORY = "is a file, not a directory"


def write_problem(directory: str | Path) -> tuple[Path, str] | None:
    """Why no file can be created in ``directory`` (or, while it does not exist, its nearest
    existing parent), probed with a real temp file (permission bits alone do not tell, e.g. for
    root or on a read-only mount): ``(that path, NOT_A_DIRECTORY or the OS's reason)``; None
    when files can be created there."""
    existing = Path(directory)
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return existing, NOT_A_DIRECTORY
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".kdci-ray-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return existing, str(exc.strerror or exc)
    return None
