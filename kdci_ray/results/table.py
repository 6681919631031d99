"""Result tables of a sweep: per-trial rows, per-(searched values, method, KDCI) summary, Markdown.

``rows_from_sweep`` (``kdci_ray.results.trials``) reads a Ray Tune experiment directory directly (no
Ray needed), so tables can be rebuilt from a finished or an interrupted sweep; the columns and
cell formats live in ``kdci_ray.results.columns``. Both are re-exported here.

Besides ``ROW_COLUMNS`` a row has one column per searched entry of the sweep other than
``method``, ``kdci.enabled`` and ``seed`` (already columns): a grid or sampled key under its
dotted name (``kdci.k``), a case group under its column name (``case``, or the group's name such as
``pair``) holding the case's name. Any other column counts as such a searched column: the summary
groups by them too, and the Markdown shows them first (except one that only repeats ``method``).

When a searched column holds the KDCI arms (``columns.arm_columns``: a case group ``vanilla`` /
``kdci`` / ``random_z``, each value with one KDCI setting and one value with KDCI off), each
KDCI-on value is compared with that vanilla value at the same values of the other columns.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from kdci_ray.atomic import atomic_write_text
from kdci_ray.results.columns import (
    DASH,
    MEAN_METRICS,
    ROW_COLUMNS,
    SUMMARY_COLUMNS,
    arm_columns,
    group_key,
    is_missing,
    line_columns,
    markdown_table,
    pct,
    pp_delta,
    ratio,
    searched_columns,
    sort_frame,
    sorted_rows,
    text_cell,
)
from kdci_ray.results.comparisons import vanilla_gain
from kdci_ray.results.paired import CELL_ALIGN, CELL_HEADER, RULE, cells
from kdci_ray.results.trials import rows_from_sweep, trial_reports

__all__ = [
    "DASH", "ROW_COLUMNS", "SUMMARY_COLUMNS", "is_missing", "markdown_table", "pct", "pp_delta",
    "rows_from_sweep", "searched_columns", "sorted_rows", "summarize", "text_cell",
    "to_markdown", "trial_reports", "with_smoke_note", "write_tables",
]  # fmt: skip

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


def _numbers(group: pd.DataFrame, column: str) -> pd.Series:
    """``column`` as numbers (all NaN when the frame has no such column)."""
    if column not in group.columns:
        return pd.Series(math.nan, index=group.index, dtype=float)
    return pd.to_numeric(group[column], errors="coerce")


def _group_row(keys: dict[str, Any], group: pd.DataFrame) -> dict[str, Any]:
    acc, acc_kdci = _numbers(group, "acc"), _numbers(group, "acc_kdci")
    return {
        **keys,
        "n": int(acc.notna().sum()),
        "acc_mean": _mean(acc),
        "acc_std": _std(acc),
        "acc_kdci_mean": _mean(acc_kdci),
        "acc_kdci_std": _std(acc_kdci),
        "teacher_acc": _mean(_numbers(group, "teacher_acc")),
        **{f"{m}_mean": _mean(_numbers(group, m)) for m in MEAN_METRICS},
    }


def _deltas(out: pd.DataFrame, extra: list[str]) -> list[float]:
    """``delta_acc`` of each summary row (see ``summarize``)."""
    by = extra + ["method", "kdci"]
    side = {tuple(group_key(r[c]) for c in by): r["acc_mean"] for _, r in out.iterrows()}
    arms = arm_columns(out, line_columns(out))
    vanilla = {c: group_key(out.loc[~out["kdci"], c].iloc[0]) for c in arms}

    def delta(r: pd.Series) -> float:
        base = tuple(vanilla.get(c, group_key(r[c])) for c in extra + ["method"])
        if arms:  # each KDCI arm against the vanilla one; the vanilla arm is their reference
            return float(r["acc_mean"] - side.get((*base, False), math.nan)) if r["kdci"] \
                else math.nan
        return float(side.get((*base, True), math.nan) - side.get((*base, False), math.nan))

    return [delta(r) for _, r in out.iterrows()]


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (searched columns..., method, kdci): ``n``, acc/acc_kdci mean and std, teacher
    acc, delta_acc, and the means of ``MEAN_METRICS`` (``<metric>_mean``; NaN where unreported).

    ``n`` counts trials with a measured ``acc`` (trials without any result are left out of
    every statistic). Stds are sample stds (ddof=1) over those trials; a group of one trial
    gets std 0.0, a group with none NaN. ``delta_acc`` (same on both rows of a method) is
    mean acc with KDCI minus mean acc without, at the same searched values; NaN when either
    side is missing. When a searched column holds the KDCI arms (``arm_columns``), each KDCI-on
    row's ``delta_acc`` is its mean acc minus that of the vanilla arm at the same values of the
    other columns, and the vanilla arm's own ``delta_acc`` is NaN.
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
    out = sort_frame(pd.DataFrame.from_records(records), by)
    out["delta_acc"] = _deltas(out, extra)
    return out[columns].reset_index(drop=True)


# ----------------------------------------------------------------------------- markdown


def _shown_columns(summary: pd.DataFrame) -> list[str]:
    """Searched columns worth a Markdown column: not a copy of ``method`` (a schedule case group
    named after its method)."""
    method = summary["method"].astype(str)
    return [c for c in searched_columns(summary) if not summary[c].astype(str).equals(method)]


def _accuracy_cells(r: pd.Series) -> list[str]:
    return [
        r["method"],
        "on" if r["kdci"] else "off",
        str(int(r["n"])),
        pct(r["acc_mean"], r["acc_std"]),
        pct(r["acc_kdci_mean"], r["acc_kdci_std"]) if r["kdci"] else DASH,
        pct(r["teacher_acc"]),
    ]


def _reported(summary: pd.DataFrame, columns: list[str]) -> bool:
    return any(c in summary.columns and summary[c].notna().any() for c in columns)


def _metric_columns(summary: pd.DataFrame) -> tuple[list[str], Any]:
    """Headers and a row -> cells function for the recalls / prior ratio, where reported."""
    recalls = [m for m in ("recall_min", "recall_rare")
               if _reported(summary, [f"{m}_mean", f"{m}_kdci_mean"])]
    prior = _reported(summary, ["prior_ratio_mean"])
    header = [f"{m.replace('_', ' ')} (%) raw / comp." for m in recalls]
    header += ["prior ratio"] if prior else []

    def metric_cells(r: pd.Series) -> list[str]:
        out = [pct(r[f"{m}_mean"]) + (f" / {pct(r[f'{m}_kdci_mean'])}" if r["kdci"] else "")
               for m in recalls]
        return out + ([ratio(r["prior_ratio_mean"])] if prior else [])

    return header, metric_cells


def _delta_rows(summary: pd.DataFrame, extra: list[str], arms: list[str]) -> pd.DataFrame:
    """The rows of the "KDCI − vanilla" table: each KDCI arm when ``arms`` (the vanilla arm is
    their reference), else one per (searched values, method)."""
    if arms:
        return summary[summary["kdci"].astype(bool)]
    return summary.drop_duplicates(extra + ["method"])


def to_markdown(summary: pd.DataFrame, title: str, rows: pd.DataFrame | None = None) -> str:
    """Markdown: a per-(searched values, method, KDCI) accuracy table and a "KDCI − vanilla" table.

    Accuracies are percentages (mean ± sample std over trials); deltas are percentage points.
    With the per-trial ``rows`` the "KDCI − vanilla" table also has the paired difference over
    seeds with its 95% Student-t interval (``kdci_ray.results.paired``).
    """
    extra = _shown_columns(summary)
    arms = arm_columns(summary, line_columns(summary)) if len(summary) else []
    metric_header, metric_cells = _metric_columns(summary)
    lines = [f"## {title}", ""]
    lines += markdown_table(
        extra + ["method", "KDCI", "n", "acc (%)", "acc_kdci (%)", "teacher acc (%)",
                 *metric_header],
        ["---"] * len(extra) + ["---", "---", "---:", "---:", "---:", "---:"]
        + ["---:"] * len(metric_header),
        [[text_cell(r[c]) for c in extra] + _accuracy_cells(r) + metric_cells(r)
         for _, r in summary.iterrows()],
    )
    paired = rows is not None and not rows.empty
    body = []
    for _, r in _delta_rows(summary, extra, arms).iterrows():
        keys = {**{c: r[c] for c in extra}, "method": r["method"]}
        stats = cells(vanilla_gain(rows, keys, arms)) if paired else []
        body.append([text_cell(r[c]) for c in extra] + [r["method"], pp_delta(r["delta_acc"])]
                    + stats)
    lines += ["", "### KDCI − vanilla", ""]
    lines += markdown_table(
        extra + ["method", "Δ acc"] + (CELL_HEADER if paired else []),
        ["---"] * len(extra) + ["---", "---:"] + (CELL_ALIGN if paired else []),
        body,
    )
    if paired:
        lines += ["", "Δ acc: mean acc of the KDCI arm − mean acc of the vanilla arm, over all "
                  "their trials with a result. " + RULE]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- files


SMOKE_NOTE = ("> **Smoke run** (`--smoke`): tiny schedules that only exercise the code paths "
              "(the teacher too is trained for a moment), so these numbers say nothing about "
              "the methods; run without `--smoke` for results.")


def is_smoke_sweep(sweep_dir: Path) -> bool:
    """Whether the sweep in ``sweep_dir`` ran in smoke mode: a started trial's saved
    ``config.yaml`` says ``smoke: true``, or (no trial readable yet) its ``sweep.yaml`` does."""
    import yaml

    from kdci_ray.results.record import read_record

    for path in sorted(Path(sweep_dir).glob("*/config.yaml")):
        try:
            saved = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(saved, dict):
            return saved.get("smoke") is True
    record = read_record(Path(sweep_dir)) or {}
    return any(isinstance(part := record.get(key), dict) and part.get("smoke") in (True, "true")
               for key in ("overrides", "settings"))


def with_smoke_note(markdown: str, sweep_dir: Path) -> str:
    """``markdown`` with ``SMOKE_NOTE`` first under its title line when the sweep was a smoke
    run (``is_smoke_sweep``)."""
    if not is_smoke_sweep(sweep_dir):
        return markdown
    title, _, body = markdown.partition("\n")
    return f"{title}\n\n{SMOKE_NOTE}\n{body}" if title.startswith("#") else \
        f"{SMOKE_NOTE}\n\n{markdown}"


def summary_markdown(rows: pd.DataFrame, sweep_dir: Path, title: str) -> str:
    """The text of ``summary.md`` for ``rows`` (opening with ``SMOKE_NOTE`` for a smoke
    sweep)."""
    rows = sorted_rows(rows)
    return with_smoke_note(to_markdown(summarize(rows), title, rows), Path(sweep_dir))


def write_tables(rows: pd.DataFrame, out_dir: Path, title: str) -> str:
    """Write ``summary.csv`` (per trial) and ``summary.md`` atomically; return the Markdown
    (``summary_markdown``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = summary_markdown(rows, out_dir, title)
    rows = sorted_rows(rows)
    atomic_write_text(out_dir / "summary.csv", rows.to_csv(index=False))
    atomic_write_text(out_dir / "summary.md", markdown)
    return markdown
