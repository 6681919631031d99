"""Results of a sweep directory, without Ray: read the trials, summarise, report, plot.

``report(sweep_dir)`` rebuilds ``summary.csv`` / ``summary.md``, the PNG plots and ``report.md``
from what the trials left on disk (``config.yaml``, ``metrics.jsonl``, ``result.json``...), for a
finished sweep, a running one or an interrupted one; ``summary(sweep_dir)`` is the per-trial
table as a DataFrame. Nothing here imports Ray (``tests/test_import_guards.py``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdci_ray.errors import ConfigError
from kdci_ray.results.record import check_writable as _check_writable
from kdci_ray.results.record import read_record, record_kind
from kdci_ray.results.report import write_report
from kdci_ray.results.table import rows_from_sweep, summary_markdown, write_tables


def sweep_directory(path: str | Path) -> Path:
    """``path`` as an absolute sweep directory; a file or a missing path is a ConfigError
    saying what ``kdci-ray report`` takes."""
    sweep_dir = Path(path).expanduser().resolve()
    takes = ("`kdci-ray report` takes a sweep directory (a sweep's --output, holding its "
             "sweep.yaml and one directory per trial)")
    if sweep_dir.is_file():
        raise ConfigError(f"{sweep_dir} is a file; {takes}")
    if not sweep_dir.exists():
        raise ConfigError(f"no such directory: {sweep_dir}; {takes}")
    return sweep_dir


def summary(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per trial of the sweep in ``sweep_dir`` (the rows of ``summary.csv``)."""
    sweep_dir = sweep_directory(sweep_dir)
    if record_kind(sweep_dir) == "skdcgn":
        from kdci_ray.results.skdcgn import rows

        return rows(sweep_dir)
    return rows_from_sweep(sweep_dir)


def report(sweep_dir: str | Path, title: str | None = None, log=None) -> str:
    """Rebuild ``summary.csv`` / ``summary.md``, the plots and ``report.md`` of a finished,
    running or interrupted sweep directory, whatever its kind; returns the summary Markdown
    (``log`` hears each file written)."""
    sweep_dir = sweep_directory(sweep_dir)
    record = read_record(sweep_dir) or {}
    title = title or record.get("name") or sweep_dir.name
    if str(record.get("kind") or "dfkd") == "skdcgn":
        from kdci_ray.results.skdcgn import write_all

        return write_all(sweep_dir, title, log)
    return dfkd_report(sweep_dir, title, log)


def preview(sweep_dir: str | Path, title: str | None = None) -> str:
    """The summary Markdown ``report`` would return, computed without writing anything (the
    table of a running sweep's trials so far)."""
    sweep_dir = sweep_directory(sweep_dir)
    record = read_record(sweep_dir) or {}
    title = title or record.get("name") or sweep_dir.name
    if str(record.get("kind") or "dfkd") == "skdcgn":
        from kdci_ray.results.skdcgn import rows, summary_text

        return summary_text(rows(sweep_dir), sweep_dir, title)
    rows = rows_from_sweep(sweep_dir)
    if rows.empty:
        return f"## {title}\n\nno trial has started yet\n"
    return summary_markdown(rows, sweep_dir, title)


def check_writable(sweep_dir: Path) -> None:
    """The report is written into the sweep directory: refuse one that is not writable."""
    _check_writable(sweep_dir, "the report is written into the sweep directory: make it "
                               "writable, or copy the directory somewhere writable and run "
                               "`kdci-ray report` on the copy")


def dfkd_report(sweep_dir: Path, title: str, log=None) -> str:
    """The distillation sweep's tables, plots and ``report.md``."""
    rows = rows_from_sweep(sweep_dir)
    if rows.empty:
        raise ConfigError(f"{sweep_dir} holds no trials (no trial directory with config.yaml)")
    check_writable(sweep_dir)
    markdown = write_tables(rows, sweep_dir, title)
    for path in write_report(sweep_dir, rows, markdown, title):
        if log is not None:
            log(f"wrote {path}")
    return markdown
