"""Paired statistics over seeds, and each KDCI arm against vanilla (kdci_ray.results.paired /
kdci_ray.results.comparisons), checked against hand-computed numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from kdci_ray.results.comparisons import (
    comparison_section,
    level_column,
    ship,
    split_columns,
    vanilla_comparisons,
)
from kdci_ray.results.paired import (
    Paired,
    cells,
    compact_cell,
    inline,
    paired,
    per_seed,
    t_interval,
)

T975 = {1: 12.706, 2: 4.303, 3: 3.182}  # Student-t 0.975 quantiles from a printed table


def test_t_interval_hand_computed() -> None:
    # differences 1, 2, 3: mean 2, sd 1, half-width t(0.975, 2) * 1 / sqrt(3) = 4.303 * 0.577
    mean, lo, hi = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert hi - mean == pytest.approx(2.484, abs=1e-3)
    assert mean - lo == pytest.approx(2.484, abs=1e-3)
    # n = 4: 0.01, 0.03, 0.02, 0.06 -> mean 0.03, sd 0.021602, half 3.182 * 0.021602 / 2
    mean, lo, hi = t_interval([0.01, 0.03, 0.02, 0.06])
    assert mean == pytest.approx(0.03)
    assert hi - mean == pytest.approx(T975[3] * 0.0216025 / 2, rel=1e-3)


def test_t_interval_needs_two_values() -> None:
    mean, lo, hi = t_interval([0.5])
    assert mean == 0.5 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in t_interval([]))


def test_paired_by_seed_drops_unpaired_seeds() -> None:
    a = pd.Series([0.90, 0.80, 0.85, 0.70], index=[0, 1, 2, 3])  # seed 3: this arm only
    b = pd.Series([0.87, 0.79, 0.82, 0.60], index=[2, 1, 0, 5])  # seed 5: this arm only
    p = paired(a, b)
    assert (p.n, p.dropped) == (3, 2)
    diffs = [0.90 - 0.82, 0.80 - 0.79, 0.85 - 0.87]  # seeds 0, 1, 2 matched by seed, not order
    assert p.mean == pytest.approx(sum(diffs) / 3)
    sd = math.sqrt(sum((d - p.mean) ** 2 for d in diffs) / 2)
    assert p.hi - p.mean == pytest.approx(T975[2] * sd / math.sqrt(3), rel=1e-3)
    assert p.excludes_zero is False and p.sign == 0
    assert cells(p)[2:] == ["no", "3", "2"]
    assert "2 unpaired seeds left out" in inline(p)


def test_one_pair_is_not_an_interval() -> None:
    p = paired(pd.Series([0.9, 0.8], index=[0, 1]), pd.Series([0.85], index=[1]))
    assert (p.n, p.dropped) == (1, 1) and p.mean == pytest.approx(-0.05)
    assert cells(p) == ["-5.00 pp", "n/a", "n/a", "1", "1"]
    assert compact_cell(p) == "-5.0 pp [n/a]"
    assert ship(p) == "n/a (n < 2)"


def test_per_seed_skips_missing_and_averages_repeats() -> None:
    frame = pd.DataFrame({"seed": [0, 1, 1, 2], "acc": [0.5, 0.6, 0.8, math.nan]})
    assert per_seed(frame, "acc").to_dict() == {0: 0.5, 1: pytest.approx(0.7)}
    assert per_seed(frame, "acc_kdci").empty  # a column the rows do not have


def test_cells_and_ship() -> None:
    above = Paired(0.02, 0.005, 0.035, 3, 0)
    assert cells(above) == ["+2.00 pp", "[+0.50, +3.50]", "yes", "3", "0"]
    assert compact_cell(above) == "+2.0 pp [+0.5, +3.5]*"
    assert ship(above) == "compensated"
    assert ship(Paired(-0.02, -0.035, -0.005, 3, 0)) == "raw"
    assert ship(Paired(0.01, -0.01, 0.03, 3, 0)) == "either (no difference)"


# ----------------------------------------------------------------------------- KDCI arms

J = (-0.01, 0.0, 0.01)  # per-seed jitter of the raw gain: sd 0.01 over 3 seeds
HALF3 = T975[2] * 0.01 / math.sqrt(3)  # the half-width it gives: 0.02484


def _shift_rows(skip: tuple = ()) -> pd.DataFrame:
    """method x shift.imbalance (1, 8) x cases vanilla / control / softmax x seeds 0-2 in memory:
    raw gain control 0, softmax +3 pp; acc_kdci − acc: control +3 pp at imbalance 1 and +5 pp
    at 8, softmax −3 pp; every difference jittered by ``J``."""
    records = []
    for level in (1, 8):
        for case, kdci in (("vanilla", False), ("control", True), ("softmax", True)):
            for seed in range(3):
                if (level, case, seed) in skip:
                    continue
                acc = 0.8 + 0.02 * seed
                acc_kdci = math.nan
                if case == "control":
                    acc, acc_kdci = acc + J[seed], acc + J[seed] + (0.03 if level == 1 else 0.05)
                elif case == "softmax":
                    acc = acc + 0.03 + J[seed]
                    acc_kdci = acc - 0.03 + J[seed]
                records.append({"trial": f"t{len(records)}", "shift.imbalance": level,
                                "case": case, "method": "dfnd", "kdci": kdci, "seed": seed,
                                "acc": acc, "acc_kdci": acc_kdci, "recall_rare": acc - 0.3,
                                "recall_rare_kdci": acc_kdci - 0.2,
                                "prior_ratio": 0.1 if kdci else math.nan})
    return pd.DataFrame.from_records(records)


def test_vanilla_comparisons_of_case_arms() -> None:
    rows = _shift_rows(skip={(8, "softmax", 2)})
    assert split_columns(rows) == (["shift.imbalance"], ["case"])
    comps = vanilla_comparisons(rows).set_index(["shift.imbalance", "arm"])
    assert sorted(comps.index) == [(1, "control"), (1, "softmax"), (8, "control"), (8, "softmax")]

    control = comps.loc[(1, "control")]
    raw, comp, within = control["raw"], control["comp"], control["within"]
    assert (raw.n, raw.dropped) == (3, 0)
    assert raw.mean == pytest.approx(0.0, abs=1e-12)
    assert (raw.lo, raw.hi) == pytest.approx((-HALF3, HALF3), rel=1e-3)
    # acc_kdci − vanilla acc = 0.03 + J: mean 0.03, the same half-width; excludes 0
    assert (comp.mean, comp.lo, comp.hi) == pytest.approx((0.03, 0.03 - HALF3, 0.03 + HALF3),
                                                       rel=1e-3)
    assert comp.excludes_zero
    assert within.mean == pytest.approx(0.03) and within.hi - within.lo == pytest.approx(0.0)
    assert control["ship"] == "compensated" and control["prior_ratio"] == pytest.approx(0.1)

    softmax = comps.loc[(1, "softmax")]
    assert softmax["raw"].mean == pytest.approx(0.03) and softmax["raw"].sign == 1
    assert softmax["within"].mean == pytest.approx(-0.03) and softmax["ship"] == "raw"

    short = comps.loc[(8, "softmax")]  # seed 2 never ran with softmax: two pairs, one unpaired
    assert (short["raw"].n, short["raw"].dropped) == (2, 1)
    diffs = [0.03 + J[0], 0.03 + J[1]]
    half = T975[1] * math.sqrt(sum((d - 0.025) ** 2 for d in diffs)) / math.sqrt(2)
    assert (short["raw"].lo, short["raw"].hi) == pytest.approx((0.025 - half, 0.025 + half),
                                                               rel=1e-3)


def test_comparison_section_tables_and_pivot() -> None:
    rows = _shift_rows()
    assert level_column(rows, ["shift.imbalance"]) == "shift.imbalance"
    lines = comparison_section(rows)
    text = "\n".join(lines)
    assert "| method | shift.imbalance | case | n | unpaired | raw gain |" in text
    assert "| dfnd | 1 | control | 3 | 0 | +0.00 pp | [-2.48, +2.48] | no | +3.00 pp | " \
           "[+0.52, +5.48] | yes |" in lines
    ships = lines[lines.index("### Raw or compensated prediction"):]
    ship_line = next(ln for ln in ships if ln.startswith("| dfnd | 8 | softmax | 3 |"))
    assert "| -3.00 pp |" in ship_line and ship_line.endswith("| raw | 52.00 / 55.00 / 62.00 "
                                                              "| 0.100 / – |")
    pivot = lines[lines.index("### Compensated gain vs shift.imbalance"):]
    assert "| KDCI arm | shift.imbalance=1 | shift.imbalance=8 |" in pivot
    assert "| control | +3.0 pp [+0.5, +5.5]* | +5.0 pp [+2.5, +7.5]* |" in pivot
    # softmax: compensated = raw (+3) + within (−3) + 2 J: mean 0, includes 0, no marker
    assert "| softmax | +0.0 pp [-5.0, +5.0] | +0.0 pp [-5.0, +5.0] |" in pivot


def test_no_pivot_without_a_numeric_level_and_no_section_without_kdci() -> None:
    rows = _shift_rows()
    one_level = rows[rows["shift.imbalance"] == 1]
    text = "\n".join(comparison_section(one_level))
    assert "raw gain" in text and "Compensated gain vs" not in text
    assert comparison_section(rows[~rows["kdci"]]) == []
    named = rows.assign(**{"shift.imbalance": rows["shift.imbalance"].map({1: "low", 8: "high"})})
    assert level_column(named, ["shift.imbalance"]) is None
