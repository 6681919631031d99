"""A run directory's own logs (no torch, no Ray: the results code reads them too).

A trial's reporter (``kdci_ray.train.run_reporter``, under either trainer) appends JSON-lines
records (``metrics.jsonl``, ``resumes.jsonl``, ``failures.jsonl``) and, when the loop stopped a
run early on a non-finite loss, writes ``stopped.json`` with the reason.

An attempt that starts where an earlier one left logs (a resume, a retry, a restart after the
driver was stopped) is a continuation (``begin_continuation``): it is recorded once in
``resumes.jsonl``, the reports the earlier attempt made after the point it continues from are
dropped from ``metrics.jsonl`` (the continuation reports those rounds again), and its
TensorBoard event file gets a suffix of its own (``.resumeNNN``, sorting after the earlier ones).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kdci_ray.atomic import atomic_write_text

STOPPED_FILE = "stopped.json"  # why a run stopped early
# JSON-lines logs of a run, appended in its directory (read back by kdci_ray.results)
METRICS_FILE = "metrics.jsonl"  # every report, each round once (Tune's result.json restarts)
RESUMES_FILE = "resumes.jsonl"  # one record per continuation
FAILURES_FILE = "failures.jsonl"  # one record per worker failure
EVENTS_GLOB = "events.out.tfevents.*"  # TensorBoard event files, one per attempt


def count_records(path: Path) -> int:
    """Records in a JSON-lines log of the run; 0 when absent."""
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines log; a torn line (a write cut short) is skipped."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _write_records(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def stopped_reason(run_dir: Path) -> str:
    """Why the run stopped early (``stopped.json``); "" when it did not (or it is unreadable)."""
    try:
        record = json.loads((Path(run_dir) / STOPPED_FILE).read_text())
    except (OSError, ValueError):
        return ""
    return str(record.get("reason", "")) if isinstance(record, dict) else ""


def has_earlier_attempt(run_dir: Path) -> bool:
    """Whether an earlier attempt of this run left logs in ``run_dir``."""
    run_dir = Path(run_dir)
    return (run_dir / METRICS_FILE).is_file() or any(run_dir.glob(EVENTS_GLOB))


def begin_continuation(run_dir: Path, rounds_done: int, step: int) -> str:
    """Record a continuation after ``rounds_done`` rounds (``step`` KD steps; 0, 0: from the
    start) and drop the later reports of earlier attempts; returns the suffix for this
    attempt's event file.

    A recorded continuation whose event file never appeared (its attempt was killed between
    the two) did not happen and is dropped, so the records always match the event files."""
    run_dir = Path(run_dir)
    reports = read_records(run_dir / METRICS_FILE)
    if (run_dir / METRICS_FILE).is_file():  # rewritten: also drops a torn last line
        _write_records(run_dir / METRICS_FILE, [r for r in reports if _round(r) <= rounds_done])
    resumes = [r for r in read_records(run_dir / RESUMES_FILE) if _opened(run_dir, r)]
    suffix = f".resume{len(resumes) + 1:03d}"
    resumes.append({"round": rounds_done, "step": step, "time": time.time(), "events": suffix})
    _write_records(run_dir / RESUMES_FILE, resumes)
    return suffix


def _round(report: dict[str, Any]) -> float:
    value = report.get("round")
    return value if isinstance(value, (int, float)) else float("inf")


def _opened(run_dir: Path, record: dict[str, Any]) -> bool:
    """Whether the attempt a continuation record names opened its event file."""
    suffix = record.get("events")
    return not suffix or any(run_dir.glob(f"{EVENTS_GLOB}{suffix}"))
