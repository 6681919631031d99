"""Reading a run directory's own logs (no torch, no Ray: the results code reads them too).

The Ray Train adapter (``kdci_ray.train.ray_train``) appends JSON-lines records
(``metrics.jsonl``, ``resumes.jsonl``, ``failures.jsonl``: ``kdci_ray.train.resume``) and, when the
loop stopped a run early on a non-finite loss, writes ``stopped.json`` with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

STOPPED_FILE = "stopped.json"  # why a run stopped early (the Ray Train adapter writes it)


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
