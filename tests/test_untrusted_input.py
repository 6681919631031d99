"""Nothing wrong is trusted (issue 13): duplicated YAML keys and grid values, an SKDCGN file
given to the distillation sweep, outputs that cannot be written, a ``sweep.yaml`` that is not a
record or was edited after launch, and the modes of atomically written files.

Each bad input gets one clear error through the real command line (exit 2, one line, no
traceback) before anything is trained or written. Unwritable directories are made so for real:
``chattr +i`` where it works (tests run as root here, and permission bits do not stop root), else
``chmod 0555`` for a non-root user; where neither makes the directory unwritable, those tests are
skipped (``--output`` under a regular file needs no such trick and always runs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from refusal import assert_refused

from kdci_ray.atomic import atomic_write_text
from kdci_ray.config.files import parse_yaml
from kdci_ray.engine import plan_sweep
from kdci_ray.engine.sweep_dir import (
    BadRecord,
    check_output,
    load_record,
    prepare_output,
    read_record,
)
from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd import resolve, save_resolved
from kdci_ray.results import report
from kdci_ray.search.cases import case_lookup, config_layer, expand

# a valid experiment (nothing here trains: every case is refused before the teacher is needed)
BASE = ("preset: embedded\nmethod: dafl\nteacher.arch: tiny_cnn\nstudent.arch: tiny_cnn\n"
        "train.rounds: 2\ntrain.kd_steps: 2\n")
SETTINGS = yaml.safe_load(BASE)


def _write(tmp: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def _cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit 2 with one one-line error and no traceback; return it."""
    err = assert_refused(capsys, argv, [])
    assert len(err.strip().splitlines()) == 1, err
    return err


def _out_is_file(tmp: Path) -> list[str]:
    (tmp / "taken").write_text("a file")
    return ["--output", str(tmp / "taken")]


def _out_under_file(tmp: Path) -> list[str]:
    (tmp / "taken").write_text("a file")
    return ["--output", str(tmp / "taken" / "sweep")]


# name: (YAML text after BASE, --output argv or None for tmp/out, what the message must say)
CASES: dict[str, tuple[str, Callable[[Path], list[str]] | None, list[str]]] = {
    "duplicated key": ("train.rounds: 3\n", None,
                       ["exp.yaml", "key 'train.rounds' appears twice (lines 5 and 7)"]),
    "duplicated nested key": ("kdci:\n  k: 4\n  enabled: true\n  k: 8\n", None,
                              ["exp.yaml", "key 'k' appears twice (lines 8 and 10)"]),
    "duplicated search key": ("search:\n  seed: [0, 1]\n  seed: [2]\n", None,
                              ["exp.yaml", "key 'seed' appears twice (lines 8 and 9)"]),
    "duplicated key inside a case": (
        "search:\n  cases:\n    - {name: a, seed: 1, seed: 2}\n", None,
        ["exp.yaml", "key 'seed' appears twice (lines 9 and 9)"]),
    "key both dotted and nested": ("kdci.k: 4\nkdci:\n  k: 8\n", None,
                                   ["'kdci.k' is set twice", "exp.yaml", "keep one"]),
    "duplicated grid value": ("search:\n  seed: [0, 0, 1]\n", None,
                              ["search key 'seed'", "grid value 0 is listed twice"]),
    "duplicated grid value (spec)": ("search:\n  method: {grid: [dafl, deepinv, dafl]}\n", None,
                                     ["search key 'method'", "'dafl' is listed twice",
                                      "positions 1 and 3"]),
    "duplicated choice value": ("search:\n  train.lr: {choice: [0.1, 0.1]}\n", None,
                                ["search key 'train.lr'", "choice value 0.1 is listed twice"]),
    "two cases that are the same": (
        "search:\n  cases:\n    - {name: a, seed: 1}\n    - {name: b, seed: 1}\n", None,
        ["search 'cases'", "cases 1 ('a') and 2 ('b') set the same values"]),
    "output is a file": ("", _out_is_file, ["taken is a file, not a directory",
                                            "choose another --output"]),
    "output under a file": ("", _out_under_file, ["taken is a file, not a directory"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_untrusted_input_gets_one_clear_error(tmp_path, capsys, case) -> None:
    extra, output, expected = CASES[case]
    config = _write(tmp_path, BASE + extra)
    out = tmp_path / "out"
    argv = output(tmp_path) if output else ["--output", str(out)]
    err = _cli_error(capsys, ["sweep", str(config), *argv])
    for text in expected:
        assert text in err, (text, err)
    assert not out.exists()


def test_an_skdcgn_experiment_without_its_kind_is_told_to_name_it(tmp_path, capsys) -> None:
    config = _write(tmp_path, "data.variant: colored\nsearch:\n  seed: [0, 1]\n")
    err = _cli_error(capsys, ["sweep", str(config), "--output", str(tmp_path / "out")])
    assert "holds SKDCGN keys but no `kind: skdcgn`" in err, err
    assert not (tmp_path / "out").exists()
    # and a file of one kind is not run as another
    named = _write(tmp_path, "kind: dfkd\nmethod: dafl\n")
    err = _cli_error(capsys, ["cgn", str(named), "--output", str(tmp_path / "out")])
    assert "is a 'dfkd' experiment, not 'skdcgn'" in err, err


def test_a_dfkd_typo_is_still_a_dfkd_error(tmp_path, capsys) -> None:
    config = _write(tmp_path, BASE + "train.kd_step: 3\n")
    err = _cli_error(capsys, ["sweep", str(config), "--output", str(tmp_path / "out")])
    assert "unknown config key 'train.kd_step'" in err and "SKDCGN" not in err


def test_yaml_loader_allows_merge_overrides_and_distinct_keys() -> None:
    text = "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\n"
    assert parse_yaml(text, "t.yaml") == {"base": {"x": 1, "y": 2},
                                         "derived": {"x": 1, "y": 3}}
    with pytest.raises(ConfigError, match=r"t.yaml: key 'y' appears twice \(lines 3 and 4\)"):
        parse_yaml("a:\n  b:\n    y: 1\n    y: 2\n", "t.yaml")


# ----------------------------------------------------------------------------- permissions


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_umask_mode(tmp_path, umask, mode) -> None:
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "new.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def test_atomic_write_keeps_an_existing_files_mode(tmp_path) -> None:
    path = tmp_path / "kept.txt"
    path.write_text("old")
    path.chmod(0o640)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o640


def test_a_sweep_record_is_readable_by_others(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        out = _launch(tmp_path, "search:\n  seed: [0, 1]\n")
    finally:
        os.umask(old)
    assert (out / "sweep.yaml").stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------- unwritable


@contextmanager
def _unwritable(directory: Path) -> Iterator[None]:
    """``directory`` really unwritable for this process (``chattr +i``, else ``chmod 0555``)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o555)
    undo = [lambda: directory.chmod(0o755)]
    if _can_write(directory) and shutil.which("chattr"):
        if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0:
            undo.insert(0, lambda: subprocess.run(["chattr", "-i", str(directory)], check=True))
    try:
        if _can_write(directory):
            pytest.skip("cannot make a directory unwritable here (root without chattr)")
        yield
    finally:
        for step in undo:
            step()


def _can_write(directory: Path) -> bool:
    try:
        (directory / ".probe").write_text("")
    except OSError:
        return False
    (directory / ".probe").unlink()
    return True


def test_an_unwritable_output_directory_is_refused_before_anything_runs(tmp_path) -> None:
    config = _write(tmp_path, BASE)
    locked = tmp_path / "locked"
    with _unwritable(locked):
        for out in (locked, locked / "new" / "sweep"):
            with pytest.raises(ConfigError, match="cannot write into .*locked.*choose another"):
                check_output(plan_sweep(config, output=str(out)), overwrite=False)


def test_report_into_an_unwritable_sweep_directory(tmp_path, capsys) -> None:
    out = _launch(tmp_path, "search:\n  seed: [0, 1]\n")
    _trial(out, {"seed": 0}, "seed0_00000")
    with _unwritable(out):
        err = _cli_error(capsys, ["report", str(out)])
    assert f"cannot write into {out}" in err and "run `kdci-ray report` on the copy" in err
    assert not (out / "summary.csv").exists()
    assert "## exp" in report(out)  # writable again: the same call succeeds
    assert (out / "summary.csv").is_file()


# ----------------------------------------------------------------------------- resume


def _launch(tmp: Path, extra: str, name: str = "exp.yaml") -> Path:
    """A sweep directory as a launch leaves it (the real ``sweep.yaml``) plus Tune's state."""
    out = tmp / "out"
    prepare_output(plan_sweep(_write(tmp, BASE + extra, name), output=str(out)),
                   overwrite=False)
    (out / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    return out


def _trial(out: Path, params: dict, name: str, with_params: bool = True) -> Path:
    """A started trial as ``driver.trial_fn`` leaves it: its resolved ``config.yaml`` (from the
    sweep's own record) and Tune's ``params.json``."""
    record = read_record(out)
    cfg = resolve(record["settings"], config_layer(expand(params, case_lookup(
        record["search"]))), record["overrides"])
    save_resolved(cfg, out / name / "config.yaml")
    if with_params:
        (out / name / "params.json").write_text(json.dumps(params))
    return out / name


def _edit_record(out: Path, edit: Callable[[dict], None]) -> None:
    record = yaml.safe_load((out / "sweep.yaml").read_text())
    edit(record)
    (out / "sweep.yaml").write_text(yaml.safe_dump(record, sort_keys=False))


def _set_schedule(record: dict) -> None:
    record["settings"]["train.lr_schedule"] = "constant"


@pytest.mark.parametrize("with_params", [True, False])
def test_resume_refuses_a_record_edited_after_launch(tmp_path, capsys, with_params) -> None:
    out = _launch(tmp_path, "search:\n  seed: [0, 1]\n")
    _trial(out, {"seed": 0}, "seed0_00000", with_params)
    check_output(plan_sweep(out), overwrite=False, resume=True)  # as launched: accepted
    _edit_record(out, _set_schedule)
    err = _cli_error(capsys, ["sweep", str(out), "--resume"])
    assert "trial seed0_00000" in err, err
    assert "train.lr_schedule='cosine' (its config.yaml)" in err
    assert "now resolves it to train.lr_schedule='constant'" in err
    assert "sweep.yaml was changed after the sweep started; restore it, or start a new sweep " \
           "with --output elsewhere" in err


def test_resume_refuses_an_edit_no_started_trial_shows(tmp_path, capsys) -> None:
    out = _launch(tmp_path, "search:\n  seed: [0, 1]\n")
    _trial(out, {"seed": 0}, "seed0_00000")
    _edit_record(out, lambda r: r["search"].update(seed=[0, 5]))  # seed 1 had not started
    err = _cli_error(capsys, ["sweep", str(out), "--resume"])
    assert "was changed after the sweep started" in err and "digest" in err, err


def test_resume_checks_cases_by_their_names(tmp_path, capsys) -> None:
    out = _launch(tmp_path, "search:\n  cases:\n    - {name: short, train.rounds: 2}\n"
                            "    - {name: long, train.rounds: 4}\n")
    _trial(out, {"cases": "long"}, "long_00001")
    check_output(plan_sweep(out), overwrite=False, resume=True)
    _edit_record(out, lambda r: r["search"]["cases"][1].update({"train.rounds": 6}))
    err = _cli_error(capsys, ["sweep", str(out), "--resume"])
    assert "trial long_00001" in err and "train.rounds=4" in err and "train.rounds=6" in err


def test_resume_with_the_experiment_checks_it_against_the_trials(tmp_path, capsys) -> None:
    out = _launch(tmp_path, "search:\n  seed: [0, 1]\n")
    _trial(out, {"seed": 0}, "seed0_00000")
    other = _write(tmp_path, BASE + "train.lr_schedule: constant\nsearch:\n  seed: [0, 1]\n",
                   "other.yaml")
    (out / "sweep.yaml").write_text("settings: [not, a, record]\n")
    err = _cli_error(capsys, ["sweep", str(other), "--output", str(out), "--resume"])
    assert "trial seed0_00000" in err and "the experiment given now resolves it to" in err
    assert "resume it with the experiment YAML it was launched from" in err


# broken sweep.yaml: (its text, what the reason must say)
BROKEN = {
    "a list": ("- name: x\n- settings: {}\n", "it holds a list, not a mapping"),
    "settings a list": ("name: x\nsettings: [a, b]\n", "its 'settings' is a list"),
    "overrides a list": ("name: x\nsettings: {}\noverrides: [a]\n", "its 'overrides' is a list"),
    "search a list": ("name: x\nsettings: {}\nsearch: [seed]\n", "its 'search' is a list"),
    "not YAML": ("name: [unclosed\n", "not valid YAML"),
    "duplicated key": ("name: x\nname: y\n", "key 'name' appears twice (lines 1 and 2)"),
    "misspelt entry": ("name: x\nsetings: {}\n", "unknown entries 'setings'"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_record_gets_advice_that_works(tmp_path, capsys, case) -> None:
    """Every message's advice leads to success or to a final, different answer: no circle."""
    text, reason = BROKEN[case]
    config = _write(tmp_path, BASE + "search:\n  seed: [0, 1]\n")
    out = _launch(tmp_path, "search:\n  seed: [0, 1]\n")
    _trial(out, {"seed": 0}, "seed0_00000")
    (out / "sweep.yaml").write_text(text)
    with pytest.raises(BadRecord, match="not a kdci-ray sweep record"):
        load_record(out)

    # 1. the directory: names the problem and points at the experiment YAML
    err = _cli_error(capsys, ["sweep", str(out), "--resume"])
    assert f"{out / 'sweep.yaml'} is not a kdci-ray sweep record" in err and reason in err
    assert f"--output {out} --resume" in err and f"--output {out} --overwrite" in err
    # 2a. followed with the experiment it was launched from: accepted, the record written again
    plan = plan_sweep(config, output=str(out))
    prepare_output(plan, overwrite=False, resume=True)
    assert load_record(out)["settings"] == plan.settings
    check_output(plan_sweep(out), overwrite=False, resume=True)  # the directory resumes again
    (out / "sweep.yaml").write_text(text)
    # 2b. with another experiment: a final answer (the trials ran something else)
    other = _write(tmp_path, BASE + "train.lr: 0.2\nsearch:\n  seed: [0, 1]\n", "other.yaml")
    err = _cli_error(capsys, ["sweep", str(other), "--output", str(out), "--resume"])
    assert "trial seed0_00000" in err and "start a new sweep with --output elsewhere" in err
    # 2c. followed with --overwrite: allowed
    check_output(plan, overwrite=True)
    # 3. the experiment without a flag: the same two ways out
    err = _cli_error(capsys, ["sweep", str(config), "--output", str(out)])
    assert "not a kdci-ray sweep record" in err and "--resume" in err and "--overwrite" in err


def test_a_record_edited_by_hand_resumes_with_the_experiment_it_was_launched_from(
        tmp_path, capsys) -> None:
    config = _write(tmp_path, BASE + "search:\n  seed: [0, 1]\n")
    out = _launch(tmp_path, "search:\n  seed: [0, 1]\n")
    _trial(out, {"seed": 0}, "seed0_00000")
    _edit_record(out, _set_schedule)
    plan = plan_sweep(config, output=str(out))
    prepare_output(plan, overwrite=False, resume=True)  # the digest vouches for the experiment
    check_output(plan_sweep(out), overwrite=False, resume=True)  # record restored
    # an experiment that is neither the record nor the launch: a final answer
    _edit_record(out, _set_schedule)
    other = _write(tmp_path, BASE + "train.lr: 0.2\nsearch:\n  seed: [0, 1]\n", "other.yaml")
    err = _cli_error(capsys, ["sweep", str(other), "--output", str(out), "--resume"])
    assert "was changed after the sweep started, and the experiment given is not" in err


def test_a_broken_record_in_a_directory_that_is_no_sweep_is_not_replaced(tmp_path,
                                                                          capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.yaml").write_text("- not a record\n")
    (out / "notes.txt").write_text("precious")
    config = _write(tmp_path, BASE)
    err = _cli_error(capsys, ["sweep", str(config), "--output", str(out), "--overwrite"])
    assert "holds no Ray Tune experiment" in err and "choose another --output" in err
    assert (out / "notes.txt").read_text() == "precious"
