"""A sweep's report: learning curves, KDCI gain, accuracy-vs-searched-value plots, ``report.md``.

``write_report`` runs after ``write_tables`` (it embeds the summary Markdown that returns) and
writes next to ``summary.md``:

- ``curves.png``: test accuracy (``eval/acc``, the raw student) against round, one panel per
  method, one line per KDCI setting (and per value of the other searched columns), mean over
  seeds with a ± std band. Read from every trial's reports (``table.trial_reports``) by
  ``read_curves``.
- ``kdci_gain.png``: mean final acc with KDCI minus without, per method, error bar as defined in
  ``gain_error``; not written when no method ran both ways.
- ``acc_vs_<key>.png``: ``kdci_ray.results.plots.write_plots`` (numeric searched key, ≥ 3 values).
- ``report.md``: a smoke sweep's note that its numbers mean nothing (``SMOKE_NOTE``), then a
  headline (winner, margin against seed noise, best/worst KDCI gain, noise; differences also
  paired by seed with a 95% interval, ``kdci_ray.results.paired``), the figures with captions,
  each KDCI arm against vanilla (raw / compensated gain, what to ship, gain vs a numeric level:
  ``kdci_ray.results.comparisons``), the summary table, a per-trial table and the unfinished
  trials.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import pandas as pd

from kdci_ray.atomic import atomic_write_text
from kdci_ray.results.columns import (
    DASH,
    arm_columns,
    is_missing,
    line_columns,
    markdown_table,
    pct,
    pp_delta,
    searched_columns,
    sorted_rows,
    text_cell,
)
from kdci_ray.results.columns import label as _label
from kdci_ray.results.comparisons import comparison_section, select
from kdci_ray.results.paired import CELL_ALIGN, CELL_HEADER, cells, inline, paired_frames
from kdci_ray.results.plots import plot_curves, plot_gain, write_plots
from kdci_ray.results.shift_readings import write_readings
from kdci_ray.results.table import SMOKE_NOTE, is_smoke_sweep, summarize, trial_reports

CURVE_COLUMNS = ["trial", "method", "kdci", "seed", "round", "step", "eval_acc", "eval_acc_kdci"]
GAIN_COLUMNS = ["label", "method", "gain", "err", "paired", "n_on", "n_off", "stat"]
REPORT_FILE = "report.md"
CURVES_FILE = "curves.png"
GAIN_FILE = "kdci_gain.png"

# ----------------------------------------------------------------------------- curves


def _number(value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else math.nan


def trial_curve(reports: list[dict[str, Any]]) -> pd.DataFrame:
    """``round, step, eval_acc, eval_acc_kdci`` per round, sorted by round. A round reported
    more than once (a trial resumed after an interruption reports its rounds again) keeps its
    LAST report; reports without a numeric ``round`` are ignored."""
    records = [
        {"round": _number(r.get("round")), "step": _number(r.get("step")),
         "eval_acc": _number(r.get("eval/acc")), "eval_acc_kdci": _number(r.get("eval/acc_kdci"))}
        for r in reports
    ]
    frame = pd.DataFrame.from_records(records, columns=CURVE_COLUMNS[4:])
    frame = frame.dropna(subset=["round"]).drop_duplicates("round", keep="last")
    return frame.sort_values("round", kind="stable").reset_index(drop=True)


def read_curves(sweep_dir: Path, rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Long table of every trial's reports: ``CURVE_COLUMNS`` plus the searched columns of
    ``rows`` (default: ``rows_from_sweep(sweep_dir)``), one row per (trial, round), last report
    of a repeated round, trials in ``sorted_rows`` order. ``eval_acc_kdci`` is NaN where KDCI is
    off. Trials without a readable report have no row."""
    if rows is None:
        from kdci_ray.results.table import rows_from_sweep

        rows = rows_from_sweep(sweep_dir)
    extra = searched_columns(rows)
    parts = []
    for _, row in sorted_rows(rows).iterrows():
        curve = trial_curve(trial_reports(Path(sweep_dir) / str(row["trial"])))
        if curve.empty:
            continue
        meta = {c: row[c] for c in ["trial", "method", "kdci", "seed", *extra]}
        meta["kdci"] = bool(meta["kdci"])
        parts.append(curve.assign(**meta))
    columns = CURVE_COLUMNS + extra
    if not parts:
        return pd.DataFrame(columns=columns)
    frame = pd.concat(parts, ignore_index=True)[columns]
    frame.loc[~frame["kdci"], "eval_acc_kdci"] = math.nan
    return frame


# ----------------------------------------------------------------------------- KDCI gain


def _sample_std(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) >= 2 else math.nan


def gain_error(on: pd.Series, off: pd.Series) -> tuple[float, bool]:
    """``(error, paired)`` of the gain ``mean(on) - mean(off)``; ``on`` / ``off`` are final
    accuracies indexed by seed (no NaN).

    Paired (both arms ran exactly the same seeds, once each): the sample std (ddof=1) of the
    per-seed differences ``on[s] - off[s]``. Otherwise: ``sqrt(s_on² + s_off²)`` from the arms'
    sample stds, the std of the difference of one independent run of each arm. Both are a
    spread over seeds on the same scale as the tables' "± std" (not a standard error of the
    mean gain). NaN when fewer than two differences / runs per arm are there to measure it."""
    seeds_match = on.index.is_unique and off.index.is_unique and set(on.index) == set(off.index)
    if seeds_match:
        return _sample_std(on - off.reindex(on.index)), True
    return math.sqrt(_sample_std(on) ** 2 + _sample_std(off) ** 2), False


def _final_acc(group: pd.DataFrame) -> pd.Series:
    acc = pd.to_numeric(group["acc"], errors="coerce")
    return pd.Series(acc.to_numpy(), index=group["seed"].to_numpy()).dropna()


def _gain_record(method: str, keys: dict[str, Any], on: pd.DataFrame,
                 off: pd.DataFrame) -> dict[str, Any] | None:
    on_acc, off_acc = _final_acc(on), _final_acc(off)
    if on_acc.empty or off_acc.empty:
        return None
    err, paired = gain_error(on_acc, off_acc)
    series = _label(keys, list(keys))
    return {
        "label": f"{method}\n{series}" if series else method, "method": method, **keys,
        "gain": float(on_acc.mean() - off_acc.mean()), "err": err, "paired": paired,
        "n_on": len(on_acc), "n_off": len(off_acc), "stat": paired_frames(on, "acc", off, "acc"),
    }


def kdci_gains(rows: pd.DataFrame) -> pd.DataFrame:
    """KDCI gain per method (and per value of the other searched columns): mean final ``acc``
    with KDCI minus without, in accuracy units, with ``err`` from ``gain_error`` and ``stat``
    the paired difference over seeds (``kdci_ray.results.paired.Paired``).

    Only (method, values) that have measured trials in both arms get a row. Columns of
    ``arm_columns`` (a case group) do not have to match between the arms: each of their KDCI-on
    values is compared with the one vanilla value."""
    columns = line_columns(rows)
    arms = arm_columns(rows, columns)
    pairing = [c for c in columns if c not in arms]
    frame = rows.assign(kdci=rows["kdci"].astype(bool))
    records = []
    for values, group in frame.groupby(["method", *pairing], sort=True, dropna=False):
        method, *pair_values = values
        off = group[~group["kdci"]]
        on_groups = group[group["kdci"]].groupby(arms, sort=True, dropna=False) if arms else (
            [((), group[group["kdci"]])])
        for arm_values, on in on_groups:
            arm_values = arm_values if isinstance(arm_values, tuple) else (arm_values,)
            keys = dict(zip(pairing + arms, [*pair_values, *arm_values], strict=True))
            record = _gain_record(str(method), keys, on, off)
            if record is not None:
                records.append(record)
    return pd.DataFrame.from_records(records, columns=GAIN_COLUMNS[:2] + columns
                                     + GAIN_COLUMNS[2:])


# ----------------------------------------------------------------------------- headline


def _setting(row: pd.Series, columns: list[str]) -> str:
    """``**fast**, KDCI on (kdci.k=8)``."""
    values = _label(row, columns)
    text = f"**{row['method']}**, KDCI {'on' if row['kdci'] else 'off'}"
    return f"{text} ({values})" if values else text


def _acc_text(row: pd.Series) -> str:
    n = int(row["n"])
    return f"{pct(row['acc_mean'], row['acc_std'])} % (n = {n} seed{'s' if n != 1 else ''})"


def _winner_text(groups: pd.DataFrame, columns: list[str]) -> str:
    best = groups.iloc[0]
    text = f"Winner (highest mean acc): {_setting(best, columns)} with {_acc_text(best)}."
    if len(groups) < 2:
        return text + " No other setting has a result to compare with."
    second = groups.iloc[1]
    margin = float(best["acc_mean"] - second["acc_mean"])
    lead = "ties with" if f"{100 * margin:.2f}" == "0.00" else "leads"
    text += (f" It {lead} the runner-up, {_setting(second, columns)} with {_acc_text(second)}: "
             f"margin {100 * margin:.2f} pp.")
    if int(best["n"]) < 2 or int(second["n"]) < 2:
        return text + " At least one of them has a single seed, so the seed noise is unknown."
    noise = max(float(best["acc_std"]), float(second["acc_std"]))
    if margin <= noise:
        return text + (f" That margin is within the seed noise (not larger than the larger of "
                       f"the two stds, {100 * noise:.2f} pp): no clear winner.")
    return text + (f" That margin is larger than the seed noise (the larger of the two stds "
                   f"is {100 * noise:.2f} pp).")


def _winner_paired(rows: pd.DataFrame, groups: pd.DataFrame) -> str:
    """Winner − runner-up paired by seed (``""`` without a runner-up)."""
    if len(groups) < 2:
        return ""
    rows = rows.assign(kdci=rows["kdci"].astype(bool))
    keys = [*searched_columns(rows), "method", "kdci"]
    best, second = (select(rows, {c: g[c] for c in keys}) for g in (groups.iloc[0],
                                                                    groups.iloc[1]))
    stat = paired_frames(best, "acc", second, "acc")
    verdict = {True: "; the interval excludes 0", False: "; the interval includes 0"}
    return (f" Paired by seed, winner − runner-up: {inline(stat)}"
            f"{verdict.get(stat.excludes_zero, '')}.")


def _gain_item(row: pd.Series) -> str:
    series = row["label"].replace("\n", " (", 1) + ")" if "\n" in row["label"] else row["label"]
    err = "" if is_missing(row["err"]) else f" ± {100 * row['err']:.2f}"
    return f"{series}, {100 * row['gain']:+.2f}{err} pp (paired: {inline(row['stat'])})"


def _gain_text(gains: pd.DataFrame) -> str:
    if gains.empty:
        return "No method ran both with and without KDCI, so there is no KDCI gain to report."
    ordered = gains.sort_values("gain", ascending=False, kind="stable")
    best, worst = ordered.iloc[0], ordered.iloc[-1]
    if len(gains) == 1:
        return f"KDCI gain (KDCI − vanilla, final acc): {_gain_item(best)}."
    positive = int((gains["gain"] > 0).sum())
    return (f"KDCI gain (KDCI − vanilla, final acc): best {_gain_item(best)}, worst "
            f"{_gain_item(worst)}; KDCI helped in {positive} of {len(gains)} comparisons.")


def _noise_text(groups: pd.DataFrame) -> str:
    stds = groups.loc[groups["n"] >= 2, "acc_std"].dropna()
    if stds.empty:
        return "No setting ran more than one seed, so the seed noise is unknown."
    return (f"Seed noise: the median std of acc across the {len(stds)} settings with ≥ 2 seeds is "
            f"{100 * statistics.median(stds):.2f} pp (range {100 * stds.min():.2f}–"
            f"{100 * stds.max():.2f} pp).")


def headline(rows: pd.DataFrame, gains: pd.DataFrame) -> str:
    """The report's opening paragraph: winner and margin against seed noise (and paired by seed),
    best and worst KDCI gain (with their paired intervals), median std across settings."""
    groups = summarize(rows)
    groups = groups[groups["n"] > 0].sort_values("acc_mean", ascending=False, kind="stable")
    if groups.empty:
        return "No trial has reported a test accuracy yet."
    columns = line_columns(rows)
    parts = [_winner_text(groups, columns) + _winner_paired(rows, groups), _gain_text(gains),
             _noise_text(groups)]
    return " ".join(parts)


# ----------------------------------------------------------------------------- markdown


_RUN_LOGS = ("resumes", "failures")  # counts of the Ray Train adapter's logs, when present


def trial_table(rows: pd.DataFrame) -> list[str]:
    """Markdown lines: one row per trial (searched values, method, KDCI, seed, acc, acc_kdci,
    rounds, finished, and resumes / failures when any trial has some)."""
    rows = sorted_rows(rows)
    extra = line_columns(rows)
    logs = [c for c in _RUN_LOGS
            if c in rows.columns and pd.to_numeric(rows[c], errors="coerce").fillna(0).any()]
    body = [
        [str(r["trial"]), *[text_cell(r[c]) for c in extra], str(r["method"]),
         "on" if r["kdci"] else "off", str(r["seed"]), pct(r["acc"]),
         pct(r["acc_kdci"]) if r["kdci"] else DASH, str(r["rounds_done"]),
         *[text_cell(r[c]) for c in logs], "yes" if r["finished"] else "no"]
        for _, r in rows.iterrows()
    ]
    return markdown_table(
        ["trial", *extra, "method", "KDCI", "seed", "acc (%)", "acc_kdci (%)", "rounds", *logs,
         "finished"],
        ["---"] * (len(extra) + 3) + ["---:"] * (4 + len(logs)) + ["---"],
        body,
    )


def unfinished(rows: pd.DataFrame) -> pd.DataFrame:
    """Trials not finished (``finished`` false) or without a measured ``acc``."""
    acc = pd.to_numeric(rows["acc"], errors="coerce")
    return sorted_rows(rows[~rows["finished"].astype(bool) | acc.isna()])


def _unfinished_lines(rows: pd.DataFrame) -> list[str]:
    lines = []
    for _, r in unfinished(rows).iterrows():
        result = f"stopped: {why}" if isinstance(why := r.get("stopped"), str) and why else \
            "no result yet" if is_missing(r["acc"]) else f"last acc {pct(r['acc'])} %"
        lines.append(f"- `{r['trial']}` ({r['method']}, KDCI {'on' if r['kdci'] else 'off'}, "
                     f"seed {r['seed']}): {int(r['rounds_done'])} rounds reported, {result}")
    return lines


def _gain_table(gains: pd.DataFrame) -> list[str]:
    body = [
        [row["label"].replace("\n", " · "), pp_delta(row["gain"]),
         DASH if is_missing(row["err"]) else f"{100 * row['err']:.2f} pp",
         f"{row['n_on']} / {row['n_off']}", "paired" if row["paired"] else "unpaired",
         *cells(row["stat"])]
        for _, row in gains.iterrows()
    ]
    return markdown_table(["comparison", "gain", "error bar", "n on / off", "seeds", *CELL_HEADER],
                          ["---", "---:", "---:", "---:", "---", *CELL_ALIGN], body)


GAIN_RULE = ("error bar: when both arms ran the same seeds, the sample std of the per-seed "
             "differences; otherwise sqrt(s_on² + s_off²) from the two arms' sample stds")


def _figure(path: Path, alt: str, caption: str) -> list[str]:
    return [f"![{alt}]({path.name})", "", f"*{caption}*", ""]


def _figures(paths: dict[str, Path | None], searched: list[Path], gains: pd.DataFrame
             ) -> list[str]:
    lines = ["## Figures", ""]
    if paths["curves"] is not None:
        lines += _figure(paths["curves"], "test accuracy over training",
                         "Test accuracy (raw student, `eval/acc`) against training round, one "
                         "panel per method: mean over seeds, band ± sample std; vanilla dashed, "
                         "KDCI solid.")
    if paths["gain"] is not None:
        lines += _figure(paths["gain"], "KDCI gain",
                         f"KDCI gain = mean final acc with KDCI − without, in pp ({GAIN_RULE}).")
        lines += _gain_table(gains) + ["", "Paired Δ, 95% CI, sig., n, unpaired: as defined under "
                                       "\"KDCI arms, paired by seed\" below.", ""]
    for path in searched:
        key = path.stem.removeprefix("acc_vs_")
        lines += _figure(path, f"accuracy vs {key}",
                         f"Final test accuracy against `{key}` (mean ± sample std over seeds).")
    return lines if len(lines) > 2 else []


def _summary_section(summary_markdown: str) -> list[str]:
    """The tables' Markdown under a "Summary" heading (its own ``## title`` line replaced, and
    the smoke note, which the report states first)."""
    lines = [line for line in summary_markdown.rstrip("\n").splitlines() if line != SMOKE_NOTE]
    if lines and lines[0].startswith("## "):
        lines = lines[1:]
    while len(lines) > 1 and lines[0] == lines[1] == "":
        lines = lines[1:]
    return ["## Summary", *lines, ""]


def report_markdown(title: str, rows: pd.DataFrame, summary_markdown: str, gains: pd.DataFrame,
                    paths: dict[str, Path | None], searched: list[Path],
                    smoke: bool = False, readings: list[str] | None = None) -> str:
    """The text of ``report.md``: a smoke sweep's says so first; ``readings`` follow comparisons."""
    lines = [f"# {title}", "", *([SMOKE_NOTE, ""] if smoke else []), headline(rows, gains), ""]
    lines += _figures(paths, searched, gains)
    lines += comparison_section(rows)
    lines += readings or []
    lines += _summary_section(summary_markdown)
    lines += ["## Trials", "", *trial_table(rows), ""]
    left = _unfinished_lines(rows)
    if left:
        lines += ["## Unfinished trials", "", *left, ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- entry point


def write_report(sweep_dir: Path, rows: pd.DataFrame, summary_markdown: str,
                 title: str) -> list[Path]:
    """Write ``curves.png``, ``kdci_gain.png`` (when a method ran both ways), the
    ``acc_vs_<key>.png`` of ``write_plots`` and ``report.md`` into ``sweep_dir``; return them.

    ``rows`` is ``rows_from_sweep(sweep_dir)``, ``summary_markdown`` what ``write_tables``
    returned for it."""
    sweep_dir = Path(sweep_dir)
    written: list[Path] = []
    paths: dict[str, Path | None] = {"curves": None, "gain": None}
    gains = kdci_gains(rows) if len(rows) else pd.DataFrame(columns=GAIN_COLUMNS)
    if len(rows):
        curves = read_curves(sweep_dir, rows)
        columns = line_columns(rows)
        curves["series"] = [_label(r, columns) for _, r in curves.iterrows()]
        paths["curves"] = plot_curves(curves, sweep_dir / CURVES_FILE, title=f"{title}: test "
                                      "accuracy over training (mean ± std over seeds)")
        paths["gain"] = plot_gain(gains, sweep_dir / GAIN_FILE)
    searched = write_plots(rows, sweep_dir) if len(rows) else []
    written += [p for p in paths.values() if p is not None] + searched
    text = report_markdown(title, rows, summary_markdown, gains, paths, searched,
                           smoke=is_smoke_sweep(sweep_dir),
                           readings=write_readings(sweep_dir, rows))
    written.append(atomic_write_text(sweep_dir / REPORT_FILE, text))
    return written
