"""Sweep report: learning curves from result.json, KDCI gain, PNGs and report.md."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from kdci_ray.results.plots import plot_gain
from kdci_ray.results.report import (
    gain_error,
    headline,
    kdci_gains,
    read_curves,
    trial_curve,
    write_report,
)
from kdci_ray.results.table import rows_from_sweep, summarize, write_tables

ROUNDS = 4
# final test accuracy per (method, kdci) and seed 0, 1, 2 of the finished trials
FINAL = {
    ("dafl", False): [0.80, 0.82, 0.81],
    ("dafl", True): [0.83, 0.86, 0.82],
    ("fast", False): [0.90, 0.91, 0.93],
    ("fast", True): [0.92, 0.95, 0.96],
}
RESUMED = ("dafl", True, 1)  # reports rounds 1-3, is interrupted, resumes and reports 2-4 again
UNFINISHED = ("fast", True, 3, [0.60, 0.70])  # two rounds, then a torn line
PENDING = ("dafl", False, 5)  # never reported: no result.json


def _report(rnd: int, acc: float, kdci: bool, finished: bool = False) -> dict:
    report = {"round": rnd, "step": 10 * rnd, "eval/acc": acc, "eval/teacher_acc": 0.99,
              "finished": float(finished)}
    if kdci:
        report["eval/acc_kdci"] = acc + 0.001
    return report


def _ramp(final: float, kdci: bool) -> list[dict]:
    """Rounds 1..ROUNDS rising to ``final``, the last one finished."""
    return [_report(r, final - 0.05 * (ROUNDS - r), kdci, finished=r == ROUNDS)
            for r in range(1, ROUNDS + 1)]


def _trial(sweep: Path, params: dict, reports: list[dict] | None, tail: str = "") -> Path:
    name = "_".join(str(v) for v in params.values()).replace(".", "")
    trial = sweep / f"{name}_{len(list(sweep.glob('*'))):05d}"
    trial.mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps(params))
    if reports is not None:
        lines = [json.dumps({**r, "config": params}) for r in reports]
        (trial / "result.json").write_text("\n".join(lines) + "\n" + tail)
    return trial


def _params(method: str, kdci: bool, seed: int, **extra: object) -> dict:
    return {"method": method, "kdci.enabled": kdci, "seed": seed, **extra}


def _resumed_reports(final: float) -> list[dict]:
    first = [_report(r, 0.5 + 0.1 * r, True) for r in (1, 2, 3)]
    again = [_report(2, 0.75, True), _report(3, 0.84, True), _report(4, final, True, True)]
    return first + again


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 methods x KDCI off/on x 3 seeds, one resumed, one unfinished, one pending trial."""
    root = tmp_path_factory.mktemp("report") / "sweep"
    for (method, kdci), finals in FINAL.items():
        for seed, final in enumerate(finals):
            reports = _ramp(final, kdci)
            if (method, kdci, seed) == RESUMED:
                reports = _resumed_reports(final)
            _trial(root, _params(method, kdci, seed), reports)
    method, kdci, seed, accs = UNFINISHED
    _trial(root, _params(method, kdci, seed),
           [_report(r, acc, kdci) for r, acc in enumerate(accs, start=1)],
           tail='{"round": 3, "eval/ac')
    _trial(root, _params(*PENDING), None)
    return root


@pytest.fixture(scope="module")
def written(sweep: Path) -> list[Path]:
    rows = rows_from_sweep(sweep)
    markdown = write_tables(rows, sweep, "fake sweep")
    return write_report(sweep, rows, markdown, "fake sweep")


def _assert_png(path: Path, min_size: tuple[int, int] = (400, 300)) -> None:
    assert path.is_file() and path.stat().st_size > 5_000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_size[0] and image.height >= min_size[1]
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is None or len(colors) > 20  # drawn, not a blank canvas


def _finals() -> dict[tuple[str, bool], list[float]]:
    """Last reported acc of every trial with a result, per (method, kdci), from the fake data."""
    finals = {key: list(values) for key, values in FINAL.items()}
    method, kdci, _, accs = UNFINISHED
    finals[(method, kdci)].append(accs[-1])
    return finals


# ----------------------------------------------------------------------------- curves


def test_trial_curve_keeps_last_report_of_a_repeated_round() -> None:
    reports = _resumed_reports(0.86) + [{"round": "x", "eval/acc": 0.1}, {"step": 3}]
    curve = trial_curve(reports)
    assert curve["round"].tolist() == [1, 2, 3, 4]
    assert curve["eval_acc"].tolist() == pytest.approx([0.6, 0.75, 0.84, 0.86])
    assert curve["step"].tolist() == [10, 20, 30, 40]


def test_read_curves_long_table(sweep: Path) -> None:
    curves = read_curves(sweep)
    assert {"trial", "method", "kdci", "seed", "round", "step", "eval_acc",
            "eval_acc_kdci"} <= set(curves.columns)
    assert not curves.duplicated(["trial", "round"]).any()

    def trial(method: str, kdci: bool, seed: int) -> pd.DataFrame:
        hit = curves[(curves["method"] == method) & (curves["kdci"] == kdci)
                     & (curves["seed"] == seed)]
        return hit.sort_values("round")

    resumed = trial(*RESUMED)
    assert resumed["round"].tolist() == [1, 2, 3, 4]
    assert resumed["eval_acc"].tolist() == pytest.approx([0.6, 0.75, 0.84, 0.86])

    method, kdci, seed, accs = UNFINISHED  # the torn last line is skipped
    assert trial(method, kdci, seed)["eval_acc"].tolist() == pytest.approx(accs)
    assert trial(*PENDING).empty  # no result.json: no curve
    assert curves.loc[~curves["kdci"], "eval_acc_kdci"].isna().all()  # KDCI off: no acc_kdci
    assert curves.loc[curves["kdci"], "eval_acc_kdci"].notna().all()
    assert len(curves) == 12 * ROUNDS + len(accs)


# ----------------------------------------------------------------------------- KDCI gain


def test_gain_error_paired_and_unpaired() -> None:
    on = pd.Series([0.83, 0.86, 0.82], index=[0, 1, 2])
    off = pd.Series([0.81, 0.80, 0.82], index=[2, 0, 1])  # same seeds, another order
    err, paired = gain_error(on, off)
    assert paired
    assert err == pytest.approx(statistics.stdev([0.83 - 0.80, 0.86 - 0.82, 0.82 - 0.81]))

    err, paired = gain_error(on, off.iloc[:2])
    assert not paired
    expected = math.sqrt(statistics.stdev(on) ** 2 + statistics.stdev(off.iloc[:2]) ** 2)
    assert err == pytest.approx(expected)
    assert math.isnan(gain_error(on.iloc[:1], off.loc[[0]])[0])  # one difference: unknown


def test_kdci_gains_per_method(sweep: Path) -> None:
    gains = kdci_gains(rows_from_sweep(sweep)).set_index("method")
    finals = _finals()
    assert sorted(gains.index) == ["dafl", "fast"]

    dafl = gains.loc["dafl"]
    on, off = finals[("dafl", True)], finals[("dafl", False)]
    assert dafl["gain"] == pytest.approx(statistics.mean(on) - statistics.mean(off))
    assert dafl["paired"] and (dafl["n_on"], dafl["n_off"]) == (3, 3)
    diffs = [a - b for a, b in zip(on, off, strict=True)]
    assert dafl["err"] == pytest.approx(statistics.stdev(diffs))

    fast = gains.loc["fast"]  # the unfinished seed 3 ran with KDCI only: unpaired
    on, off = finals[("fast", True)], finals[("fast", False)]
    assert fast["gain"] == pytest.approx(statistics.mean(on) - statistics.mean(off))
    assert not fast["paired"] and (fast["n_on"], fast["n_off"]) == (4, 3)
    assert fast["err"] == pytest.approx(math.hypot(statistics.stdev(on), statistics.stdev(off)))


# ----------------------------------------------------------------------------- files


def test_write_report_files_and_pngs(sweep: Path, written: list[Path]) -> None:
    names = [p.name for p in written]
    assert names == ["curves.png", "kdci_gain.png", "report.md"]
    assert all(p.parent == sweep for p in written)
    _assert_png(sweep / "curves.png", (800, 300))  # two method panels side by side
    _assert_png(sweep / "kdci_gain.png")
    assert not list(sweep.glob(".*.tmp"))  # atomic writes leave no temp files


def _group_stats(finals: dict[tuple[str, bool], list[float]]) -> list[tuple]:
    stats = [(statistics.mean(v), statistics.stdev(v), key, len(v)) for key, v in finals.items()]
    return sorted(stats, reverse=True)


def test_report_md_headline(sweep: Path, written: list[Path]) -> None:
    text = (sweep / "report.md").read_text()
    lines = text.splitlines()
    assert lines[0] == "# fake sweep"
    head = lines[2]
    (best_mean, best_std, (method, kdci), n), (second_mean, second_std, second_key, _) = (
        _group_stats(_finals())[:2])
    on_off = "on" if kdci else "off"
    assert head.startswith(f"Winner (highest mean acc): **{method}**, KDCI {on_off} with "
                           f"{100 * best_mean:.2f} ± {100 * best_std:.2f} % (n = {n} seeds).")
    assert f"**{second_key[0]}**, KDCI {'on' if second_key[1] else 'off'}" in head
    assert f"margin {100 * (best_mean - second_mean):.2f} pp." in head
    within = best_mean - second_mean <= max(best_std, second_std)
    assert ("within the seed noise" in head) == within
    assert ("larger than the seed noise" in head) == (not within)

    gains = {m: statistics.mean(_finals()[(m, True)]) - statistics.mean(_finals()[(m, False)])
             for m in ("dafl", "fast")}
    best, worst = max(gains, key=gains.get), min(gains, key=gains.get)
    for word, method in (("best", best), ("worst", worst)):
        item = re.escape(f"{word} {method}, {100 * gains[method]:+.2f} ± ")
        assert re.search(item + r"\d+\.\d\d pp", head)
    stds = [statistics.stdev(v) for v in _finals().values()]
    assert "median std of acc across the 4 settings" in head
    assert f"is {100 * statistics.median(stds):.2f} pp" in head


def test_report_md_embeds_tables_and_unfinished(sweep: Path, written: list[Path]) -> None:
    text = (sweep / "report.md").read_text()
    for path in written[:-1]:
        assert f"]({path.name})" in text
    assert "per-seed differences" in text  # the error bar is defined in the report
    assert "| dafl | off | 3 | 81.00 ± 1.00 | – | 99.00 |" in text  # write_tables' summary
    assert "## fake sweep" not in text  # its own heading replaced by "## Summary"
    trial_lines = [ln for ln in text.splitlines() if re.match(r"\| \S+_\d{5} \|", ln)]
    assert len(trial_lines) == 14  # every trial, pending one included

    unfinished = text.split("## Unfinished trials", 1)[1]
    items = [ln for ln in unfinished.splitlines() if ln.startswith("- ")]
    assert len(items) == 2
    method, _, seed, accs = UNFINISHED
    assert any(f"({method}, KDCI on, seed {seed}): {len(accs)} rounds" in ln
               and f"last acc {100 * accs[-1]:.2f} %" in ln for ln in items)
    assert any(f"seed {PENDING[2]}): 0 rounds reported, no result yet" in ln for ln in items)


def test_no_gain_plot_with_one_kdci_arm(tmp_path: Path) -> None:
    sweep = tmp_path / "vanilla_only"
    for method in ("dafl", "fast"):
        for seed, final in enumerate(FINAL[(method, False)][:2]):
            _trial(sweep, _params(method, False, seed), _ramp(final, False))
    rows = rows_from_sweep(sweep)
    assert kdci_gains(rows).empty
    assert plot_gain(kdci_gains(rows), tmp_path / "gain.png") is None
    written = write_report(sweep, rows, write_tables(rows, sweep, "v"), "v")
    assert [p.name for p in written] == ["curves.png", "report.md"]
    assert not (sweep / "kdci_gain.png").exists()
    text = (sweep / "report.md").read_text()
    assert "no KDCI gain to report" in text and "kdci_gain.png" not in text
    assert "## Unfinished trials" not in text


def test_report_with_dictionary_size(tmp_path: Path) -> None:
    sweep = tmp_path / "k_sweep"
    acc = {}
    for k in (8, 32, 128):
        for kdci in (False, True):
            for seed in (0, 1):
                acc[(k, kdci, seed)] = 0.8 + 0.01 * seed + (0.0005 * k if kdci else 0.0)
                _trial(sweep, _params("dfnd", kdci, seed, **{"kdci.k": k}),
                       _ramp(acc[(k, kdci, seed)], kdci))
    rows = rows_from_sweep(sweep)
    written = write_report(sweep, rows, write_tables(rows, sweep, "K"), "K")
    assert [p.name for p in written] == [
        "curves.png", "kdci_gain.png", "acc_vs_kdci.k.png", "report.md"]
    for path in written[:-1]:
        _assert_png(path)

    gains = kdci_gains(rows)
    assert gains["kdci.k"].tolist() == [8, 32, 128]
    assert gains["label"].tolist() == [f"dfnd\nkdci.k={k}" for k in (8, 32, 128)]
    for _, row in gains.iterrows():
        k = row["kdci.k"]
        on = [acc[(k, True, s)] for s in (0, 1)]
        off = [acc[(k, False, s)] for s in (0, 1)]
        assert row["gain"] == pytest.approx(statistics.mean(on) - statistics.mean(off))
        assert row["paired"] and row["err"] == pytest.approx(0.0, abs=1e-12)

    head = (sweep / "report.md").read_text().splitlines()[2]
    assert head.startswith("Winner (highest mean acc): **dfnd**, KDCI on (kdci.k=128)")
    assert "best dfnd (kdci.k=128), +6.40" in head and "worst dfnd (kdci.k=8), +0.40" in head
    curves = read_curves(sweep, rows)
    assert curves["kdci.k"].tolist().count(8) == 4 * ROUNDS


def test_headline_margin_outside_noise() -> None:
    rows = pd.DataFrame({
        "trial": [f"t{i}" for i in range(4)], "method": ["a", "a", "b", "b"],
        "kdci": [False] * 4, "seed": [0, 1, 0, 1], "acc": [0.90, 0.91, 0.80, 0.81],
        "acc_kdci": [math.nan] * 4, "teacher_acc": [0.99] * 4, "rounds_done": [4] * 4,
        "finished": [True] * 4, "checkpoint": [""] * 4,
    })
    text = headline(rows, kdci_gains(rows))
    assert text.startswith("Winner (highest mean acc): **a**, KDCI off with 90.50 ± 0.71 %")
    assert "margin 10.00 pp. That margin is larger than the seed noise" in text
    assert "no KDCI gain to report" in text


# ----------------------------------------------------------------------------- shift benchmark

SHIFT_J = (-0.01, 0.0, 0.01)  # per-seed jitter of every arm's raw acc: differences sd 1 pp
SHIFT_WITHIN = {"control": lambda level: 0.04, "scaled": lambda level: 0.03 * (level > 1)}
SHIFT_RAW = {"control": 0.0, "scaled": 0.01}
SHIFT_MISSING = ("fast", 64, "scaled", 2)  # never ran


def _shift_reports(method: str, level: int, case: str, seed: int) -> list[dict]:
    acc = {"dfnd": 0.80, "fast": 0.85}[method] - 0.001 * level + 0.01 * seed
    report = {"round": 1, "step": 10, "eval/teacher_acc": 0.95, "finished": 1.0,
              "eval/recall_rare": acc - 0.2}
    if level > 1:
        report["eval/recall_min"] = acc - 0.3  # reported at one level only
    if case != "vanilla":
        acc += SHIFT_RAW[case] + SHIFT_J[seed]
        acc_kdci = acc + SHIFT_WITHIN[case](level)
        report.update({"eval/acc_kdci": acc_kdci, "eval/recall_rare_kdci": acc_kdci - 0.1,
                       "eval/prior_ratio": 0.2, "kdci/prior_ratio": 0.3})
    return [{**report, "eval/acc": acc, "eval/recall_rare": acc - 0.2}]


@pytest.fixture(scope="module")
def shift_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kdci_shift.yaml's shape: method x shift.imbalance x cases (vanilla / control / scaled) x
    seeds 0-2; config.yaml holds each trial's resolved KDCI setting."""
    root = tmp_path_factory.mktemp("shift") / "sweep"
    for method in ("dfnd", "fast"):
        for level in (1, 64):
            for case in ("vanilla", "control", "scaled"):
                for seed in range(3):
                    if (method, level, case, seed) == SHIFT_MISSING:
                        continue
                    trial = _trial(root, {"method": method, "shift.imbalance": level,
                                          "cases": case, "seed": seed},
                                   _shift_reports(method, level, case, seed))
                    (trial / "config.yaml").write_text(
                        f"method: {method}\nseed: {seed}\nkdci.enabled: {case != 'vanilla'}\n")
    rows = rows_from_sweep(root)
    write_report(root, rows, write_tables(rows, root, "shift"), "shift")
    return root


def test_shift_rows_have_the_new_metrics(shift_sweep: Path) -> None:
    rows = rows_from_sweep(shift_sweep)
    assert len(rows) == 35
    on, off = rows[rows["kdci"]], rows[~rows["kdci"]]
    assert on["prior_ratio"].eq(0.2).all() and on["prior_ratio_train"].eq(0.3).all()
    for col in ("acc_kdci", "recall_rare_kdci", "prior_ratio", "prior_ratio_train"):
        assert off[col].isna().all()
    assert (rows["recall_rare"] - rows["acc"] + 0.2).abs().max() < 1e-9
    assert rows.loc[rows["shift.imbalance"] == 1, "recall_min"].isna().all()
    assert rows.loc[rows["shift.imbalance"] == 64, "recall_min"].notna().all()
    summary = summarize(rows)
    assert summary["prior_ratio_train_mean"].dropna().eq(0.3).all()
    assert summary["recall_rare_kdci_mean"].notna().sum() == 8  # the KDCI-on groups


def test_shift_report_gains_ship_and_pivot(shift_sweep: Path) -> None:
    text = (shift_sweep / "report.md").read_text()
    lines = text.splitlines()
    assert "Paired by seed, winner − runner-up: " in lines[2]
    assert "(paired: +1.00 pp, 95% CI [-1.48, +3.48] pp, n = 3)" in lines[2]  # best KDCI gain
    section = lines[lines.index("## KDCI arms, paired by seed"):lines.index("## Summary")]
    # raw gain: J (sd 1 pp, half 4.303 / sqrt(3) = 2.48 pp); compensated: +4 pp + J
    assert ("| dfnd | 1 | control | 3 | 0 | +0.00 pp | [-2.48, +2.48] | no | +4.00 pp | "
            "[+1.52, +6.48] | yes |") in section
    # fast · 64 · scaled lacks seed 2: raw differences 0.0, 1.0 pp, half 12.706 · 0.707 / √2
    assert ("| fast | 64 | scaled | 2 | 1 | +0.50 pp | [-5.85, +6.85] | no | +3.50 pp | "
            "[-2.85, +9.85] | no |") in section
    ships = section[section.index("### Raw or compensated prediction"):]
    assert any(ln.startswith("| dfnd | 1 | scaled | 3 |") and "| either (no difference) |" in ln
               for ln in ships)
    assert any(ln.startswith("| dfnd | 64 | control | 3 |") and "| compensated |" in ln
               and ln.endswith("| 0.200 / 0.300 |") for ln in ships)
    pivot = section[section.index("### Compensated gain vs shift.imbalance"):]
    assert pivot.count("| KDCI arm | shift.imbalance=1 | shift.imbalance=64 |") == 2
    fast = pivot[pivot.index("**fast**"):]
    assert "| control | +4.0 pp [+1.5, +6.5]* | +4.0 pp [+1.5, +6.5]* |" in fast
    # scaled at 64: seeds 0, 1 only -> 3.0 and 4.0 pp, t(0.975, 1) = 12.706
    half = 12.706 * statistics.stdev([0.03, 0.04]) / math.sqrt(2)
    assert (f"| scaled | +1.0 pp [-1.5, +3.5] | +3.5 pp [{100 * (0.035 - half):+.1f}, "
            f"{100 * (0.035 + half):+.1f}] |") in fast
    summary = text.split("### KDCI − vanilla", 1)[1]
    # Δ acc over all trials (2 vs 3 seeds) differs from the paired Δ over the 2 common seeds
    assert "| 64 | scaled | fast | +0.00 pp | +0.50 pp | [-5.85, +6.85] | no | 2 | 1 |" in summary
