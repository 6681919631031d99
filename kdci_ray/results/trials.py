"""Reading a Ray Tune experiment directory into per-trial rows (no Ray needed), so tables can
be rebuilt from a finished or an interrupted sweep.

Ray Tune 2.60 writes, per trial directory, ``params.json`` (the trial's ``param_space`` values,
top-level keys as given, e.g. ``{"kdci.enabled": false, "method": "dafl"}``), ``params.pkl``,
``result.json`` (one JSON object per ``tune.report``, plus Tune's own fields and a ``config``
copy), ``progress.csv`` and a TensorBoard ``events.out.tfevents.*`` file. We add ``config.yaml``
(the resolved flat config) and ``student.pt``.

Besides ``ROW_COLUMNS`` a row has one column per searched entry of the sweep other than
``method``, ``kdci.enabled`` and ``seed`` (already columns): a grid or sampled key under its
dotted name (``kdci.k``), a case group under its column name (``case``, or the group's name such as
``pair``) holding the case's name.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from kdci_ray.config.cases import case_name, column_name, config_layer, expand, is_case_key
from kdci_ray.errors import ConfigError
from kdci_ray.results.columns import KDCI_ONLY, METRIC_KEYS, ROW_COLUMNS, sorted_rows
from kdci_ray.search.cases import case_lookup
from kdci_ray.train.run_logs import (
    FAILURES_FILE,
    METRICS_FILE,
    RESUMES_FILE,
    count_records,
    stopped_reason,
)

_STANDARD_PARAMS = ("method", "kdci.enabled", "seed")  # searched keys that have a column already


def _load(path: Path, load) -> dict[str, Any] | None:
    """A JSON / YAML mapping, or None (missing, or unreadable with a warning)."""
    if not path.is_file():
        return None
    try:
        data = load(path.read_text())
    except (ValueError, yaml.YAMLError) as exc:  # JSONDecodeError is a ValueError
        warnings.warn(f"{path}: unreadable ({exc}); ignored", stacklevel=4)
        return None
    return data if isinstance(data, dict) else None


def _case_lookup(sweep_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """The sweep's cases by name, from its ``sweep.yaml`` (``{}`` when there is none)."""
    record = _load(sweep_dir / "sweep.yaml", yaml.safe_load) or {}
    try:
        return case_lookup(record.get("search") or {})
    except ConfigError as exc:
        warnings.warn(f"{sweep_dir / 'sweep.yaml'}: cases unreadable ({exc}); ignored",
                      stacklevel=3)
        return {}


def _read_trial_config(trial_dir: Path, lookup: dict[str, dict[str, dict[str, Any]]]
                       ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(config, params)``: ``params.json`` (Tune's sampled values; cases by name, looked up in
    ``lookup``) overlaid with ``config.yaml`` (flat keys), and ``params.json`` itself; None if
    the directory has neither file."""
    paths = (trial_dir / "params.json", trial_dir / "config.yaml")
    if not any(path.is_file() for path in paths):
        return None
    params = _load(paths[0], json.loads) or {}
    try:
        point = expand(params, lookup)
    except ConfigError:  # a case renamed since: config.yaml still has the resolved values
        point = params
    from kdci_ray.experiments.dfkd import flatten  # the schema, when a trial is first read

    merged = flatten(config_layer(point))
    merged.update(flatten(_load(paths[1], yaml.safe_load) or {}))
    return merged, params


def _searched_values(params: dict[str, Any]) -> dict[str, Any]:
    """``{column: value}`` for a trial's searched entries (case groups by their case's name)."""
    values = {}
    for key, value in params.items():
        if is_case_key(key):
            values[column_name(key)] = case_name(value)
        elif key not in _STANDARD_PARAMS:
            values[key] = value
    return values


def _json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a torn or corrupt line (interrupted write) is
    skipped, a missing or unreadable file gives ``[]``."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return []
    reports = []
    for line in text.splitlines():
        try:
            report = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        if isinstance(report, dict):
            reports.append(report)
    return reports


def trial_reports(trial_dir: Path) -> list[dict[str, Any]]:
    """Every report of a trial, oldest first, each round once: ``metrics.jsonl`` (the run's own
    log, complete across interruptions) when present, else Tune's ``result.json`` (which a
    resumed trial restarts: only its reports since the resume). A continuation cuts the log
    back to where it continues from; in a log that repeats rounds all the same (written before
    it did), a later attempt's reports supersede the earlier one's from the round it restarts at."""
    own = _json_lines(trial_dir / METRICS_FILE)
    return _superseded(own) if own else _json_lines(trial_dir / "result.json")


def _superseded(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``reports`` where a report of a round already reported drops the earlier reports from
    that round on (what the attempt that wrote them logged after its successor's start). A
    stop report (``stopped_nonfinite``) names the rounds done, as the report before it may."""
    kept: list[dict[str, Any]] = []
    for report in reports:
        rnd = report.get("round")
        if _is_number(rnd) and not report.get("stopped_nonfinite"):
            while kept and _is_number(kept[-1].get("round")) and kept[-1]["round"] >= rnd:
                kept.pop()
        kept.append(report)
    return kept


def _latest(reports: list[dict[str, Any]], key: str) -> float:
    """The value of ``key`` in the last report that has it (evaluations may skip reports)."""
    for report in reversed(reports):
        value = report.get(key)
        if _is_number(value):
            return float(value)
    return math.nan


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


def _checkpoint(trial_dir: Path) -> str:
    """``student.pt`` in the trial dir, else in its newest ``checkpoint_*`` dir, else ``""``."""
    direct = trial_dir / "student.pt"
    if direct.is_file():
        return str(direct)
    nested = sorted(trial_dir.glob("checkpoint_*/student.pt"))
    return str(nested[-1]) if nested else ""


def _metrics(reports: list[dict[str, Any]], scored: list[dict[str, Any]],
             kdci: bool) -> dict[str, float]:
    """The row's ``METRIC_KEYS`` columns: the teacher's from every report, the student's from
    ``scored`` (none for a stopped trial); ``KDCI_ONLY`` ones NaN where KDCI is off."""
    return {col: math.nan if col in KDCI_ONLY and not kdci else
            _latest(reports if col == "teacher_acc" else scored, key)
            for col, key in METRIC_KEYS.items()}


def _trial_row(trial_dir: Path, cfg: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    from kdci_ray.experiments.dfkd import ExperimentConfig, KDCIConfig  # defaults of a key unsaid

    reports = trial_reports(trial_dir)
    last = reports[-1] if reports else {}
    kdci = _as_bool(cfg.get("kdci.enabled", KDCIConfig.enabled))
    rounds = last.get("round")
    stopped = stopped_reason(trial_dir)
    scored = reports if not stopped else []  # a stopped trial has no result: no accuracy
    return {
        "trial": trial_dir.name,
        **_searched_values(params),
        "method": str(cfg.get("method", ExperimentConfig.method)),
        "kdci": kdci,
        "seed": int(cfg.get("seed", ExperimentConfig.seed)),
        **_metrics(reports, scored, kdci),
        "rounds_done": int(rounds) if _is_number(rounds) else 0,
        "finished": _as_bool(last.get("finished", False)),
        "checkpoint": _checkpoint(trial_dir),
        "resumes": count_records(trial_dir / RESUMES_FILE),
        "failures": count_records(trial_dir / FAILURES_FILE),
        "stopped": stopped,
    }


def rows_from_sweep(sweep_dir: Path) -> pd.DataFrame:
    """Per-trial rows of a Ray Tune experiment directory, finished or interrupted, without Ray.

    Each subdirectory with ``params.json`` or ``config.yaml`` is a trial (``config.yaml`` wins
    over ``params.json``; keys missing from both take the config defaults). Metrics are the
    latest reported values of ``METRIC_KEYS`` (``eval/acc``, ``eval/acc_kdci``,
    ``eval/teacher_acc``, ``eval/recall_min[_kdci]``, ``eval/recall_rare[_kdci]``,
    ``eval/prior_ratio``, ``kdci/prior_ratio``; those of ``KDCI_ONLY`` for KDCI-on trials only);
    ``finished`` means the last report has ``finished == 1``. Trials without reports get NaN.
    ``resumes`` / ``failures`` count the trial's continuations (from a checkpoint, or from the
    start over an earlier attempt's logs) and its worker failures (``resumes.jsonl`` /
    ``failures.jsonl``, written by the trial's reporter and the Ray layer);
    ``stopped`` says why a trial stopped early (a non-finite loss; its accuracies are left
    blank, so no summary counts it), empty when it did not.
    The searched entries of ``params.json`` (other than method, KDCI, seed) become columns right
    after ``trial``; case names are looked up in the sweep's ``sweep.yaml``.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory not found: {sweep_dir}")
    lookup = _case_lookup(sweep_dir)
    records = []
    for trial_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        found = _read_trial_config(trial_dir, lookup)
        if found is not None:
            records.append(_trial_row(trial_dir, *found))
    extra = list(dict.fromkeys(k for r in records for k in r if k not in ROW_COLUMNS))
    frame = pd.DataFrame.from_records(records, columns=ROW_COLUMNS[:1] + extra + ROW_COLUMNS[1:])
    frame = frame.astype(dict.fromkeys(METRIC_KEYS, float))
    return sorted_rows(frame) if len(frame) else frame
