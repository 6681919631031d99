"""A sweep whose sweep.yaml was deleted has one way out
that works: the experiment YAML with --output DIR --resume (trials checked), or --overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from refusal import assert_refused

from kdci_ray.engine import plan_sweep
from kdci_ray.engine.sweep_dir import check_output, load_record, prepare_output

TINY = {"preset": "embedded", "method": "dafl", "teacher.arch": "tiny_cnn",
        "student.arch": "tiny_cnn", "train.rounds": 2, "train.kd_steps": 2}


def _yaml(path: Path, body: dict) -> Path:
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_a_deleted_record_resumes_with_its_experiment_or_is_overwritten(tmp_path, capsys):
    config = _yaml(tmp_path / "exp.yaml", {**TINY, "search": {"seed": [0, 1]}})
    out = tmp_path / "out"
    plan = plan_sweep(config, output=str(out))
    prepare_output(plan, overwrite=False)
    (out / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    trial = out / "seed0_00000"
    plan.kind.save(plan.kind.resolve(plan.settings, plan.parsed.layer({"seed": 0}),
                                     plan.overrides), trial / "config.yaml")
    (trial / "params.json").write_text(json.dumps({"seed": 0}))
    (out / "sweep.yaml").unlink()
    # 1. the directory names the way out
    err = assert_refused(capsys, ["sweep", str(out), "--resume"], ["no sweep.yaml (deleted?)"])
    assert f"--output {out} --resume" in err
    # 2. followed with the experiment: accepted, the record written again
    prepare_output(plan_sweep(config, output=str(out)), overwrite=False, resume=True)
    assert load_record(out)["settings"] == plan.settings
    (out / "sweep.yaml").unlink()
    # 3. another experiment: a final answer (the trials ran something else)
    other = _yaml(tmp_path / "other.yaml", {**TINY, "train.lr": 0.2, "search": {"seed": [0, 1]}})
    assert_refused(capsys, ["sweep", str(other), "--output", str(out), "--resume"],
                   ["trial seed0_00000", "start a new sweep with --output elsewhere"])
    # 4. --overwrite: allowed; 5. no flag: both ways out named, no circle
    check_output(plan, overwrite=True)
    assert_refused(capsys, ["sweep", str(config), "--output", str(out)],
                   ["it was deleted", "--resume", "--overwrite"])
    # a directory that was never a sweep: "nothing to resume" does not advise running without
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    err = assert_refused(capsys, ["sweep", str(config), "--output", str(tmp_path / "notes"),
                                  "--resume"], ["nothing to resume", "choose another --output"])
    assert "without --resume" not in err


def test_every_sweep_argument_is_checked_from_python(tmp_path) -> None:
    """Proposed (needs the api.py patch): resume, overwrite, an empty output and overrides of
    the wrong type are ConfigErrors from kdci_ray.sweep too."""
    import pytest

    import kdci_ray
    from kdci_ray.errors import ConfigError

    for bad in ({"resume": "no"}, {"overwrite": 1}, {"output": ""}, {"overrides": "a=1"}):
        with pytest.raises(ConfigError, match=f"sweep argument {next(iter(bad))} "):
            kdci_ray.sweep({**TINY}, **{"output": tmp_path / "out", **bad})
    assert not (tmp_path / "out").exists()
