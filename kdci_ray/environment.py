"""The software a run computes with, and the cache entries it used.

- ``snapshot()``: package versions, Python, platform, thread count and this package's source
  commit: what ``kdci-ray env`` prints and every sweep records beside ``sweep.yaml``
  (``environment.json``, written by the engine).
- ``versions(packages)`` / ``version_difference``: each cached artifact records the versions of
  the packages that change its content (``TEACHER_PACKAGES``, ...) and is rebuilt, or refused,
  when they differ from this environment's.
- ``note_cache_use``: the cache entries a process used (teacher, selections, dictionaries, SKDCGN
  entries), appended to a trial's ``caches.jsonl`` once ``log_cache_uses`` names it; the engine
  gathers them (``sweep_cache_uses``).

The ground layer: imports nothing of kdci_ray, and neither torch nor Ray (versions come from the
installed distributions' metadata).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

ENVIRONMENT_FILE = "environment.json"  # beside sweep.yaml
CACHES_FILE = "caches.jsonl"  # in each trial directory: one line per cache entry used

# what `kdci-ray env` lists first (every installed distribution is recorded)
KEY_PACKAGES = ("torch", "ray", "numpy", "scipy", "scikit-learn", "pillow", "pandas",
                "tensorboardX", "tensorboard", "matplotlib", "pyyaml", "threadpoolctl",
                "cuml-cu13", "cupy-cuda13x")
# packages whose versions change a run's numbers: a sweep resumes only with the same ones
NUMERIC_PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "pillow", "cuml-cu13",
                    "cupy-cuda13x")
# what changes each cached artifact: torch trains and scores; scikit-learn ships the embedded
# digits and photographs and clusters (with SciPy); Pillow decodes and resizes the photographs and
# image folders; numpy draws the crops and splits
TEACHER_PACKAGES = ("torch", "numpy", "scikit-learn")
SELECTION_PACKAGES = ("torch", "numpy", "scikit-learn", "pillow")
DICTIONARY_PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "pillow")
CGN_PACKAGES = ("torch", "numpy", "pillow")

_uses: list[dict[str, Any]] = []
_log_path: Path | None = None


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``; None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions(packages: Iterable[str]) -> dict[str, str | None]:
    """``{package: installed version or None}`` for each of ``packages``."""
    return {name: package_version(name) for name in packages}


def version_difference(recorded: Any, wanted: dict[str, Any]) -> str:
    """"" when ``recorded`` (an artifact's or a sweep's ``versions``) has ``wanted``'s versions;
    else the differences in words (``torch 2.12.0 instead of 2.13.0``)."""
    if not isinstance(recorded, dict):
        return "no package versions recorded"
    diffs = [f"{name} {recorded.get(name) or 'absent'} instead of {now or 'absent'}"
             for name, now in wanted.items() if recorded.get(name) != now]
    return ", ".join(diffs)


def say(message: str) -> None:
    """A line to stderr, for what a cache does about an entry (rebuilt, refused)."""
    print(f"kdci-ray: {message}", file=sys.stderr, flush=True)


def all_packages() -> dict[str, str]:
    """Every installed distribution of this Python, ``{name: version}``, sorted by name."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name not in found:
            found[name] = dist.version
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def tensorboard_command() -> str:
    """TensorBoard as the shell that started this process reaches it: ``tensorboard`` when that
    is this environment's (or the only one), else this environment's script by its path
    (``.venv/bin/tensorboard`` after ``make demo``, whose venv is not on the PATH)."""
    script = Path(sys.executable).parent / "tensorboard"
    on_path = shutil.which("tensorboard")
    if not script.is_file() or (on_path and Path(on_path).resolve() == script.resolve()):
        return "tensorboard"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def thread_count() -> str:
    """``OMP_NUM_THREADS`` as every kdci-ray process runs with it (the package sets it)."""
    return os.environ.get("OMP_NUM_THREADS") or "1"


def source_revision() -> dict[str, Any]:
    """This package's version and, when it runs from a git checkout, the commit and whether the
    working tree has changes (``modified``)."""
    here = Path(__file__).resolve().parent
    record: dict[str, Any] = {"version": package_version("kdci_ray") or package_version("kdci-ray")}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(here.parent), *args], capture_output=True,
                                  text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top and Path(top).resolve() / here.name == here:
        record["commit"] = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
        record["modified"] = bool(status) if status is not None else None
    return record


def snapshot() -> dict[str, Any]:
    """This environment: Python, platform, thread count, kdci_ray's revision, every package."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "host": socket.gethostname(),
        "threads": thread_count(),
        "kdci_ray": source_revision(),
        "packages": all_packages(),
    }


def numeric_difference(recorded: dict[str, Any], now: dict[str, Any]) -> str:
    """What differs between two snapshots in what changes the numbers (the packages of
    ``NUMERIC_PACKAGES``, Python, the thread count); "" when nothing does."""
    diffs = []
    for key in ("python", "threads"):
        if recorded.get(key) != now.get(key):
            diffs.append(f"{key} {recorded.get(key)} instead of {now.get(key)}")
    old, new = recorded.get("packages") or {}, now.get("packages") or {}
    lowered_old = {k.lower(): v for k, v in old.items()}
    lowered_new = {k.lower(): v for k, v in new.items()}
    for name in NUMERIC_PACKAGES:
        was, is_ = lowered_old.get(name.lower()), lowered_new.get(name.lower())
        if was != is_:
            diffs.append(f"{name} {was or 'absent'} instead of {is_ or 'absent'}")
    return ", ".join(diffs)


def note_cache_use(kind: str, path: str | Path, status: str, key: str = "",
                   **details: Any) -> None:
    """Record that this process used cache entry ``path`` of ``kind`` (teacher, selection,
    dictionary, cgn): ``status`` is ``hit`` (loaded), ``built`` or ``rebuilt`` (stale)."""
    record = {"kind": kind, "path": str(path), "status": status, "time": time.time(), **details}
    if key:
        record["key"] = key
    _uses.append(record)
    if _log_path is not None:
        try:
            with open(_log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, default=str) + "\n")
        except OSError:
            pass  # a record of the run, never a reason to fail it


def log_cache_uses(path: str | Path | None) -> None:
    """Append this process's later cache uses to ``path`` (a trial's ``caches.jsonl``); None
    stops it."""
    global _log_path
    _log_path = None if path is None else Path(path)


def cache_uses(clear: bool = False) -> list[dict[str, Any]]:
    """The cache uses this process noted (``clear``: and forget them)."""
    uses = list(_uses)
    if clear:
        _uses.clear()
    return uses


def _records(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def unique_uses(uses: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per entry (kind, path), the first use's, with every status it had
    (``statuses``: hit, built, rebuilt)."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for use in uses:
        ident = (str(use.get("kind")), str(use.get("path")))
        entry = merged.setdefault(ident, {**use, "statuses": []})
        for status in use.get("statuses") or [use.get("status")]:
            if status and status not in entry["statuses"]:
                entry["statuses"].append(status)
    for entry in merged.values():
        entry.pop("status", None)
        entry.pop("time", None)
    return sorted(merged.values(), key=lambda e: (str(e.get("kind")), str(e.get("path"))))


def read_environment(sweep_dir: str | Path) -> dict[str, Any] | None:
    """A sweep's ``environment.json``; None when it has none or it is unreadable."""
    try:
        record = json.loads((Path(sweep_dir) / ENVIRONMENT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def sweep_cache_uses(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every cache entry a sweep used: the driver's (``environment.json``) and each trial's
    (``caches.jsonl`` in its directory), one record per entry."""
    sweep_dir = Path(sweep_dir)
    recorded = read_environment(sweep_dir) or {}
    uses = [u for u in recorded.get("caches", []) if isinstance(u, dict)]
    if sweep_dir.is_dir():
        for trial_log in sorted(sweep_dir.glob(f"*/{CACHES_FILE}")):
            uses.extend(_records(trial_log))
    return unique_uses(uses)


def _revision(record: Any) -> str:
    if not isinstance(record, dict):
        return "?"
    text = str(record.get("version") or "?")
    if record.get("commit"):
        text += f" {str(record['commit'])[:10]}" + (" (modified)" if record.get("modified") else "")
    return text


def _lowered(packages: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in packages.items()} \
        if isinstance(packages, dict) else {}


def describe(now: dict[str, Any], show_all: bool = False) -> str:
    """``kdci-ray env``: this environment in a few lines (``show_all``: every package)."""
    installed = _lowered(now["packages"])
    lines = [f"kdci_ray {_revision(now['kdci_ray'])}",
             f"Python {now['python']} ({now['implementation']}) on {now['platform']}, host "
             f"{now['host']}, OMP_NUM_THREADS={now['threads']}"]
    names = list(now["packages"]) if show_all else KEY_PACKAGES
    width = max(len(n) for n in names)
    lines += [f"  {name:<{width}}  {installed.get(name.lower(), '(not installed)')}"
              for name in names]
    if not show_all:
        lines.append(f"({len(installed)} distributions installed: --all lists them)")
    return "\n".join(lines)


def compare(recorded: dict[str, Any] | None, now: dict[str, Any], uses: list[dict[str, Any]],
            where: str, show_all: bool = False) -> str:
    """``kdci-ray env DIR``: what a sweep recorded beside this environment, the differences, and
    the cache entries it used."""
    lines: list[str] = []
    if recorded is None:
        lines.append(f"{where}: no {ENVIRONMENT_FILE} (a sweep from before kdci_ray recorded "
                     f"its software); here:")
        lines.append(describe(now, show_all))
    else:
        was, here = _lowered(recorded.get("packages")), _lowered(now["packages"])
        rows = [("python", str(recorded.get("python")), now["python"]),
                ("threads", str(recorded.get("threads")), now["threads"]),
                ("kdci_ray", _revision(recorded.get("kdci_ray")), _revision(now["kdci_ray"]))]
        names = sorted({*was, *here}) if show_all else [n.lower() for n in KEY_PACKAGES]
        others = [n for n in sorted({*was, *here}) if n not in names and was.get(n) != here.get(n)]
        rows += [(name, was.get(name, "-"), here.get(name, "-")) for name in names]
        width = max(len(r[0]) for r in rows)
        col = max(len(r[1]) for r in rows)
        lines.append(f"{where}: recorded {recorded.get('written', '?')} on host "
                     f"{recorded.get('host', '?')}; here: {now['host']}")
        lines.append(f"  {'':<{width}}  {'recorded':<{col}}  here")
        for name, old, new in rows:
            mark = "" if old == new else "  <- differs"
            lines.append(f"  {name:<{width}}  {old:<{col}}  {new}{mark}")
        if others:
            shown = ", ".join(f"{n} {was.get(n, '-')} -> {here.get(n, '-')}" for n in others)
            lines.append(f"  other packages that differ: {shown}")
        diff = numeric_difference(recorded, now)
        lines.append(f"what changes the numbers: {diff}" if diff else
                     "what changes the numbers (Python, threads, "
                     f"{', '.join(NUMERIC_PACKAGES)}): the same here")
    lines.append(f"cache entries used ({len(uses)}):" if uses else "cache entries used: none "
                 "recorded")
    for use in uses:
        status = "/".join(str(s) for s in use.get("statuses", []))
        lines.append(f"  {use.get('kind', '?'):<10}  {status:<8}  {use.get('path')}")
    return "\n".join(lines)
