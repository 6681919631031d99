"""Result tables of a sweep: per-trial rows, per-(method, KDCI) summary, Markdown.

``rows_from_sweep`` reads a Ray Tune experiment directory directly (no Ray needed), so tables can
be rebuilt from a finished or an interrupted sweep. Ray Tune 2.60 writes, per trial directory,
``params.json`` (the trial's ``param_space`` values, top-level keys as given, e.g.
``{"kdci.enabled": false, "method": "dafl"}``), ``params.pkl``, ``result.json`` (one JSON object
per ``tune.report``, plus Tune's own fields and a ``config`` copy), ``progress.csv`` and a
TensorBoard ``events.out.tfevents.*`` file. We add ``config.yaml`` (the resolved flat config)
and ``student.pt``.
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
from kdci_ray.config import ExperimentConfig, KDCIConfig, flatten

ROW_COLUMNS = [
    "trial", "method", "kdci", "seed", "acc", "acc_kdci", "teacher_acc",
    "rounds_done", "finished", "checkpoint",
]  # fmt: skip
SUMMARY_COLUMNS = [
    "method", "kdci", "n", "acc_mean", "acc_std", "acc_kdci_mean", "acc_kdci_std",
    "teacher_acc", "delta_acc",
]  # fmt: skip
DASH = "–"

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


def _group_row(method: str, kdci: bool, group: pd.DataFrame) -> dict[str, Any]:
    acc = pd.to_numeric(group["acc"], errors="coerce")
    acc_kdci = pd.to_numeric(group["acc_kdci"], errors="coerce")
    return {
        "method": method,
        "kdci": kdci,
        "n": int(acc.notna().sum()),
        "acc_mean": _mean(acc),
        "acc_std": _std(acc),
        "acc_kdci_mean": _mean(acc_kdci),
        "acc_kdci_std": _std(acc_kdci),
        "teacher_acc": _mean(pd.to_numeric(group["teacher_acc"], errors="coerce")),
    }


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, kdci): ``n``, acc/acc_kdci mean and std, teacher acc, delta_acc.

    ``n`` counts trials with a measured ``acc`` (trials without any result are left out of
    every statistic). Stds are sample stds (ddof=1) over those trials; a group of one trial
    gets std 0.0, a group with none NaN. ``delta_acc`` (same on both rows of a method) is
    mean acc with KDCI minus mean acc without, NaN when either side is missing.
    """
    if rows.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    frame = rows.assign(kdci=rows["kdci"].astype(bool))
    records = [
        _group_row(method, bool(kdci), group)
        for (method, kdci), group in frame.groupby(["method", "kdci"], sort=True)
    ]
    out = pd.DataFrame.from_records(records)
    means = out.set_index(["method", "kdci"])["acc_mean"]

    def delta(method: str) -> float:
        on, off = means.get((method, True), math.nan), means.get((method, False), math.nan)
        return float(on - off)

    out["delta_acc"] = [delta(m) for m in out["method"]]
    return out[SUMMARY_COLUMNS].reset_index(drop=True)


# ----------------------------------------------------------------------------- markdown


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _pct(mean: Any, std: Any | None = None) -> str:
    """``0.9741, 0.0035`` -> ``97.41 ± 0.35``; missing -> ``–``."""
    if _missing(mean):
        return DASH
    text = f"{100 * float(mean):.2f}"
    if std is not None and not _missing(std):
        text += f" ± {100 * float(std):.2f}"
    return text


def _pp(delta: Any) -> str:
    return DASH if _missing(delta) else f"{100 * float(delta):+.2f} pp"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


def _table(header: list[str], align: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in body]


def to_markdown(summary: pd.DataFrame, title: str) -> str:
    """Markdown: a per-(method, KDCI) accuracy table and a per-method "KDCI − vanilla" table.

    Accuracies are percentages (mean ± sample std over trials); deltas are percentage points.
    """
    body = [
        [
            r.method,
            "on" if r.kdci else "off",
            str(int(r.n)),
            _pct(r.acc_mean, r.acc_std),
            _pct(r.acc_kdci_mean, r.acc_kdci_std) if r.kdci else DASH,
            _pct(r.teacher_acc),
        ]
        for r in summary.itertuples(index=False)
    ]
    lines = [f"## {title}", ""]
    lines += _table(
        ["method", "KDCI", "n", "acc (%)", "acc_kdci (%)", "teacher acc (%)"],
        ["---", "---", "---:", "---:", "---:", "---:"],
        body,
    )
    deltas = summary.drop_duplicates("method")[["method", "delta_acc"]]
    lines += ["", "### KDCI − vanilla", ""]
    lines += _table(
        ["method", "Δ acc"],
        ["---", "---:"],
        [[m, _pp(d)] for m, d in deltas.itertuples(index=False)],
    )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- files


def sorted_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-trial rows sorted by method, kdci, seed; ``acc_kdci`` blanked where KDCI is off."""
    rows = rows.copy()
    rows["kdci"] = rows["kdci"].astype(bool)
    rows["acc_kdci"] = pd.to_numeric(rows["acc_kdci"], errors="coerce").where(rows["kdci"])
    keys = [k for k in ("method", "kdci", "seed", "trial") if k in rows.columns]
    return rows.sort_values(keys, kind="stable").reset_index(drop=True)


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


def _read_trial_config(trial_dir: Path) -> dict[str, Any] | None:
    """``params.json`` overlaid with ``config.yaml`` (flat keys); None if neither exists."""
    sources = [(trial_dir / "params.json", json.loads), (trial_dir / "config.yaml", yaml.safe_load)]
    if not any(path.is_file() for path, _ in sources):
        return None
    merged: dict[str, Any] = {}
    for path, load in sources:
        if not path.is_file():
            continue
        try:
            data = load(path.read_text())
        except (ValueError, yaml.YAMLError) as exc:  # JSONDecodeError is a ValueError
            warnings.warn(f"{path}: unreadable ({exc}); ignored", stacklevel=3)
            continue
        if isinstance(data, dict):
            merged.update(flatten(data))
    return merged


def _read_results(trial_dir: Path) -> list[dict[str, Any]]:
    """The reports in ``result.json``; a torn last line (interrupted write) is skipped."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    reports = []
    for line in path.read_text().splitlines():
        try:
            report = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        if isinstance(report, dict):
            reports.append(report)
    return reports


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


def _trial_row(trial_dir: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    reports = _read_results(trial_dir)
    last = reports[-1] if reports else {}
    kdci = _as_bool(cfg.get("kdci.enabled", KDCIConfig.enabled))
    rounds = last.get("round")
    return {
        "trial": trial_dir.name,
        "method": str(cfg.get("method", ExperimentConfig.method)),
        "kdci": kdci,
        "seed": int(cfg.get("seed", ExperimentConfig.seed)),
        "acc": _latest(reports, "eval/acc"),
        "acc_kdci": _latest(reports, "eval/acc_kdci") if kdci else math.nan,
        "teacher_acc": _latest(reports, "eval/teacher_acc"),
        "rounds_done": int(rounds) if _is_number(rounds) else 0,
        "finished": _as_bool(last.get("finished", False)),
        "checkpoint": _checkpoint(trial_dir),
    }


def rows_from_sweep(sweep_dir: Path) -> pd.DataFrame:
    """Per-trial rows of a Ray Tune experiment directory, finished or interrupted, without Ray.

    Each subdirectory with ``params.json`` or ``config.yaml`` is a trial (``config.yaml`` wins
    over ``params.json``; keys missing from both take the config defaults). Metrics are the
    latest reported ``eval/acc``, ``eval/acc_kdci`` (KDCI on only), ``eval/teacher_acc``;
    ``finished`` means the last report has ``finished == 1``. Trials without reports get NaN.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory not found: {sweep_dir}")
    records = []
    for trial_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        cfg = _read_trial_config(trial_dir)
        if cfg is not None:
            records.append(_trial_row(trial_dir, cfg))
    frame = pd.DataFrame.from_records(records, columns=ROW_COLUMNS)
    frame = frame.astype({"acc": float, "acc_kdci": float, "teacher_acc": float})
    return sorted_rows(frame) if len(frame) else frame
