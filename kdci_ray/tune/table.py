"""Result tables of a sweep: per-trial rows, per-(searched values, method, KDCI) summary, Markdown.

``rows_from_sweep`` reads a Ray Tune experiment directory directly (no Ray needed), so tables can
be rebuilt from a finished or an interrupted sweep. Ray Tune 2.60 writes, per trial directory,
``params.json`` (the trial's ``param_space`` values, top-level keys as given, e.g.
``{"kdci.enabled": false, "method": "dafl"}``), ``params.pkl``, ``result.json`` (one JSON object
per ``tune.report``, plus Tune's own fields and a ``config`` copy), ``progress.csv`` and a
TensorBoard ``events.out.tfevents.*`` file. We add ``config.yaml`` (the resolved flat config)
and ``student.pt``.

Besides ``ROW_COLUMNS`` a row has one column per searched entry of the sweep other than
``method``, ``kdci.enabled`` and ``seed`` (already columns): a grid or sampled key under its
dotted name (``kdci.k``), a case group under its column name (``case``, or the group's name such as
``pair``) holding the case's name. Any other column counts as such a searched column: the summary
groups by them too, and the Markdown shows them first (except one that only repeats ``method``).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from kdci_ray.atomic import atomic_write_text
from kdci_ray.config import ConfigError, ExperimentConfig, KDCIConfig, flatten
from kdci_ray.train.resume import FAILURES_FILE, METRICS_FILE, RESUMES_FILE
from kdci_ray.train.run_logs import count_records, stopped_reason
from kdci_ray.tune.cases import (
    case_lookup,
    case_name,
    column_name,
    config_layer,
    expand,
    is_case_key,
)

ROW_COLUMNS = [
    "trial", "method", "kdci", "seed", "acc", "acc_kdci", "teacher_acc",
    "rounds_done", "finished", "checkpoint", "resumes", "failures", "stopped",
]  # fmt: skip
SUMMARY_COLUMNS = [
    "method", "kdci", "n", "acc_mean", "acc_std", "acc_kdci_mean", "acc_kdci_std",
    "teacher_acc", "delta_acc",
]  # fmt: skip
DASH = "–"
_STANDARD_PARAMS = ("method", "kdci.enabled", "seed")  # searched keys that have a column already


def searched_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of a rows or summary frame beyond ``ROW_COLUMNS`` / ``SUMMARY_COLUMNS``: one
    per searched key or case group."""
    return [c for c in frame.columns if c not in ROW_COLUMNS and c not in SUMMARY_COLUMNS]


def _sort(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Stable sort on ``keys``; columns that mix types (a grid of ``[1, "a"]``) sort as text."""
    keys = [k for k in keys if k in frame.columns]
    try:
        return frame.sort_values(keys, kind="stable")
    except TypeError:
        return frame.sort_values(keys, kind="stable", key=lambda col: col.astype(str))

# ----------------------------------------------------------------------------- summary


def _std(values: pd.Series) -> float:
    """Sample std (ddof=1) of the non-NaN values; 0.0 for a single value, NaN for none."""
    values = values.dropna()
    if len(values) == 0:
        return math.nan
    if len(values) == 1:
        return 0.0
    return float(values.std(ddof=1))


def _mean(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.mean()) if len(values) else math.nan


def _group_row(keys: dict[str, Any], group: pd.DataFrame) -> dict[str, Any]:
    acc = pd.to_numeric(group["acc"], errors="coerce")
    acc_kdci = pd.to_numeric(group["acc_kdci"], errors="coerce")
    return {
        **keys,
        "n": int(acc.notna().sum()),
        "acc_mean": _mean(acc),
        "acc_std": _std(acc),
        "acc_kdci_mean": _mean(acc_kdci),
        "acc_kdci_std": _std(acc_kdci),
        "teacher_acc": _mean(pd.to_numeric(group["teacher_acc"], errors="coerce")),
    }


def _key(value: Any) -> Any:
    """A group-key value that compares equal to itself (NaN -> None)."""
    return None if is_missing(value) else value


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (searched columns..., method, kdci): ``n``, acc/acc_kdci mean and std, teacher
    acc, delta_acc.

    ``n`` counts trials with a measured ``acc`` (trials without any result are left out of
    every statistic). Stds are sample stds (ddof=1) over those trials; a group of one trial
    gets std 0.0, a group with none NaN. ``delta_acc`` (same on both rows of a method) is
    mean acc with KDCI minus mean acc without, at the same searched values; NaN when either
    side is missing.
    """
    extra = searched_columns(rows)
    columns = extra + SUMMARY_COLUMNS
    if rows.empty:
        return pd.DataFrame(columns=columns)
    frame = rows.assign(kdci=rows["kdci"].astype(bool))
    by = extra + ["method", "kdci"]
    records = [
        _group_row(dict(zip(by, values, strict=True)), group)
        for values, group in frame.groupby(by, sort=False, dropna=False)
    ]
    out = _sort(pd.DataFrame.from_records(records), by)
    side = {tuple(_key(r[c]) for c in by): r["acc_mean"] for _, r in out.iterrows()}

    def delta(r: pd.Series) -> float:
        base = tuple(_key(r[c]) for c in extra + ["method"])
        return float(side.get((*base, True), math.nan) - side.get((*base, False), math.nan))

    out["delta_acc"] = [delta(r) for _, r in out.iterrows()]
    return out[columns].reset_index(drop=True)


# ----------------------------------------------------------------------------- markdown


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def pct(mean: Any, std: Any | None = None) -> str:
    """``0.9741, 0.0035`` -> ``97.41 ± 0.35``; missing -> ``–``."""
    if is_missing(mean):
        return DASH
    text = f"{100 * float(mean):.2f}"
    if std is not None and not is_missing(std):
        text += f" ± {100 * float(std):.2f}"
    return text


def pp_delta(delta: Any) -> str:
    return DASH if is_missing(delta) else f"{100 * float(delta):+.2f} pp"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


def markdown_table(header: list[str], align: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in body]


def _shown_columns(summary: pd.DataFrame) -> list[str]:
    """Searched columns worth a Markdown column: not a copy of ``method`` (a schedule case group
    named after its method)."""
    method = summary["method"].astype(str)
    return [c for c in searched_columns(summary) if not summary[c].astype(str).equals(method)]


def text_cell(value: Any) -> str:
    return DASH if is_missing(value) else str(value)


def _accuracy_cells(r: pd.Series) -> list[str]:
    return [
        r["method"],
        "on" if r["kdci"] else "off",
        str(int(r["n"])),
        pct(r["acc_mean"], r["acc_std"]),
        pct(r["acc_kdci_mean"], r["acc_kdci_std"]) if r["kdci"] else DASH,
        pct(r["teacher_acc"]),
    ]


def to_markdown(summary: pd.DataFrame, title: str) -> str:
    """Markdown: a per-(searched values, method, KDCI) accuracy table and a "KDCI − vanilla" table.

    Accuracies are percentages (mean ± sample std over trials); deltas are percentage points.
    """
    extra = _shown_columns(summary)
    lines = [f"## {title}", ""]
    lines += markdown_table(
        extra + ["method", "KDCI", "n", "acc (%)", "acc_kdci (%)", "teacher acc (%)"],
        ["---"] * len(extra) + ["---", "---", "---:", "---:", "---:", "---:"],
        [[text_cell(r[c]) for c in extra] + _accuracy_cells(r) for _, r in summary.iterrows()],
    )
    deltas = summary.drop_duplicates(extra + ["method"])
    lines += ["", "### KDCI − vanilla", ""]
    lines += markdown_table(
        extra + ["method", "Δ acc"],
        ["---"] * len(extra) + ["---", "---:"],
        [[text_cell(r[c]) for c in extra] + [r["method"], pp_delta(r["delta_acc"])]
         for _, r in deltas.iterrows()],
    )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- files


def sorted_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-trial rows sorted by searched columns, method, kdci, seed; ``acc_kdci`` blanked where
    KDCI is off."""
    rows = rows.copy()
    rows["kdci"] = rows["kdci"].astype(bool)
    rows["acc_kdci"] = pd.to_numeric(rows["acc_kdci"], errors="coerce").where(rows["kdci"])
    keys = searched_columns(rows) + ["method", "kdci", "seed", "trial"]
    return _sort(rows, keys).reset_index(drop=True)


def write_tables(rows: pd.DataFrame, out_dir: Path, title: str) -> str:
    """Write ``summary.csv`` (per trial) and ``summary.md`` atomically; return the Markdown."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = sorted_rows(rows)
    markdown = to_markdown(summarize(rows), title)
    atomic_write_text(out_dir / "summary.csv", rows.to_csv(index=False))
    atomic_write_text(out_dir / "summary.md", markdown)
    return markdown


# ----------------------------------------------------------------------------- reading a sweep


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
    """Every report of a trial, oldest first: ``metrics.jsonl`` (the run's own log, complete
    across interruptions; a resumed run re-reports nothing, but a worker restarted between a
    report and its checkpoint may repeat a round) when present, else Tune's ``result.json``
    (which a resumed trial restarts: only its reports since the resume)."""
    own = _json_lines(trial_dir / METRICS_FILE)
    return own if own else _json_lines(trial_dir / "result.json")


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


def _trial_row(trial_dir: Path, cfg: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
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
        "acc": _latest(scored, "eval/acc"),
        "acc_kdci": _latest(scored, "eval/acc_kdci") if kdci else math.nan,
        "teacher_acc": _latest(reports, "eval/teacher_acc"),
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
    latest reported ``eval/acc``, ``eval/acc_kdci`` (KDCI on only), ``eval/teacher_acc``;
    ``finished`` means the last report has ``finished == 1``. Trials without reports get NaN.
    ``resumes`` / ``failures`` count the trial's continuations from a checkpoint and its worker
    failures (``resumes.jsonl`` / ``failures.jsonl``, written by the Ray Train adapter);
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
    frame = frame.astype({"acc": float, "acc_kdci": float, "teacher_acc": float})
    return sorted_rows(frame) if len(frame) else frame
