"""Each KDCI arm against the vanilla arm, paired by seed: raw and compensated gains, which
prediction to ship, and the gain against a numeric searched level (e.g. ``shift.imbalance``).

A *KDCI arm* is one (method, values of the other searched columns) run with KDCI on; with arm
columns (``columns.arm_columns``: a case group such as ``vanilla`` / ``control`` /
``softmax``) each of their KDCI-on values is its own arm. Its *vanilla arm* is the trials of the
same method and the same values of every other searched column with KDCI off (with arm columns:
the one value of them whose ``kdci`` is false). Differences are paired by seed (``paired``):

- raw gain: arm ``acc`` − vanilla ``acc`` (the raw student of each arm);
- compensated gain: arm ``acc_kdci`` − vanilla ``acc`` (raw logits + the KDCI adjustment);
- within the arm: ``acc_kdci`` − ``acc``, which decides what to ship: "compensated" when its
  interval lies above 0, "raw" when below 0, "either (no difference)" when it includes 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from kdci_ray.results.columns import (
    arm_columns,
    group_key,
    line_columns,
    markdown_table,
    pct,
    ratio,
    text_cell,
)
from kdci_ray.results.paired import (
    EMPTY,
    LEVEL,
    MARK,
    NA,
    RULE,
    Paired,
    ci_cell,
    compact_cell,
    mean_cell,
    paired_frames,
    sig_cell,
)

PREFERRED_LEVEL = "shift.imbalance"  # the level column of a pivot when there are several
RECALLS = ("recall_min", "recall_rare")


def split_columns(rows: pd.DataFrame) -> tuple[list[str], list[str]]:
    """``(pairing, arms)``: the searched columns both arms share values of, and the arm columns."""
    columns = line_columns(rows)
    arms = arm_columns(rows, columns)
    return [c for c in columns if c not in arms], arms


def select(rows: pd.DataFrame, keys: dict[str, Any]) -> pd.DataFrame:
    """The rows whose columns equal ``keys`` (NaN equal to NaN)."""
    mask = np.ones(len(rows), dtype=bool)
    for col, value in keys.items():
        mask &= np.array([group_key(v) == group_key(value) for v in rows[col]], dtype=bool)
    return rows[mask]


def arm_groups(rows: pd.DataFrame) -> Iterator[tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]]:
    """``(keys, arm, vanilla)`` per KDCI arm: ``keys`` its method, pairing and arm values, ``arm``
    its trials, ``vanilla`` the trials of its vanilla arm (empty when there is none)."""
    pairing, arms = split_columns(rows)
    frame = rows.assign(kdci=rows["kdci"].astype(bool))
    for values, group in frame.groupby(["method", *pairing], sort=True, dropna=False):
        keys = dict(zip(["method", *pairing], values, strict=True))
        on, off = group[group["kdci"]], group[~group["kdci"]]
        for arm_values, arm in (on.groupby(arms, sort=True, dropna=False) if arms else [((), on)]):
            arm_values = arm_values if isinstance(arm_values, tuple) else (arm_values,)
            yield {**keys, **dict(zip(arms, arm_values, strict=True))}, arm, off


def ship(within: Paired) -> str:
    """Which prediction of a KDCI arm to deploy, from ``acc_kdci − acc`` within it."""
    if not within.known:
        return f"{NA} (n < 2)"
    return {1: "compensated", -1: "raw", 0: "either (no difference)"}[within.sign]


def _mean(frame: pd.DataFrame, column: str) -> float:
    if column not in frame.columns:
        return math.nan
    values = pd.to_numeric(frame[column], errors="coerce").dropna()
    return float(values.mean()) if len(values) else math.nan


def vanilla_comparisons(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per KDCI arm: its keys, ``arm`` (a label of its arm values, ``KDCI`` without arm
    columns), ``vanilla`` (whether it has a vanilla arm), the ``Paired`` statistics ``raw``,
    ``comp`` and ``within``, ``ship``, and means: ``acc``, ``acc_kdci``, ``vanilla_acc``,
    ``<recall>`` / ``<recall>_kdci`` / ``vanilla_<recall>`` and the prior ratios."""
    pairing, arms = split_columns(rows)
    records = []
    for keys, arm, off in arm_groups(rows):
        within = paired_frames(arm, "acc_kdci", arm, "acc")
        has_off = not off.empty
        records.append({
            **keys, "arm": " · ".join(str(keys[c]) for c in arms) or "KDCI", "vanilla": has_off,
            "raw": paired_frames(arm, "acc", off, "acc") if has_off else EMPTY,
            "comp": paired_frames(arm, "acc_kdci", off, "acc") if has_off else EMPTY,
            "within": within, "ship": ship(within), "acc": _mean(arm, "acc"),
            "acc_kdci": _mean(arm, "acc_kdci"), "vanilla_acc": _mean(off, "acc"),
            **{f"{c}{s}": _mean(arm, f"{c}{s}") for c in RECALLS for s in ("", "_kdci")},
            **{f"vanilla_{c}": _mean(off, c) for c in RECALLS},
            "prior_ratio": _mean(arm, "prior_ratio"),
            "prior_ratio_train": _mean(arm, "prior_ratio_train"),
        })
    return pd.DataFrame.from_records(records, columns=None if records else
                                     ["method", *pairing, *arms, "arm", "vanilla"])


def vanilla_gain(rows: pd.DataFrame, keys: dict[str, Any], arms: list[str],
                 column: str = "acc") -> Paired:
    """``column`` of the KDCI arm at ``keys`` minus ``acc`` of its vanilla arm (the KDCI-off
    trials at ``keys`` less its ``arms`` columns), paired by seed."""
    kdci = rows["kdci"].astype(bool)
    arm = select(rows[kdci], keys)
    off = select(rows[~kdci], {c: v for c, v in keys.items() if c not in arms})
    return paired_frames(arm, column, off, "acc")


# ----------------------------------------------------------------------------- level pivot


def level_column(rows: pd.DataFrame, pairing: list[str]) -> str | None:
    """The pairing column to pivot on: numeric (not bool), no missing value, ≥ 2 values;
    ``PREFERRED_LEVEL`` when it is one, else the first."""
    numeric = []
    for col in pairing:
        values = pd.to_numeric(rows[col], errors="coerce")
        if not values.isna().any() and values.nunique() >= 2 and \
                not rows[col].map(type).eq(bool).any():
            numeric.append(col)
    return PREFERRED_LEVEL if PREFERRED_LEVEL in numeric else (numeric[0] if numeric else None)


def _level_text(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else str(value)


def gain_pivot(comps: pd.DataFrame, level: str, pairing: list[str]) -> list[str]:
    """Markdown: per method (and value of the pairing columns other than ``level``) a table of
    the compensated gain over vanilla, one row per KDCI arm, one column per ``level`` value."""
    comps = comps[comps["vanilla"]]
    levels = sorted(set(comps[level]), key=float)
    others = [c for c in pairing if c != level]
    lines: list[str] = []
    for values, part in comps.groupby(["method", *others], sort=True, dropna=False):
        title = " · ".join([str(values[0]), *(f"{c}={v}" for c, v in zip(others, values[1:],
                                                                         strict=True))])
        body = []
        for arm, arm_part in part.groupby("arm", sort=False):
            by_level = {group_key(r[level]): r["comp"] for _, r in arm_part.iterrows()}
            body.append([arm, *(compact_cell(by_level.get(group_key(v), EMPTY)) for v in levels)])
        lines += [f"**{title}**", ""]
        lines += markdown_table(["KDCI arm", *(f"{level}={_level_text(v)}" for v in levels)],
                                ["---"] + ["---:"] * len(levels), body) + [""]
    return lines


# ----------------------------------------------------------------------------- markdown


def _key_cells(r: pd.Series, keys: list[str]) -> list[str]:
    return [text_cell(r[c]) for c in keys]


def _with_n(p: Paired, n: int) -> str:
    """The mean cell of ``p``, noting its own n where it differs from the row's ``n``."""
    return mean_cell(p) + (f" (n = {p.n})" if p.n != n else "")


def gains_table(comps: pd.DataFrame, keys: list[str]) -> list[str]:
    """Raw and compensated gain over vanilla of each KDCI arm that has a vanilla arm."""
    body = []
    for _, r in comps[comps["vanilla"]].iterrows():
        raw, comp = r["raw"], r["comp"]
        body.append([*_key_cells(r, keys), str(raw.n), str(raw.dropped), mean_cell(raw),
                     ci_cell(raw), sig_cell(raw), _with_n(comp, raw.n), ci_cell(comp),
                     sig_cell(comp)])
    ci = f"{LEVEL:.0%} CI"
    return markdown_table(
        [*keys, "n", "unpaired", "raw gain", ci, "sig.", "compensated gain", ci, "sig."],
        ["---"] * len(keys) + ["---:", "---:", "---:", "---:", "---", "---:", "---:", "---"],
        body)


def _present(comps: pd.DataFrame, columns: list[str]) -> bool:
    return any(c in comps.columns and comps[c].notna().any() for c in columns)


def ship_table(comps: pd.DataFrame, keys: list[str]) -> list[str]:
    """Per KDCI arm: ``acc_kdci − acc`` with its interval, what to ship, and the means of the
    recalls (vanilla / raw / compensated) and prior ratios (test / training) where reported."""
    recalls = [c for c in RECALLS if _present(comps, [c, f"{c}_kdci", f"vanilla_{c}"])]
    ratios = _present(comps, ["prior_ratio", "prior_ratio_train"])
    header = [*keys, "n", "acc (%)", "acc_kdci (%)", "acc_kdci − acc", f"{LEVEL:.0%} CI",
              "sig.", "ship"]
    header += [f"{c.replace('_', ' ')} (%): vanilla / raw / comp." for c in recalls]
    header += ["prior ratio: test / train"] if ratios else []
    body = []
    for _, r in comps.iterrows():
        w = r["within"]
        row = [*_key_cells(r, keys), str(w.n), pct(r["acc"]), pct(r["acc_kdci"]), mean_cell(w),
               ci_cell(w), sig_cell(w), r["ship"]]
        row += [" / ".join(pct(r[f]) for f in (f"vanilla_{c}", c, f"{c}_kdci")) for c in recalls]
        row += [f"{ratio(r['prior_ratio'])} / {ratio(r['prior_ratio_train'])}"] if ratios else []
        body.append(row)
    align = ["---"] * len(keys) + ["---:"] * 5 + ["---", "---"] + ["---:"] * (
        len(header) - len(keys) - 7)
    return markdown_table(header, align, body)


_INTRO = (
    "Each KDCI arm against its vanilla arm (KDCI off, same method and same values of every other "
    "searched column). Raw gain: arm `acc` − vanilla `acc`; compensated gain: arm `acc_kdci` "
    "(raw logits + the KDCI adjustment) − vanilla `acc`; both in pp. ")
_SHIP = ("Ship: which prediction of the arm to deploy, from `acc_kdci − acc` within it: "
         "*compensated* when its interval lies above 0, *raw* when below 0, *either (no "
         "difference)* when it includes 0 (then the raw prediction is as good). Recalls are means "
         "over the arm's trials (vanilla: the vanilla arm's); prior ratio: mean ‖prior‖/‖logits‖ "
         "of the adjustment on the test set / over training.")


def comparison_section(rows: pd.DataFrame) -> list[str]:
    """The report's section on the KDCI arms (``[]`` when no trial ran with KDCI)."""
    if rows.empty or not rows["kdci"].astype(bool).any():
        return []
    pairing, arms = split_columns(rows)
    comps = vanilla_comparisons(rows)
    keys = ["method", *pairing, *arms]
    lines = ["## KDCI arms, paired by seed", ""]
    if comps["vanilla"].any():
        lines += [_INTRO + RULE, "", *gains_table(comps, keys), ""]
    lines += ["### Raw or compensated prediction", "", _SHIP, "", *ship_table(comps, keys), ""]
    level = level_column(rows, pairing)
    if level is not None and comps["vanilla"].any():
        lines += [f"### Compensated gain vs {level}", "",
                  f"Compensated gain over vanilla (arm `acc_kdci` − vanilla `acc`, pp) with its "
                  f"paired {LEVEL:.0%} CI; {MARK}: the interval excludes 0.", ""]
        lines += gain_pivot(comps, level, pairing)
    return lines
