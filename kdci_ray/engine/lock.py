"""One writer per sweep directory: an exclusive lock held for a whole run.

``sweep_lock(directory)`` takes an exclusive, non-blocking ``flock`` on ``directory/.kdci-ray.lock``
and holds it until the block ends (normal end, error, Ctrl-C). The lock file records the owner's
host, PID, start time and command. A second writer into the same directory (a new sweep, with or
without ``--overwrite``, a ``--resume``) is refused with ``SweepBusy`` naming the owner, before
Ray starts. The lock is taken before the directory is checked, so the check and everything
written after it belong to one process. ``kdci-ray report`` (``locked_report``) writes under the
lock too; on a directory a sweep holds, it shows the table so far and writes nothing.

Stale locks: the kernel releases a ``flock`` when its holder exits, however it ends (SIGKILL and
crashes included), so a lock is never held by a process that is gone. A clean release empties
and removes the lock file; a lock file that still names an owner when it is taken again was left
by a run that was killed: the new writer takes it over and says whose it was.

A directory that does not exist yet is created only as far as the lock needs, and removed again
on release while empty (a refused sweep leaves nothing behind). A directory nothing can be
written into is not locked: there is no writer to exclude, and the writability check that
follows refuses it with its own message.

Shared storage (the sweep directory of a multi-node cluster): on Linux, ``flock`` on an NFS mount
is sent to the server as a whole-file byte-range lock (POSIX ``fcntl`` lock), so it excludes
writers on every node that mounts the export.

- NFSv4 (e.g. AWS EFS): locking is part of the protocol. The lock of a node that dies without
  releasing it (crash, power loss, network partition) is freed when the node's lease expires on
  the server (about 90 s by default); until then a new writer is refused, naming that node.
- NFSv3: locks go through the NLM protocol, so ``rpc.statd`` / lockd must run on the clients and
  the server. A crashed client's locks stay until it reboots (statd then tells the server) or an
  administrator clears them on the server.
- A mount with ``nolock`` (NFSv3) or ``local_lock=flock`` / ``local_lock=all`` keeps locks on
  each node: writers on one node still exclude each other, writers on two nodes do not, and this
  cannot be detected from a client. Mount the sweep storage without those options. FUSE mounts
  of object stores (s3fs, gcsfuse) lock per node in the same way. Where every sweep is started
  on the head node (as ``cluster.yaml`` has it), per-node locks are enough.
- A filesystem that refuses locks (``ENOLCK``: NFSv3 without lockd; ``ENOSYS`` / ``EOPNOTSUPP``:
  e.g. Lustre mounted with ``noflock``) is refused with a message saying so: kdci-ray does not
  write a sweep directory it cannot lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from kdci_ray.atomic import write_problem
from kdci_ray.errors import ConfigError

LOCK_FILE = ".kdci-ray.lock"
_RECORD_WAIT_S = 1.0  # an owner that has just taken the lock writes its record within this
_ATTEMPTS = 20  # the lock file replaced or its directory removed under us: try again
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


@dataclass(frozen=True)
class LockOwner:
    """Who holds (or last held) a sweep directory's lock."""

    host: str
    pid: int
    started: str  # ISO 8601 with the owner's UTC offset
    command: str

    def describe(self) -> str:
        """``\\`kdci-ray sweep ...\\` (PID 1234 on host h, since 10:02:11)``."""
        return f"`{self.command}` (PID {self.pid} on host {self.host}, since {self._since()})"

    def _since(self) -> str:
        try:
            started = datetime.fromisoformat(self.started)
        except ValueError:
            return self.started
        now = datetime.now(started.tzinfo)
        return started.strftime("%H:%M:%S" if started.date() == now.date() else
                                "%Y-%m-%d %H:%M:%S")


class SweepBusy(ConfigError):
    """Another process holds the directory's lock; ``owner`` is its record (None: unreadable)."""

    def __init__(self, directory: Path, owner: LockOwner | None) -> None:
        who = owner.describe() if owner else "another process (its lock record is unreadable)"
        elsewhere = ""
        if owner and owner.host != socket.gethostname():
            elsewhere = (f"; if {owner.host} is down, shared storage frees its lock when the "
                         f"host's lease expires")
        super().__init__(f"{directory} is being written by {who}; wait for it to finish, or "
                         f"stop it{elsewhere}")
        self.directory = directory
        self.owner = owner


def running_command() -> str:
    """How this process was started, for the lock record (``kdci-ray sweep ...`` for the CLI)."""
    argv = list(sys.argv) or [""]
    script = Path(argv[0])
    if script.name == "kdci-ray" or script.as_posix().endswith("kdci_ray/cli.py"):
        return shlex.join(["kdci-ray", *argv[1:]])
    python = Path(sys.executable).name or "python"
    start = [python, "-m", script.parent.name] if script.name == "__main__.py" else \
        [python, argv[0]] if argv[0] else [python]
    return "kdci_ray in " + shlex.join([*start, *argv[1:]])


@contextmanager
def sweep_lock(directory: str | Path, log: Callable[[str], None] = print,
               command: str | None = None) -> Iterator[Path | None]:
    """Hold ``directory``'s lock for the block; yields the lock file (None where nothing can be
    written into ``directory``). Raises ``SweepBusy`` while another process holds it; ``log``
    hears one line when a lock left by a killed run is taken over."""
    directory = Path(directory)
    if write_problem(directory) is not None:
        yield None
        return
    fd, path, created, previous = _acquire(directory)
    try:
        if previous is not None:
            log(f"{directory}: taking over the lock of {previous.describe()}, which ended "
                f"without releasing it (killed, or its host went down)")
        owner = LockOwner(socket.gethostname(), os.getpid(),
                          datetime.now().astimezone().isoformat(timespec="seconds"),
                          command or running_command())
        _write_owner(fd, owner)
        yield path
    finally:
        _release(fd, path, created)


def _acquire(directory: Path) -> tuple[int, Path, list[Path], LockOwner | None]:
    """The locked file's descriptor, its path, the directories created for it, and the owner a
    killed run left in it."""
    path = directory / LOCK_FILE
    for _ in range(_ATTEMPTS):
        created = _make_dirs(directory)
        try:
            fd, new = _open(path)
        except FileNotFoundError:  # a refused writer removed the directory it had created
            continue
        except OSError as exc:
            _remove_empty(created)
            raise ConfigError(f"cannot create the lock file {path} ({exc.strerror or exc}); "
                              f"choose another --output, or make it writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _wait_for_owner(fd)
            os.close(fd)
            _remove_empty(created)
            raise SweepBusy(directory, owner) from None
        except OSError as exc:
            os.close(fd)
            if new:
                path.unlink(missing_ok=True)
            _remove_empty(created)
            if exc.errno in _NO_LOCKS:
                raise ConfigError(
                    f"cannot lock {path}: the filesystem does not support file locks "
                    f"({exc.strerror}); kdci-ray writes a sweep directory only while it holds "
                    f"its lock: mount the storage with locking (NFS: lockd running, no "
                    f"'nolock'; Lustre: '-o flock'), or choose another --output") from None
            raise
        if _same_file(fd, path):
            return fd, path, created, _read_owner(fd)
        os.close(fd)  # the holder removed it on release, after we opened it: the new one counts
    raise ConfigError(f"could not take the lock {path}: it kept being replaced; is another "
                      f"program removing files in {directory}?")


def _make_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return those this call created."""
    missing = []
    for parent in [directory, *directory.parents]:
        if parent.exists():
            break
        missing.append(parent)
    created = []
    for path in reversed(missing):
        try:
            path.mkdir()
            created.append(path)
        except FileExistsError:
            pass
    return created


def _remove_empty(created: list[Path]) -> None:
    """Remove the directories ``_make_dirs`` created, deepest first, while they are empty."""
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            return


def _open(path: Path) -> tuple[int, bool]:
    """``path`` opened for reading and writing (a lock on NFS needs write access), and whether
    this call created it."""
    flags = os.O_RDWR | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666), True
    except FileExistsError:
        return os.open(path, flags), False


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read_owner(fd: int) -> LockOwner | None:
    try:
        data = json.loads(os.pread(fd, 1 << 16, 0).decode("utf-8"))
        return LockOwner(str(data["host"]), int(data["pid"]), str(data["started"]),
                         str(data["command"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _wait_for_owner(fd: int) -> LockOwner | None:
    """The holder's record; a holder that took the lock a moment ago is given time to write it."""
    deadline = time.monotonic() + _RECORD_WAIT_S
    while (owner := _read_owner(fd)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return owner


def _write_owner(fd: int, owner: LockOwner) -> None:
    """The record, written in place: the lock belongs to this file, so it is never replaced."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(asdict(owner)) + "\n").encode("utf-8"), 0)
    os.fsync(fd)


def _release(fd: int, path: Path, created: list[Path]) -> None:
    """Empty and remove the lock file while still holding it (a writer that opened it just
    before finds it gone and opens the new one), then unlock; remove what ``_acquire`` created
    while it is empty."""
    try:
        os.ftruncate(fd, 0)
        if _same_file(fd, path):
            path.unlink()
    except OSError:
        pass
    finally:
        os.close(fd)
    _remove_empty(created)


def locked_report(directory: str | Path, log: Callable[[str], None] = print) -> str:
    """``kdci-ray report DIR``: rebuild and write the tables and report under the directory's
    lock. While a sweep holds it, the table of its trials so far is returned and nothing is
    written (the sweep writes its own when it ends); ``log`` hears which it was."""
    from kdci_ray.results import preview, report

    directory = Path(directory).expanduser().resolve()
    if not directory.is_dir():  # nothing to lock: ``report`` says what it takes
        return report(directory, log=log)
    try:
        with sweep_lock(directory, log=log):
            return report(directory, log=log)
    except SweepBusy as busy:
        who = busy.owner.describe() if busy.owner else "another process"
        log(f"{directory} is being written by {who}: the table shows its trials so far and "
            f"nothing was written (the sweep writes summary.csv, summary.md and report.md when "
            f"it ends)")
        return preview(directory)
