"""Search cases (bundles of keys that vary together) and ``--only`` filters of a sweep."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdci_ray.cli import build_parser, main, parse_args
from kdci_ray.engine import plan_sweep
from kdci_ray.errors import ConfigError
from kdci_ray.results.table import (
    ROW_COLUMNS,
    SUMMARY_COLUMNS,
)
from kdci_ray.search.cases import RESERVED_COLUMNS, case_lookup, config_layer, expand, parse_cases
from kdci_ray.search.space import build_param_space, count_trials, grid_points

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"cifar10": ROOT / "tune_configs" / "cifar10_table1.yaml",
           "cifar100": ROOT / "tune_configs" / "cifar100_table1.yaml"}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- cases


def test_cases_list_multiplies_with_grid_keys() -> None:
    search = {"cases": [{"name": "big", "teacher.arch": "resnet34", "student.arch": "resnet18"},
                        {"teacher.arch": "wrn_40_2", "teacher.checkpoint": "/c/w.pth",
                         "student.arch": "wrn_16_1"}],
              "kdci.enabled": [False, True], "train.lr": {"uniform": [0.01, 0.1]}}
    points = grid_points(search)
    assert count_trials(search) == len(points) == 4
    names = [p["cases"]["name"] for p in points]
    assert names == ["big", "big", "wrn_40_2-wrn_16_1", "wrn_40_2-wrn_16_1"]  # paths left out
    assert config_layer(points[3]) == {"teacher.arch": "wrn_40_2", "teacher.checkpoint": "/c/w.pth",
                                       "student.arch": "wrn_16_1", "kdci.enabled": True}
    space = build_param_space(search)
    assert space["cases"] == {"grid_search": ["big", "wrn_40_2-wrn_16_1"]}  # Tune sees names
    params = {"cases": "big", "kdci.enabled": False, "train.lr": 0.05}
    layer = config_layer(expand(params, case_lookup(search)))
    assert layer == {"teacher.arch": "resnet34", "student.arch": "resnet18",
                     "kdci.enabled": False, "train.lr": 0.05}


def test_case_groups_multiply_and_nested_sections_flatten() -> None:
    groups = parse_cases({"pair": [{"name": "p", "teacher": {"arch": "resnet34"}}],
                          "schedule": [{"method": "dafl", "train.rounds": 3},
                                       {"method": "cmi", "train.rounds": 4}]})
    assert list(groups) == ["cases.pair", "cases.schedule"]
    assert groups["cases.pair"] == [{"name": "p", "teacher.arch": "resnet34"}]
    assert [c["name"] for c in groups["cases.schedule"]] == ["dafl-rounds3", "cmi-rounds4"]
    assert count_trials({"cases": {"a": [{"seed": 1}, {"seed": 2}], "b": [{"method": "cmi"}]},
                         "kdci.enabled": [False, True]}) == 4


@pytest.mark.parametrize(
    ("cases", "fragment"),
    [
        (3, "must be a list of mappings or a mapping"),
        ({}, "must be a list of mappings or a mapping"),
        ([], "expands to zero trials"),
        ({"pair": []}, "expands to zero trials"),
        ({"pair": {"a": 1}}, "must be a list of mappings"),
        ([3], "case 1 must be a mapping"),
        ([{"name": "x"}], "sets no config key"),
        ([{"train.lr": {"grid": [0.1, 0.2]}}], "one fixed value"),
        ([{"train.lr": [0.1, 0.2]}], "one fixed value"),
        ([{"name": "a", "seed": 1}, {"name": "a", "seed": 2}], "both named 'a'"),
        ([{"seed": 1}, {"seed": 1}], "both named 'seed1'"),
        ([{"name": "a b", "seed": 1}], "name 'a b'"),
        ([{"name": True, "seed": 1}], "name True"),
        ({"pair list": [{"seed": 1}]}, "must be a word"),
        ({"method": [{"seed": 1}]}, "clashes with a results-table column"),
    ],
)
def test_bad_cases_shape_is_a_clear_error(cases: object, fragment: str) -> None:
    for func in (grid_points, count_trials, build_param_space):
        with pytest.raises(ConfigError, match="cases") as info:
            func({"cases": cases})
        assert fragment in str(info.value)


def test_case_keys_are_checked_and_may_vary_in_one_place_only(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.yaml", "search:\n  cases:\n    - {seed: 0}\n"
                                        "    - {teacher.ach: resnet34}\n")
    with pytest.raises(ConfigError) as info:
        plan_sweep(bad)
    msg = str(info.value)
    assert "teacher.ach" in msg and str(bad) in msg and "case 2" in msg
    assert "did you mean 'teacher.arch'" in msg
    with pytest.raises(ConfigError, match="'seed' is set both by search 'cases' and by search key"):
        grid_points({"cases": [{"seed": 1}], "seed": [0, 1]})
    with pytest.raises(ConfigError, match="'seed' is set both by search 'cases.b'"):
        grid_points({"cases": {"a": [{"seed": 1}], "b": [{"seed": 2}]}})
    with pytest.raises(ConfigError, match=r"write case groups as `cases: \{pair: \[...\]\}`"):
        grid_points({"cases.pair": [{"seed": 1}]})
    # a file without cases still goes through config.load_experiment's own checks
    typo = _write(tmp_path / "typo.yaml", "search:\n  kdci.enable: [false, true]\n")
    with pytest.raises(ConfigError, match="kdci.enable'.*search section"):
        plan_sweep(typo)


def test_reserved_group_names_cover_the_table_columns() -> None:
    assert set(ROW_COLUMNS) | set(SUMMARY_COLUMNS) <= set(RESERVED_COLUMNS)


# ----------------------------------------------------------------------------- --only


def _only(*items: str, smoke: bool = False) -> list:
    return plan_sweep(CONFIGS["cifar10"], smoke=smoke, only=list(items)).configs


def test_only_or_within_a_key_and_across_keys() -> None:
    assert {c.method for c in _only("method=dafl")} == {"dafl"} and len(_only("method=dafl")) == 10
    two = _only("method=dafl", "method=dfnd")
    assert len(two) == 20 and {c.method for c in two} == {"dafl", "dfnd"}
    sub = _only("cases.pair=wrn_40_2-wrn_16_1", "method=dafl", "method=dfnd")
    assert [(c.student.arch, c.method, c.kdci.enabled) for c in sub] == [
        ("wrn_16_1", "dafl", False), ("wrn_16_1", "dafl", True),
        ("wrn_16_1", "dfnd", False), ("wrn_16_1", "dfnd", True)]
    assert len(_only("teacher.arch=wrn_40_2")) == 36  # three pairs share the teacher
    assert len(_only("kdci.enabled=true", "train.kd_steps=400")) == 15  # typed like overrides
    assert len(_only("dafl.onehot_weight=0.05")) == 10  # another method's key never matches


def test_only_cuts_the_search_that_tune_runs(tmp_path: Path) -> None:
    plan = plan_sweep(CONFIGS["cifar10"], output=str(tmp_path / "o"),
                      only=["cases.pair=resnet34-resnet18", "method=cmi", "kdci.enabled=true"])
    assert len(plan.configs) == 1 and plan.grid_size == 60
    assert count_trials(plan.search) == 1
    space = build_param_space(plan.search)
    assert space == {"cases.pair": {"grid_search": ["resnet34-resnet18"]},
                     "cases.schedule": {"grid_search": ["cmi"]},
                     "kdci.enabled": {"grid_search": [True]}}
    again = plan_sweep(_write(tmp_path / "cut.yaml", yaml.safe_dump(
        {**plan.settings, "search": plan.search})))  # the cut search is a valid search
    assert len(again.configs) == 1 and again.configs[0].method == "cmi"


@pytest.mark.parametrize(
    ("items", "fragment"),
    [
        (["method=dafel"], "--only method=dafel matches no grid point; method takes: cmi, dafl"),
        # the values as configured, not smoke mode's (which sets every train.rounds to 2)
        (["train.rounds=2"], "train.rounds takes: 200, 220, 240000, 39200"),
        (["cases.pair=r34"], "cases.pair takes: resnet34-resnet18, vgg11_bn-resnet18"),
        (["cases.teacher=x"], "no case group 'cases.teacher' (case groups: cases.pair, cases"),
        (["method=dafl", "method=cmi", "train.lr=0.2"], "no point matches all of them"),
        (["teacher.ach=resnet34"], "did you mean 'teacher.arch'"),
        (["method"], "must look like key=value"),
        (["seed=x"], "config key 'seed' expects int"),
    ],
)
def test_only_errors(items: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        _only(*items, smoke=True)
    assert fragment in str(info.value)


def test_only_refuses_sampled_keys_and_non_grids(tmp_path: Path) -> None:
    sampled = _write(tmp_path / "s.yaml", "search:\n  method: [dafl]\n"
                                          "  train.lr: {uniform: [0.01, 0.1]}\n")
    with pytest.raises(ConfigError, match="'train.lr' is sampled"):
        plan_sweep(sampled, only=["train.lr=0.05"])
    # train.rounds=10 holds for (short, dafl), (short, deepinv), (preset, deepinv): not a grid
    mixed = _write(tmp_path / "m.yaml", "preset: embedded\nsearch:\n  cases:\n"
                                        "    - {name: short, train.rounds: 10}\n"
                                        "    - {name: preset, seed: 0}\n"
                                        "  method: [dafl, deepinv]\n")
    with pytest.raises(ConfigError, match="keep 3 grid points that do not form a sub-grid"):
        plan_sweep(mixed, only=["train.rounds=10"])


def test_cli_only_error_and_overrides_after_options(tmp_path: Path, capsys) -> None:
    args = parse_args(build_parser(), ["sweep", "c.yaml", "--smoke", "--only", "method=dafl",
                                       "data.root=/x", "--only", "seed=0", "seed=1"])
    assert args.only == ["method=dafl", "seed=0"] and args.overrides == ["data.root=/x", "seed=1"]
    code = main(["sweep", str(CONFIGS["cifar10"]), "--only", "method=nope",
                 "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "method takes: cmi, dafl, deepinv, dfnd, fast, mosaickd" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        parse_args(build_parser(), ["report", "dir", "x=1"])
