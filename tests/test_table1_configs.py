"""The KDCI Table 1 grids (tune_configs/cifar{10,100}_table1.yaml), ``cases`` and ``--only``."""

from __future__ import annotations

import collections
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from kdci_ray.cli import build_parser, main, parse_args
from kdci_ray.config import SMOKE, ConfigError
from kdci_ray.methods import METHODS
from kdci_ray.tune.cases import RESERVED_COLUMNS, case_lookup, config_layer, expand, parse_cases
from kdci_ray.tune.driver import plan_sweep
from kdci_ray.tune.naming import trial_dirname
from kdci_ray.tune.space import build_param_space, count_trials, grid_points
from kdci_ray.tune.table import (
    ROW_COLUMNS,
    SUMMARY_COLUMNS,
    rows_from_sweep,
    summarize,
    to_markdown,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"cifar10": ROOT / "tune_configs" / "cifar10_table1.yaml",
           "cifar100": ROOT / "tune_configs" / "cifar100_table1.yaml"}
PAIRS = {("resnet34", "resnet18"), ("vgg11_bn", "resnet18"), ("wrn_40_2", "wrn_16_1"),
         ("wrn_40_2", "wrn_40_1"), ("wrn_40_2", "wrn_16_2")}
SIX = {"dafl", "fast", "cmi", "deepinv", "mosaickd", "dfnd"}
TEACHER_ACC = {"cifar10": {"resnet34": 0.9570, "vgg11_bn": 0.9225, "wrn_40_2": 0.9487},
               "cifar100": {"resnet34": 0.7805, "vgg11_bn": 0.7132, "wrn_40_2": 0.7583}}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- the Table 1 YAMLs


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def table1(request) -> tuple[str, object]:
    """(dataset, plan) of one Table 1 YAML, planned without any of its files on disk."""
    return request.param, plan_sweep(CONFIGS[request.param], launch_dir=Path("/tmp"))


def test_table1_expands_to_the_full_grid(table1) -> None:
    dataset, plan = table1
    cfgs = plan.configs
    assert len(cfgs) == 60 == count_trials(plan.search)
    cells = collections.Counter((c.teacher.arch, c.student.arch, c.method, c.kdci.enabled)
                                for c in cfgs)
    assert set(cells.values()) == {1}
    assert {(t, s) for t, s, _, _ in cells} == PAIRS
    assert {m for _, _, m, _ in cells} == SIX
    assert len(build_param_space(plan.search)) == 3  # cases.pair, cases.schedule, kdci.enabled
    for c in cfgs:
        assert c.data.name == dataset and c.preset == "paper" and c.run.use_gpu
        assert (c.pool.source, c.pool.size) == ("npz", 600_000)
        assert Path(c.teacher.checkpoint).name == f"{c.teacher.arch}.pth"
        assert f"/{dataset}/" in c.teacher.checkpoint
        assert c.methods["dfnd"].teacher_acc == TEACHER_ACC[dataset][c.teacher.arch]
        assert not Path(c.data.root).exists()  # planning reads no data, no checkpoint


def test_table1_uses_each_methods_paper_schedule(table1) -> None:
    dataset, plan = table1
    by_method = {c.method: c for c in plan.configs if c.teacher.arch == "resnet34"}
    rounds = {m: (c.train.rounds, c.train.kd_steps, c.train.batch_size, c.train.lr)
              for m, c in by_method.items()}
    assert rounds == {"dafl": (240_000, 1, 1024, 0.1), "deepinv": (200, 400, 256, 0.1),
                      "fast": (220, 400, 256, 0.2), "cmi": (200, 400, 256, 0.1),
                      "mosaickd": (39_200, 5, 512, 0.1), "dfnd": (200, 2344, 256, 0.1)}
    for method in ("cmi", "deepinv", "mosaickd"):  # paper preset: the Config defaults
        assert by_method[method].method_config == METHODS[method].Config()
    assert by_method["dafl"].methods["dafl"].oh == (0.5 if dataset == "cifar100" else 0.05)
    vgg_fast = next(c for c in plan.configs if c.method == "fast" and c.teacher.arch == "vgg11_bn")
    assert vgg_fast.methods["fast"].adv == 1.0


def test_table1_smoke_resolves_tiny_schedules() -> None:
    plan = plan_sweep(CONFIGS["cifar10"], ["run.use_gpu=false"], smoke=True)
    assert len(plan.configs) == 60
    for c in plan.configs:
        assert c.smoke and not c.run.use_gpu
        assert (c.train.rounds, c.train.kd_steps, c.train.batch_size) == (
            SMOKE["train.rounds"], SMOKE["train.kd_steps"], SMOKE["train.batch_size"])
        assert c.pool.size == SMOKE["pool.size"]
        for key, value in METHODS[c.method].SMOKE.items():
            assert getattr(c.method_config, key) == value


def test_table1_trial_names_are_short() -> None:
    trial = SimpleNamespace(trial_id="a1b2_00007", evaluated_params={
        "cases.pair": "wrn_40_2-wrn_16_1", "cases.schedule": "dfnd", "kdci.enabled": True})
    assert trial_dirname(trial) == "wrn_40_2-wrn_16_1_dfnd_kdci_00007"


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
    assert len(_only("dafl.oh=0.05")) == 10  # another method's key never matches


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


# ----------------------------------------------------------------------------- tables


def test_table_has_a_column_per_case_group(tmp_path: Path) -> None:
    search = {"cases": {"pair": [{"name": "p1", "student.arch": "resnet18"},
                                 {"name": "p2", "student.arch": "wrn_16_1"}],
                        "schedule": [{"name": "dafl", "method": "dafl"}]},
              "kdci.enabled": [False, True]}
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.yaml").write_text(yaml.safe_dump({"name": "t", "search": search}))
    accs = {("p1", False): 0.5, ("p1", True): 0.6, ("p2", False): 0.7, ("p2", True): 0.65}
    for i, ((pair, kdci), acc) in enumerate(accs.items()):
        trial = sweep / f"{pair}_dafl_{i:05d}"
        trial.mkdir()
        params = {"cases.pair": pair, "cases.schedule": "dafl", "kdci.enabled": kdci}
        (trial / "params.json").write_text(json.dumps(params))  # no config.yaml: looked up
        report = {"round": 1, "eval/acc": acc, "eval/teacher_acc": 0.9, "finished": 1.0}
        (trial / "result.json").write_text(json.dumps(report) + "\n")
    rows = rows_from_sweep(sweep)
    assert list(rows.columns[:4]) == ["trial", "pair", "schedule", "method"]
    assert list(zip(rows["pair"], rows["kdci"], strict=True)) == list(accs)
    assert (rows["method"] == "dafl").all()
    summary = summarize(rows)
    assert list(summary["pair"]) == ["p1", "p1", "p2", "p2"]
    assert summary["delta_acc"].tolist() == pytest.approx([0.1, 0.1, -0.05, -0.05])
    lines = to_markdown(summary, "t").splitlines()
    assert "| pair | method | KDCI | n | acc (%) | acc_kdci (%) | teacher acc (%) |" in lines
    assert "| p2 | dafl | on | 1 | 65.00 ± 0.00 | – | 90.00 |" in lines
    assert "| p2 | dafl | -5.00 pp |" in lines  # schedule (= method) is not repeated


# ----------------------------------------------------------------------------- smoke run


def _fake_cifar10(root: Path, per_file: int = 20) -> Path:
    """The python-pickle layout of cifar-10-batches-py, ``per_file`` random images per file."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(),
                 b"labels": rng.integers(0, 10, per_file).tolist(),
                 b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(per_file)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return folder


def _fake_imagenet32(root: Path, files: int = 2, per_file: int = 160) -> Path:
    """Downsampled-ImageNet npz batches (``data``: uint8 rows of 3*32*32, ``labels``)."""
    rng = np.random.default_rng(1)
    folder = root / "imagenet32"
    folder.mkdir(parents=True)
    for i in range(1, files + 1):
        np.savez(folder / f"train_data_batch_{i}.npz",
                 data=rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                 labels=rng.integers(1, 1001, per_file))
    return folder


@pytest.mark.slow
def test_table1_smoke_subset_through_the_cli(ray_session, tmp_path: Path, capsys) -> None:
    """One pair x {DAFL, DFND} x KDCI on: both method families, the npz pool and the KDCI
    plug-in through the real CLI and Ray, in one wave of two trials (KDCI off is the path of
    test_sweep_e2e)."""
    from kdci_ray.models import create_model, save_checkpoint

    data = _fake_cifar10(tmp_path / "data")
    pool = _fake_imagenet32(tmp_path / "data")
    ckpt = save_checkpoint(create_model("wrn_40_2", 10), tmp_path / "ckpt" / "wrn_40_2.pth",
                           arch="wrn_40_2")
    out = tmp_path / "sweep"
    only = ["cases.pair=wrn_40_2-wrn_16_1", "method=dafl", "method=dfnd", "kdci.enabled=true"]
    code = main(["sweep", str(CONFIGS["cifar10"]), "--smoke",
                 *[arg for item in only for arg in ("--only", item)],
                 f"data.root={data}", f"pool.path={pool}", f"teacher.checkpoint={ckpt}",
                 "run.use_gpu=false", "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    assert "2 of 60 grid points" in printed

    rows = pd.read_csv(out / "summary.csv")
    assert list(rows.columns[:4]) == ["trial", "pair", "schedule", "method"]
    assert list(zip(rows["method"], rows["kdci"], strict=True)) == [("dafl", True),
                                                                    ("dfnd", True)]
    assert (rows["pair"] == "wrn_40_2-wrn_16_1").all() and rows["finished"].all()
    assert rows["acc"].between(0, 1).all() and rows["acc_kdci"].between(0, 1).all()
    assert rows["rounds_done"].eq(SMOKE["train.rounds"]).all()
    for _, row in rows.iterrows():
        trial = out / row["trial"]
        assert row["trial"].startswith(f"wrn_40_2-wrn_16_1_{row['method']}_kdci_")
        cfg = yaml.safe_load((trial / "config.yaml").read_text())
        assert (cfg["teacher.arch"], cfg["student.arch"], cfg["data.name"]) == (
            "wrn_40_2", "wrn_16_1", "cifar10")
        assert cfg["smoke"] and not cfg["run.use_gpu"] and cfg["pool.source"] == "npz"
        assert (trial / "student.pt").is_file()
    table = (out / "summary.md").read_text()
    for method in ("dafl", "dfnd"):
        assert f"| wrn_40_2-wrn_16_1 | {method} | on | 1 |" in table
    assert yaml.safe_load((out / "sweep.yaml").read_text())["only"] == only
