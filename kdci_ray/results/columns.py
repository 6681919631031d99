"""The results tables' columns and cell formats, and which searched columns are KDCI arms.

The ground of the Ray-free results modules (``trials`` reads a sweep directory into rows,
``table`` summarises them, ``paired`` / ``comparisons`` compare arms, ``report`` writes
``report.md``); it imports none of them.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

ROW_COLUMNS = [
    "trial", "method", "kdci", "seed", "acc", "acc_kdci", "teacher_acc",
    "recall_min", "recall_min_kdci", "recall_rare", "recall_rare_kdci", "prior_ratio",
    "prior_ratio_train", "rounds_done", "finished", "checkpoint", "resumes", "failures", "stopped",
]  # fmt: skip
# metrics of a row, each the trial's latest reported value of its key (NaN when never reported)
METRIC_KEYS = {
    "acc": "eval/acc", "acc_kdci": "eval/acc_kdci", "teacher_acc": "eval/teacher_acc",
    "recall_min": "eval/recall_min", "recall_min_kdci": "eval/recall_min_kdci",
    "recall_rare": "eval/recall_rare", "recall_rare_kdci": "eval/recall_rare_kdci",
    "prior_ratio": "eval/prior_ratio", "prior_ratio_train": "kdci/prior_ratio",
}  # fmt: skip
# metrics that only a KDCI-on trial has (blanked where KDCI is off)
KDCI_ONLY = ("acc_kdci", "recall_min_kdci", "recall_rare_kdci", "prior_ratio", "prior_ratio_train")
# metrics whose per-group mean the summary adds as ``<name>_mean``
MEAN_METRICS = ("recall_min", "recall_min_kdci", "recall_rare", "recall_rare_kdci", "prior_ratio",
                "prior_ratio_train")
SUMMARY_COLUMNS = [
    "method", "kdci", "n", "acc_mean", "acc_std", "acc_kdci_mean", "acc_kdci_std",
    "teacher_acc", "delta_acc", *(f"{m}_mean" for m in MEAN_METRICS),
]  # fmt: skip
DASH = "–"


def searched_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of a rows or summary frame beyond ``ROW_COLUMNS`` / ``SUMMARY_COLUMNS``: one
    per searched key or case group."""
    return [c for c in frame.columns if c not in ROW_COLUMNS and c not in SUMMARY_COLUMNS]


def sort_frame(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Stable sort on ``keys``; columns that mix types (a grid of ``[1, "a"]``) sort as text."""
    keys = [k for k in keys if k in frame.columns]
    try:
        return frame.sort_values(keys, kind="stable")
    except TypeError:
        return frame.sort_values(keys, kind="stable", key=lambda col: col.astype(str))


def sorted_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-trial rows sorted by searched columns, method, kdci, seed; the ``KDCI_ONLY`` metrics
    blanked where KDCI is off."""
    rows = rows.copy()
    rows["kdci"] = rows["kdci"].astype(bool)
    for col in KDCI_ONLY:
        if col in rows.columns:
            rows[col] = pd.to_numeric(rows[col], errors="coerce").where(rows["kdci"])
    keys = searched_columns(rows) + ["method", "kdci", "seed", "trial"]
    return sort_frame(rows, keys).reset_index(drop=True)


# ----------------------------------------------------------------------------- KDCI arms


def line_columns(rows: pd.DataFrame) -> list[str]:
    """Searched columns that tell trials apart beyond method / KDCI / seed: those with more than
    one value, except one that only repeats ``method`` (a case group named after its method)."""
    method = rows["method"].astype(str).reset_index(drop=True)
    out = []
    for col in searched_columns(rows):
        values = rows[col].astype(str).reset_index(drop=True)
        if values.nunique() > 1 and not values.equals(method):
            out.append(col)
    return out


def arm_columns(rows: pd.DataFrame, columns: list[str]) -> list[str]:
    """The ``columns`` that are variants of the KDCI arms rather than conditions to compare both
    arms under: each value runs with one KDCI setting only and exactly one value runs without
    (a case group ``vanilla`` / ``kdci`` / ``random_z`` ...). The gain of each of their KDCI-on
    values is taken against that one vanilla value (the arm whose ``kdci`` is false).
    ``rows`` may be per-trial rows or a summary."""
    kdci = rows["kdci"].astype(bool)
    out = []
    for col in columns:
        settings = kdci.groupby(rows[col].astype(str)).nunique()
        off_values = rows.loc[~kdci, col].astype(str).nunique()
        if (settings == 1).all() and off_values == 1 and kdci.any():
            out.append(col)
    return out


def label(values: pd.Series | dict[str, Any], columns: list[str]) -> str:
    """``"kdci.k=8 · case=x"`` for the non-missing ``columns`` of one row; ``""`` for none."""
    return " · ".join(f"{c}={values[c]}" for c in columns if not is_missing(values[c]))


# ----------------------------------------------------------------------------- cells


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def group_key(value: Any) -> Any:
    """A group-key value that compares equal to itself (NaN -> None)."""
    return None if is_missing(value) else value


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


def ratio(value: Any) -> str:
    """A plain ratio (``prior_ratio``) with 3 decimals; missing -> ``–``."""
    return DASH if is_missing(value) else f"{float(value):.3f}"


def text_cell(value: Any) -> str:
    return DASH if is_missing(value) else str(value)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


def markdown_table(header: list[str], align: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in body]
