"""Results of an SKDCGN sweep: one row per finished trial (its ``metrics.json``), the summary per
variant, each variant's paired effect against the first one, and ``report.md``.

A trial's row, its ``variant`` included, is the kind's (``kdci_ray.experiments.skdcgn.row``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from kdci_ray.atomic import atomic_write_text
from kdci_ray.experiments.skdcgn.row import METRICS_FILE
from kdci_ray.results.paired import (
    CELL_ALIGN,
    CELL_HEADER,
    RULE,
    cells,
    paired,
    per_seed,
    sig_cell,
)

COLUMNS = ["trial", "variant", "seed", "acc_biased", "acc_teacher_cf", "acc_student_cf",
           "acc_oracle", "retained_gain", "label_fidelity", "kid", "param_ratio",
           "sample_speed_ratio"]
SWAPS = ["acc_cf_STT", "acc_cf_TST", "acc_cf_TTS", "acc_cf_SST", "acc_cf_STS", "acc_cf_TSS"]
SHAPE_GAP = ["shape_acc_digits", "shape_acc_teacher_to_digits", "shape_acc_digits_to_teacher",
             "shape_acc_teacher", "shape_gap"]
FIDELITY = ["label_fidelity_teacher", "label_fidelity_shape", "label_fidelity_foreground",
            "label_fidelity_background"]
EXTRA = ["mask_iou", "l1_shape", "l1_foreground", "l1_background", *FIDELITY, "kid_std",
         "kid_floor", "kid_floor_std", *SWAPS, "acc_untrained_cf", "retained_gain_untrained",
         *SHAPE_GAP, "teacher_params", "student_params", "teacher_images_per_s",
         "student_images_per_s", "teacher_s", "students_s", "classifiers_s", "controls_s",
         "total_s"]
EFFECTS = (("acc_student_cf", "student CF"), ("acc_teacher_cf", "teacher CF"),
           ("retained_gain", "retained gain"))


def rows(sweep_dir: Path) -> pd.DataFrame:
    """One row per finished trial, the variants in the sweep's order, then by seed."""
    found = []
    for path in sorted(Path(sweep_dir).glob(f"*/{METRICS_FILE}")):
        try:
            row = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a trial writing it right now, or a damaged one: not a finished row
        if isinstance(row, dict):
            found.append({"trial": path.parent.name, **row})
    frame = pd.DataFrame(found, columns=COLUMNS + EXTRA)
    # variants in the sweep's order (the first is every paired effect's reference): the order of
    # their first trial, whose directory name ends with Tune's trial index
    index = frame["trial"].str.extract(r"_(\d+)$")[0].astype(float).fillna(float("inf"))
    first = index.groupby(frame["variant"]).transform("min")
    return (frame.assign(_first=first).sort_values(["_first", "variant", "seed"], kind="stable")
            .drop(columns="_first").reset_index(drop=True))


def _ms(values: pd.Series, pct: bool = True) -> str:
    v = values.dropna().astype(float)
    if v.empty:
        return "–"
    scale = 100.0 if pct else 1.0
    mean = v.mean() * scale
    if len(v) < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {v.std(ddof=1) * scale:.2f}"


def summary_markdown(frame: pd.DataFrame, title: str) -> str:
    """Mean ± std per variant, then each variant's paired effect against the first one."""
    lines = [f"## {title}", "",
             "| variant | n | biased (%) | teacher CF (%) | student CF (%) | oracle (%) | "
             "retained gain | label fidelity (%) | KID ×1000 | params s/t | speed s/t |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    order = list(dict.fromkeys(frame["variant"]))
    for name in order:
        g = frame[frame["variant"] == name]
        lines.append(f"| {name} | {len(g)} | {_ms(g['acc_biased'])} | "
                     f"{_ms(g['acc_teacher_cf'])} | {_ms(g['acc_student_cf'])} | "
                     f"{_ms(g['acc_oracle'])} | {_ms(g['retained_gain'], False)} | "
                     f"{_ms(g['label_fidelity'])} | {_ms(g['kid'] * 1000, False)} | "
                     f"{_ms(g['param_ratio'], False)} | {_ms(g['sample_speed_ratio'], False)} |")
    lines += controls_markdown(frame, order)
    if len(order) > 1:
        base = frame[frame["variant"] == order[0]]
        lines += ["", f"### Effect of each variant against `{order[0]}` (same seeds)", "",
                  "| variant | measure | " + " | ".join(CELL_HEADER) + " |",
                  "|---|---|" + "|".join(CELL_ALIGN) + "|"]
        for name in order[1:]:
            g = frame[frame["variant"] == name]
            for column, label in EFFECTS:
                p = paired(per_seed(g, column), per_seed(base, column))
                shown = cells(p) if column != "retained_gain" else _ratio_cells(p)
                lines.append(f"| {name} | {label} | " + " | ".join(shown) + " |")
        lines += ["", RULE]
    return "\n".join(lines) + "\n"


def _table(frame: pd.DataFrame, order: list[str], heading: str, header: list[str],
           columns: list[str], pct: list[bool], measured: list[str]) -> list[str]:
    """A mean ± std table per variant of ``columns``, or nothing when none of ``measured``
    was."""
    if frame.reindex(columns=measured).dropna(how="all").empty:
        return []
    lines = ["", heading, "", "| variant | " + " | ".join(header) + " |",
             "|---|" + "---:|" * len(header)]
    for name in order:
        g = frame[frame["variant"] == name].reindex(columns=columns)
        lines.append(f"| {name} | " + " | ".join(
            _ms(g[c], p) for c, p in zip(columns, pct, strict=True)) + " |")
    return lines


def controls_markdown(frame: pd.DataFrame, order: list[str]) -> list[str]:
    """The controls' tables (``kdci_ray.cgn.controls``), those that were measured."""
    kid = frame.reindex(columns=["kid", "kid_floor"]) * 1000
    scaled = frame.assign(kid_x1000=kid["kid"], kid_floor_x1000=kid["kid_floor"])
    lines = _table(
        scaled, order, "### Label fidelity and KID (what the students keep)",
        ["teacher (%)", "student shape (%)", "student foreground (%)",
         "student background (%)", "all students (%)", "KID ×1000", "KID floor ×1000"],
        [*FIDELITY, "label_fidelity", "kid_x1000", "kid_floor_x1000"], [True] * 5 + [False] * 2,
        FIDELITY)
    lines += _table(
        frame, order, "### Teacher/student swaps: shifted-test accuracy (%) of the classifier "
                      "trained on counterfactuals whose mechanisms (shape, foreground, "
                      "background) come from the teacher (T) or the student (S)",
        ["TTT", "STT", "TST", "TTS", "SST", "STS", "TSS", "SSS"],
        ["acc_teacher_cf", *SWAPS, "acc_student_cf"], [True] * 8, SWAPS)
    lines += _table(frame, order, "### Untrained-student control",
                    ["untrained-student CF (%)", "its retained gain", "trained student CF (%)"],
                    ["acc_untrained_cf", "retained_gain_untrained", "acc_student_cf"],
                    [True, False, True], ["acc_untrained_cf"])
    lines += _table(
        frame, order, "### Shape-domain gap: shape-only accuracy (%) on binarised masks",
        ["digits → digits", "teacher → digits", "digits → teacher", "teacher → teacher",
         "gap (pp)"], SHAPE_GAP, [True] * 5, SHAPE_GAP)
    return lines


def _ratio_cells(p: Any) -> list[str]:
    """``cells`` for a ratio (retained gain): the difference as is, not in pp."""
    if p.n == 0:
        return ["n/a", "n/a", "n/a", "0", str(p.dropped)]
    ci = f"[{p.lo:+.3f}, {p.hi:+.3f}]" if p.known else "n/a"
    return [f"{p.mean:+.3f}", ci, sig_cell(p), str(p.n), str(p.dropped)]


def summary_text(frame: pd.DataFrame, sweep_dir: Path, title: str) -> str:
    """The text of ``summary.md`` (with the smoke note of a smoke sweep)."""
    from kdci_ray.results.table import with_smoke_note

    return with_smoke_note(summary_markdown(frame, title) if len(frame) else
                           f"## {title}\n\nno finished trial yet\n", sweep_dir)


def write_all(sweep_dir: Path, title: str, log=None) -> str:
    """``summary.csv``, ``summary.md`` and ``report.md``; returns the summary Markdown."""
    from kdci_ray.results import check_writable

    frame = rows(sweep_dir)
    check_writable(sweep_dir)
    text = summary_text(frame, sweep_dir, title)
    written = [atomic_write_text(sweep_dir / "summary.csv", frame.to_csv(index=False)),
               atomic_write_text(sweep_dir / "summary.md", text)]
    started = sorted(p.parent.name for p in Path(sweep_dir).glob("*/config.yaml"))
    unfinished = [name for name in started if name not in set(frame["trial"])]
    report = [f"# {title}", "", text, "## Trials", "",
              "| trial | variant | seed | student CF (%) | retained gain |",
              "|---|---|---:|---:|---:|",
              *[f"| {r.trial} | {r.variant} | {r.seed} | {100 * float(r.acc_student_cf):.2f} | "
                f"{float(r.retained_gain):.3f} |" for r in frame.itertuples()]]
    if unfinished:
        report += ["", "## Unfinished", "", *[f"- {name}" for name in unfinished]]
    written.append(atomic_write_text(sweep_dir / "report.md", "\n".join(report) + "\n"))
    for path in written:
        if log is not None:
            log(f"wrote {path}")
    return text
