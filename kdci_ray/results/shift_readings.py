"""The controlled-shift benchmark's verdicts: every reading's paired gain per method and level, and
the pass rule written in ``tune_configs/kdci_shift.yaml``'s header before the run (issue 25).

A sweep qualifies when it has a ``shift.imbalance`` column, an ``arm`` case column with a
``vanilla`` value, and its vanilla trials report the post-hoc readings (``shift.readings``). Per
(method, level), with ``n`` paired seeds:

- a post-hoc reading ``r`` of the vanilla student (``kdci_ray.train.readings``): ``acc_r - acc`` of
  the same trial;
- a trained arm (a KDCI reading, a balanced-KD arm): its deployable prediction (``acc_kdci`` for a
  KDCI arm, else ``acc``) minus the vanilla ``acc`` of the same seed.

Each gain is a mean and a 95% t-interval in pp (``paired``). The oracle (fitted on the test
labels) is a ceiling, reported with no verdict; "of oracle" is a reading's mean gain over the
oracle's. The realised prior (largest over smallest share of the teacher's arg-max histogram of
the KD batches) is reported per method, level and arm.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from kdci_ray.results.columns import markdown_table, pct
from kdci_ray.results.paired import Paired, paired
from kdci_ray.results.trials import trial_reports

LEVEL = "shift.imbalance"
ARM = "arm"
VANILLA = "vanilla"
POSTHOC = ("control", "em", "teacher_ref", "teacher_ref_scalar")
ORACLE = "oracle"
EXTRA_KEYS = {f"acc_{r}": f"eval/acc_{r}" for r in (*POSTHOC, ORACLE)} | {
    "data_prior_ratio": "shift/prior_ratio", "data_prior_ratio_em": "shift/prior_ratio_em",
    "tau": "shift/tau", "bias_norm": "shift/bias_norm"}
# the pass rule (the config's header says the same, in words, written before the run)
SHIFTED = (8.0, 64.0)  # DFND: interval above 0
UNSHIFTED = 1.0  # DFND: interval contains 0 and |mean| < NULL_PP
NULL_PP = 0.3
FAST_FLOOR_PP = -0.5  # Fast: mean >= this at every level


def qualifies(rows: pd.DataFrame) -> bool:
    return LEVEL in rows.columns and ARM in rows.columns and (rows[ARM] == VANILLA).any()


def with_readings(sweep_dir: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` plus each trial's final ``EXTRA_KEYS`` (NaN where not reported)."""
    frame = rows.copy()
    for col, key in EXTRA_KEYS.items():
        values = []
        for trial in frame["trial"]:
            reports = trial_reports(Path(sweep_dir) / trial)
            last = reports[-1] if reports else {}
            value = last.get(key)
            values.append(float(value) if isinstance(value, (int, float)) else math.nan)
        frame[col] = values
    return frame


def _method_label(frame: pd.DataFrame) -> str:
    return "schedule" if "schedule" in frame.columns else "method"


def gains(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, level, reading): the paired gain (``method``: the schedule case's
    name where there is one)."""
    method_col = _method_label(frame)
    records = []
    for (method, level), cell in frame.groupby([method_col, LEVEL], sort=True):
        vanilla = cell[cell[ARM] == VANILLA].set_index("seed")
        base = vanilla["acc"]
        for reading in (*POSTHOC, ORACLE):
            col = f"acc_{reading}"
            if col in vanilla and vanilla[col].notna().any():
                records.append(_record(method, level, reading, "post hoc",
                                       paired(vanilla[col], base)))
        for arm, trials in cell[cell[ARM] != VANILLA].groupby(ARM, sort=True):
            trials = trials.set_index("seed")
            kdci = bool(trials["kdci"].all())
            shipped = trials["acc_kdci"] if kdci else trials["acc"]
            records.append(_record(method, level, str(arm), "trained",
                                   paired(shipped, base)))
    out = pd.DataFrame.from_records(records)
    if len(out):
        oracle = out[out["reading"] == ORACLE].set_index(["method", LEVEL])["mean_pp"]
        out["of_oracle"] = [
            (r.mean_pp / oracle.get((r["method"], r[LEVEL]), math.nan))
            if r.reading != ORACLE else math.nan for _, r in out.iterrows()]
    return out


def _record(method: str, level: float, reading: str, kind: str, p: Paired) -> dict:
    return {"method": method, LEVEL: float(level), "reading": reading, "kind": kind, "n": p.n,
            "mean_pp": 100 * p.mean, "low_pp": 100 * p.lo, "high_pp": 100 * p.hi}


def verdict(rows: pd.DataFrame, method_col: str = "method") -> tuple[bool | None, str]:
    """The pass rule for one reading's rows (every method and level): ``(passed, why)``;
    ``passed`` None when a needed cell is missing."""
    why, ok = [], True
    for _, r in rows.iterrows():
        method, level = str(r[method_col]).lower(), float(r[LEVEL])
        if not math.isfinite(r["low_pp"]):
            return None, f"{method} r={level:g}: fewer than 2 seeds"
        if method.startswith("dfnd") and level in SHIFTED and not r["low_pp"] > 0:
            ok = False
            why.append(f"DFND r={level:g}: interval not above 0")
        if method.startswith("dfnd") and level == UNSHIFTED and not (
                r["low_pp"] <= 0 <= r["high_pp"] and abs(r["mean_pp"]) < NULL_PP):
            ok = False
            why.append(f"DFND r=1: not a null effect (|mean| < {NULL_PP} pp, interval with 0)")
        if method.startswith("fast") and r["mean_pp"] < FAST_FLOOR_PP:
            ok = False
            why.append(f"Fast r={level:g}: mean below {FAST_FLOOR_PP} pp")
    needed = {("dfnd", x) for x in (*SHIFTED, UNSHIFTED)}
    have = {(str(m).lower()[:4], float(v)) for m, v in zip(rows[method_col], rows[LEVEL],
                                                          strict=True)}
    if not needed <= have:
        return None, "the DFND levels 1, 8 and 64 are not all in the sweep"
    return ok, "; ".join(why) or "every condition holds"


def _cell(r: pd.Series) -> str:
    if not math.isfinite(r["low_pp"]):
        return f"{r['mean_pp']:+.1f} (n = {int(r['n'])})"
    mark = "*" if r["low_pp"] > 0 or r["high_pp"] < 0 else ""
    return f"{r['mean_pp']:+.1f} [{r['low_pp']:+.1f}, {r['high_pp']:+.1f}]{mark}"


def markdown(frame: pd.DataFrame) -> list[str]:
    """The report section: gains per reading and level, the realised prior, the verdicts."""
    table = gains(frame)
    if not len(table):
        return []
    method_col = "method"
    levels = sorted(table[LEVEL].unique())
    lines = ["## Label-shift readings and the pass rule", "",
             "Gain over the vanilla student in pp, mean and 95% paired interval over seeds "
             "(`*`: excludes 0). Post hoc: the vanilla student's own corrected prediction; "
             "trained: another arm's deployable prediction against the same seed's vanilla. "
             "The oracle is fitted on the test labels: a ceiling, never shipped.", ""]
    body = []
    for (method, reading), rows in table.groupby([method_col, "reading"], sort=False):
        cells = {float(r[LEVEL]): _cell(r) for _, r in rows.iterrows()}
        share = rows["of_oracle"].mean()
        body.append([str(method), reading, rows["kind"].iloc[0],
                     *(cells.get(float(lv), "–") for lv in levels),
                     "–" if not math.isfinite(share) else f"{share:.2f}"])
    header = ["method", "reading", "kind", *(f"r = {lv:g}" for lv in levels), "of oracle"]
    lines += markdown_table(header, ["---"] * 3 + ["---:"] * (len(levels) + 1), body)
    lines += ["", "Realised prior of the KD batches (largest / smallest class share of the "
              "teacher's arg-max), mean over seeds; vanilla accuracy:", ""]
    vanilla = frame[frame[ARM] == VANILLA]
    body = []
    for (method, level), cell in vanilla.groupby([_method_label(frame), LEVEL], sort=True):
        body.append([str(method), f"{level:g}", f"{cell['data_prior_ratio'].mean():.1f}",
                     f"{cell['data_prior_ratio_em'].mean():.1f}",
                     pct(cell["acc"].mean(), cell["acc"].std())])
    lines += markdown_table(["method", "r", "realised prior ratio", "EM prior ratio",
                             "vanilla acc (%)"], ["---", "---:", "---:", "---:", "---:"], body)
    lines += ["", "Pass rule (tune_configs/kdci_shift.yaml): DFND r = 8 and 64 interval above 0; "
              f"DFND r = 1 interval containing 0 and |mean| < {NULL_PP} pp; Fast mean >= "
              f"{FAST_FLOOR_PP} pp at every level.", ""]
    body = []
    for reading, rows in table[table["reading"] != ORACLE].groupby("reading", sort=False):
        passed, why = verdict(rows, method_col)
        body.append([reading, {True: "PASS", False: "FAIL", None: "n/a"}[passed], why])
    lines += markdown_table(["reading", "verdict", "why"], ["---", "---", "---"], body)
    return lines + [""]


def write_readings(sweep_dir: Path, rows: pd.DataFrame) -> list[str]:
    """``readings.csv`` (every reading's gain per method and level) and the report section;
    nothing for a sweep that does not qualify."""
    if not len(rows) or not qualifies(rows):
        return []
    frame = with_readings(sweep_dir, rows)
    gains(frame).to_csv(Path(sweep_dir) / "readings.csv", index=False)
    return markdown(frame)
