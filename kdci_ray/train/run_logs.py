"""Reading a run directory's own logs (no torch, no Ray: the results code reads them too).

A trial's reporter (``kdci_ray.train.run_reporter``, under either trainer) appends JSON-lines
records (``metrics.jsonl``, ``resumes.jsonl``, ``failures.jsonl``) and, when the loop stopped a
run early on a non-finite loss, writes ``stopped.json`` with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

STOPPED_FILE = "stopped.json"  # why a run stopped early
# JSON-lines logs of a run, appended in its directory (read back by kdci_ray.results)
METRICS_FILE = "metrics.jsonl"  # every report (Tune's result.json restarts when a trial resumes)
RESUMES_FILE = "resumes.jsonl"  # one record per continuation from a checkpoint
FAILURES_FILE = "failures.jsonl"  # one record per worker failure


def count_records(path: Path) -> int:
    """Records in a JSON-lines log of the run; 0 when absent."""
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def stopped_reason(run_dir: Path) -> str:
    """Why the run stopped early (``stopped.json``); "" when it did not (or it is unreadable)."""
    try:
        record = json.loads((Path(run_dir) / STOPPED_FILE).read_text())
    except (OSError, ValueError):
        return ""
    return str(record.get("reason", "")) if isinstance(record, dict) else ""
