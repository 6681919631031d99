"""Sweep result tables: summary statistics, Markdown, files, and reading Tune trial dirs."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kdci_ray.results.table import rows_from_sweep, summarize, to_markdown, write_tables

NAN = math.nan


def _rows() -> pd.DataFrame:
    data = [
        # method, kdci, seed, acc, acc_kdci, teacher_acc
        ("dafl", False, 0, 0.95, NAN, 0.99),
        ("dafl", False, 1, 0.96, NAN, 0.99),
        ("dafl", False, 2, 0.97, NAN, 0.99),
        ("dafl", False, 3, NAN, NAN, NAN),  # a trial that never reported
        ("dafl", True, 1, 0.99, 0.985, 0.99),
        ("dafl", True, 0, 0.97, 0.975, 0.99),
        ("deepinversion", False, 0, 0.90, NAN, 0.99),
    ]
    cols = ["method", "kdci", "seed", "acc", "acc_kdci", "teacher_acc"]
    return pd.DataFrame(data, columns=cols)


def _group(summary: pd.DataFrame, method: str, kdci: bool) -> pd.Series:
    hit = summary[(summary["method"] == method) & (summary["kdci"] == kdci)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_summarize_means_stds_and_deltas() -> None:
    summary = summarize(_rows())
    assert list(zip(summary["method"], summary["kdci"], strict=True)) == [
        ("dafl", False),
        ("dafl", True),
        ("deepinversion", False),
    ]
    off, on = _group(summary, "dafl", False), _group(summary, "dafl", True)
    assert off["n"] == 3 and on["n"] == 2
    assert off["acc_mean"] == pytest.approx(statistics.mean([0.95, 0.96, 0.97]))
    assert off["acc_std"] == pytest.approx(statistics.stdev([0.95, 0.96, 0.97]))
    assert math.isnan(off["acc_kdci_mean"])
    assert on["acc_mean"] == pytest.approx(0.98)
    assert on["acc_std"] == pytest.approx(statistics.stdev([0.97, 0.99]))
    assert on["acc_kdci_mean"] == pytest.approx(0.98)
    assert on["acc_kdci_std"] == pytest.approx(statistics.stdev([0.975, 0.985]))
    assert on["teacher_acc"] == pytest.approx(0.99)
    expected_delta = 0.98 - statistics.mean([0.95, 0.96, 0.97])
    assert off["delta_acc"] == pytest.approx(expected_delta)
    assert on["delta_acc"] == pytest.approx(expected_delta)

    di = _group(summary, "deepinversion", False)
    assert di["n"] == 1 and di["acc_std"] == 0.0  # one trial: std reported as 0.0
    assert math.isnan(di["delta_acc"])  # no KDCI run to compare with


def test_markdown_formats_percentages_and_deltas() -> None:
    text = to_markdown(summarize(_rows()), "digits sweep")
    assert text.startswith("## digits sweep\n")
    lines = text.splitlines()
    assert "| dafl | off | 3 | 96.00 ± 1.00 | – | 99.00 |" in lines
    assert "| dafl | on | 2 | 98.00 ± 1.41 | 98.00 ± 0.71 | 99.00 |" in lines
    assert "| deepinversion | off | 1 | 90.00 ± 0.00 | – | 99.00 |" in lines
    assert "KDCI − vanilla" in text
    assert "| dafl | +2.00 pp |" in lines
    assert "| deepinversion | – |" in lines


def test_markdown_negative_delta_is_signed() -> None:
    rows = pd.DataFrame(
        {
            "method": ["m", "m"],
            "kdci": [False, True],
            "seed": [0, 0],
            "acc": [0.9, 0.8948],
            "acc_kdci": [NAN, 0.9],
            "teacher_acc": [0.95, 0.95],
        }
    )
    assert "| m | -0.52 pp |" in to_markdown(summarize(rows), "t").splitlines()


def test_write_tables_writes_sorted_csv_and_markdown(tmp_path: Path) -> None:
    rows = _rows().sample(frac=1.0, random_state=0)  # shuffled
    rows.loc[rows.index[rows["method"] == "deepinversion"], "acc_kdci"] = 0.5  # KDCI off: dropped
    out = tmp_path / "a" / "b"
    text = write_tables(rows, out, "digits sweep")
    assert (out / "summary.md").read_text() == text
    assert "96.00 ± 1.00" in text
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv", "summary.md"]

    csv = pd.read_csv(out / "summary.csv")
    keys = list(zip(csv["method"], csv["kdci"], csv["seed"], strict=True))
    assert keys == sorted(keys) and len(keys) == len(rows)
    assert csv.loc[~csv["kdci"], "acc_kdci"].isna().all()
    assert csv.loc[csv["kdci"], "acc_kdci"].tolist() == [0.975, 0.985]
    raw_lines = (out / "summary.csv").read_text().splitlines()
    assert raw_lines[1] == "dafl,False,0,0.95,,0.99"


# ----------------------------------------------------------------------------- rows_from_sweep


def _trial(
    root: Path, name: str, params: dict | None, reports: list[dict], files: dict | None = None
) -> Path:
    trial = root / name
    trial.mkdir(parents=True)
    if params is not None:
        (trial / "params.json").write_text(json.dumps(params))
    if reports:
        lines = [json.dumps({**r, "config": params or {}}) for r in reports]
        (trial / "result.json").write_text("\n".join(lines) + "\n")
    for fname, text in (files or {}).items():
        (trial / fname).write_text(text)
    return trial


def _report(rnd: int, acc: float, finished: object = 0.0, **extra: float) -> dict:
    return {"round": rnd, "step": 10 * rnd, "eval/acc": acc, "finished": finished, **extra}


def test_rows_from_sweep_on_synthetic_tree(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    finished = _trial(
        sweep,
        "t0_dafl_off",
        {"method": "dafl", "kdci.enabled": False, "seed": 0},
        [
            _report(1, 0.5, **{"eval/teacher_acc": 0.99}),
            # acc_kdci reported although KDCI is off: must not show up
            _report(2, 0.9, finished=True, **{"eval/teacher_acc": 0.99, "eval/acc_kdci": 0.1}),
        ],
        {"student.pt": "weights"},
    )
    resolved = {"name": "x", "method": "deepinversion", "seed": 1, "kdci.enabled": True}
    running = _trial(
        sweep,
        "t1_di_on",
        {"seed": 7},  # config.yaml wins over params.json
        [
            _report(1, 0.6, **{"eval/acc_kdci": 0.65, "eval/teacher_acc": 0.98}),
            {"round": 2, "step": 20, "finished": 0.0},  # a report without evaluation
        ],
        {"config.yaml": yaml.safe_dump(resolved)},
    )
    with (running / "result.json").open("a") as fh:
        fh.write('{"round": 3, "eval/ac')  # torn last line of an interrupted write
    _trial(sweep, "t2_dafl_on_pending", {"method": "dafl", "kdci.enabled": True, "seed": 2}, [])
    _trial(sweep, "driver_artifacts", None, [_report(1, 0.1)])  # no params: not a trial
    (sweep / "experiment_state-x.json").write_text("{}")

    rows = rows_from_sweep(sweep)
    assert list(rows["trial"]) == ["t0_dafl_off", "t2_dafl_on_pending", "t1_di_on"]
    by_trial = rows.set_index("trial")

    r0 = by_trial.loc["t0_dafl_off"]
    assert (r0["method"], r0["kdci"], r0["seed"]) == ("dafl", False, 0)
    assert r0["acc"] == 0.9 and r0["teacher_acc"] == 0.99 and math.isnan(r0["acc_kdci"])
    assert r0["rounds_done"] == 2 and r0["finished"]
    assert r0["checkpoint"] == str(finished / "student.pt")

    r1 = by_trial.loc["t1_di_on"]
    assert (r1["method"], r1["kdci"], r1["seed"]) == ("deepinversion", True, 1)
    assert r1["acc"] == 0.6 and r1["acc_kdci"] == 0.65 and r1["teacher_acc"] == 0.98
    assert r1["rounds_done"] == 2 and not r1["finished"]
    assert r1["checkpoint"] == ""

    r2 = by_trial.loc["t2_dafl_on_pending"]
    assert (r2["method"], r2["kdci"], r2["seed"]) == ("dafl", True, 2)
    assert math.isnan(r2["acc"]) and math.isnan(r2["acc_kdci"]) and math.isnan(r2["teacher_acc"])
    assert r2["rounds_done"] == 0 and not r2["finished"]

    # the rows feed the tables directly
    summary = summarize(rows)
    assert _group(summary, "dafl", True)["n"] == 0


def test_rows_from_sweep_empty_and_missing(tmp_path: Path) -> None:
    rows = rows_from_sweep(tmp_path)
    assert rows.empty and "acc" in rows.columns
    with pytest.raises(FileNotFoundError):
        rows_from_sweep(tmp_path / "nope")


# ----------------------------------------------------------------------------- real Ray Tune


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # someone else's session: use it, leave it running
        yield
        return
    temp_dir = tempfile.mkdtemp(prefix="kr", dir="/tmp")  # short: Ray's socket paths are limited
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", "disabled"))
        ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=temp_dir)
        try:
            yield
        finally:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def test_rows_from_real_tune_sweep(ray_session: None, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Tune leaves its Ctrl-C handler
    from ray import tune

    # defined here so that Ray pickles it by value (workers cannot import this test module)
    def _fake_trainable(config: dict) -> None:
        base = {"dafl": 0.8, "deepinversion": 0.7}[config["method"]]
        kdci = bool(config["kdci.enabled"])
        for rnd in (1, 2):
            metrics = {
                "round": rnd,
                "step": 5 * rnd,
                "eval/acc": base + 0.01 * rnd,
                "eval/teacher_acc": 0.97,
                "finished": float(rnd == 2),
            }
            if kdci:
                metrics["eval/acc_kdci"] = base + 0.05 + 0.01 * rnd
            tune.report(metrics)

    space = {
        "method": tune.grid_search(["dafl", "deepinversion"]),
        "kdci.enabled": tune.grid_search([False, True]),
        "seed": 3,
    }
    tuner = tune.Tuner(
        _fake_trainable,
        param_space=space,
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="sweep", verbose=0),
    )
    results = tuner.fit()
    assert not results.errors

    trial_dirs = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir()]
    params = json.loads((trial_dirs[0] / "params.json").read_text())
    assert set(params) == {"method", "kdci.enabled", "seed"}  # dotted keys stay flat

    rows = rows_from_sweep(tmp_path / "sweep")
    assert len(rows) == 4
    assert list(zip(rows["method"], rows["kdci"], strict=True)) == [
        ("dafl", False),
        ("dafl", True),
        ("deepinversion", False),
        ("deepinversion", True),
    ]
    base = rows["method"].map({"dafl": 0.8, "deepinversion": 0.7})
    assert rows["acc"].tolist() == pytest.approx((base + 0.02).tolist())
    assert rows["acc_kdci"][rows["kdci"]].tolist() == pytest.approx([0.87, 0.77])
    assert rows["acc_kdci"][~rows["kdci"]].isna().all()
    assert (rows["teacher_acc"] == 0.97).all() and (rows["seed"] == 3).all()
    assert rows["finished"].all() and (rows["rounds_done"] == 2).all()
    assert (rows["checkpoint"] == "").all()


# ----------------------------------------------------------------------------- case arms

ABLATION = {  # tune_configs/ablation_prior.yaml's cases; final acc per seed 0, 1, 2
    "vanilla": (False, {}, [0.80, 0.82, 0.81]),
    "kdci": (True, {}, [0.84, 0.85, 0.86]),
    "random_lambda": (True, {"kdci.random_lambda": True}, [0.80, 0.83, 0.81]),
    "random_z": (True, {"kdci.random_z": True}, [0.79, 0.80, None]),  # seed 2: no result
    "uniform_p": (True, {"kdci.uniform_p": True}, [0.82, 0.84, 0.82]),
}


def _ablation_sweep(root: Path) -> Path:
    """A finished sweep whose arms are cases, as ablation_prior.yaml runs it: the trials'
    params.json hold only the case's name and the seed (the cases come from sweep.yaml)."""
    cases = [{"name": name, "kdci.enabled": kdci, **extra}
             for name, (kdci, extra, _) in ABLATION.items()]
    root.mkdir(parents=True)
    search = {"cases": cases, "seed": [0, 1, 2]}
    (root / "sweep.yaml").write_text(yaml.safe_dump({"name": "ablation", "search": search}))
    for name, (kdci, _, accs) in ABLATION.items():
        for seed, acc in enumerate(accs):
            reports = [] if acc is None else [_report(1, acc, finished=1.0, **(
                {"eval/acc_kdci": acc + 0.01} if kdci else {}))]
            _trial(root, f"{name}_{seed}", {"cases": name, "seed": seed}, reports,
                   {"config.yaml": "method: dfnd\n"})
    return root


def test_case_arms_are_compared_with_the_vanilla_case(tmp_path: Path) -> None:
    """The bug: with cases as arms every row of "KDCI − vanilla" was "–" (each case ran with one
    KDCI setting, so no case had both sides). Each KDCI case is now compared with the vanilla
    case, paired by seed."""
    rows = rows_from_sweep(_ablation_sweep(tmp_path / "sweep"))
    assert rows.groupby("case")["kdci"].first().to_dict() == {
        name: kdci for name, (kdci, _, _) in ABLATION.items()}
    summary = summarize(rows).set_index("case")
    vanilla = statistics.mean(ABLATION["vanilla"][2])
    assert math.isnan(summary.loc["vanilla", "delta_acc"])  # the reference itself
    for name in ("kdci", "random_lambda", "uniform_p"):
        expected = statistics.mean(ABLATION[name][2]) - vanilla
        assert summary.loc[name, "delta_acc"] == pytest.approx(expected)

    text = write_tables(rows, tmp_path / "out", "ablation")
    table = text.split("### KDCI − vanilla", 1)[1].splitlines()
    body = [ln for ln in table if ln.startswith("| ") and not ln.startswith("| case")]
    assert [ln.split(" | ")[0] for ln in body] == [
        "| kdci", "| random_lambda", "| random_z", "| uniform_p"]  # no row for vanilla itself
    assert not any(ln.count("| – |") for ln in body)
    # kdci − vanilla per seed: 0.04, 0.03, 0.05 -> mean 4.00, sd 1.00, half 4.303 / sqrt(3)
    assert "| kdci | dfnd | +4.00 pp | +4.00 pp | [+1.52, +6.48] | yes | 3 | 0 |" in body
    # random_z has no result for seed 2: 2 pairs (-1.0, -2.0 pp), 1 unpaired seed
    half = 12.706 * statistics.stdev([-0.01, -0.02]) / math.sqrt(2)
    mean_all = statistics.mean([0.79, 0.80]) - vanilla
    line = (f"| random_z | dfnd | {100 * mean_all:+.2f} pp | -1.50 pp | "
            f"[{100 * (-0.015 - half):+.2f}, {100 * (-0.015 + half):+.2f}] | no | 2 | 1 |")
    assert line in body
