"""Bad input gets one clear message (exit code 2), names the problem and the fix, writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdci_ray.cli import main
from kdci_ray.engine import check_inputs, plan_sweep
from kdci_ray.engine.sweep_dir import prepare_output
from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd import resolve
from kdci_ray.models import CheckpointMismatchError, create_model, save_checkpoint
from kdci_ray.train.datasets import load_data
from kdci_ray.train.teacher import load_teacher


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_mistyped_key_in_yaml_names_key_and_closest(tmp_path, capsys) -> None:
    cfg = _write(tmp_path / "bad.yaml", "train.kd_step: 3\n")
    code, err = _run(capsys, "sweep", str(cfg), "--output", str(tmp_path / "out"))
    assert code == 2
    assert "train.kd_step" in err and "did you mean 'train.kd_steps'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_mistyped_override_and_search_key(tmp_path, capsys) -> None:
    cfg = _write(tmp_path / "ok.yaml", "search:\n  kdci.enable: [false, true]\n")
    code, err = _run(capsys, "sweep", str(cfg), "--output", str(tmp_path / "o"))
    assert code == 2 and "kdci.enable'" in err and "kdci.enabled" in err
    cfg2 = _write(tmp_path / "ok2.yaml", "method: dafl\n")
    code, err = _run(capsys, "train", str(cfg2), "train.lr_schedul=cosine")
    assert code == 2 and "train.lr_schedule" in err


def test_missing_cifar_path_is_named_with_expected_layout(tmp_path, capsys) -> None:
    cfg = _write(tmp_path / "c.yaml", f"data.name: cifar10\ndata.root: {tmp_path / 'nope'}\n"
                                      "teacher.arch: resnet34\nstudent.arch: resnet18\n")
    code, err = _run(capsys, "sweep", str(cfg), "--output", str(tmp_path / "out"))
    assert code == 2
    assert str(tmp_path / "nope") in err and "data_batch_1" in err and "test_batch" in err
    assert not (tmp_path / "out").exists()


def test_missing_teacher_checkpoint_is_named(tmp_path, capsys) -> None:
    missing = tmp_path / "teacher.pt"
    cfg = _write(tmp_path / "t.yaml", f"teacher.checkpoint: {missing}\n")
    code, err = _run(capsys, "sweep", str(cfg), "--output", str(tmp_path / "out"))
    assert code == 2 and str(missing) in err and "state_dict" in err


def test_checkpoint_for_another_architecture_lists_keys(tiny_settings, tmp_path) -> None:
    wrong = tmp_path / "wrong.pt"
    save_checkpoint(create_model("digits_cnn_small", 10, 1), wrong)
    cfg = resolve(tiny_settings, {"teacher.checkpoint": str(wrong)})
    with pytest.raises(CheckpointMismatchError) as info:
        load_teacher(cfg, load_data(cfg), torch.device("cpu"))
    msg = str(info.value)
    assert str(wrong) in msg and ("missing" in msg.lower() or "unexpected" in msg.lower())
    assert "features" in msg or "fc" in msg  # names actual offending keys


def test_k_larger_than_refresh_batch_fails_before_any_trial(tmp_path) -> None:
    cfg = _write(tmp_path / "k.yaml", "preset: embedded\nkdci.enabled: true\nkdci.k: 500\n"
                                      "search:\n  method: [dafl, deepinv]\n")
    with pytest.raises(ConfigError, match=r"K=500 is larger than the 128"):
        plan_sweep(cfg, output=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_output_directory_is_never_silently_reused(tiny_settings, tmp_path) -> None:
    cfg = _write(tmp_path / "q.yaml", "method: dafl\n")
    out = tmp_path / "out"
    plan = plan_sweep(cfg, [f"{k}={v}" for k, v in tiny_settings.items()], output=str(out))
    check_inputs(plan, log=lambda m: None)
    prepare_output(plan, overwrite=False)
    (out / "marker").write_text("earlier results")
    with pytest.raises(ConfigError, match="--overwrite"):
        prepare_output(plan, overwrite=False)
    assert (out / "marker").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("not a sweep")
    plan.out_dir = other
    with pytest.raises(ConfigError, match="not a kdci-ray sweep"):
        prepare_output(plan, overwrite=True)
    assert (other / "precious.txt").exists()


def test_sweep_refuses_a_teacher_checkpoint_that_does_not_fit(tiny_settings, tmp_path,
                                                              capsys) -> None:
    wrong = tmp_path / "wrong.pt"
    save_checkpoint(create_model("tiny_cnn", 7, 1), wrong)  # 7 classes, digits has 10
    cfg = _write(tmp_path / "w.yaml", f"teacher.arch: tiny_cnn\nteacher.checkpoint: {wrong}\n")
    code, err = _run(capsys, "sweep", str(cfg), "--output", str(tmp_path / "out"))
    assert code == 2 and str(wrong) in err and "fc" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_train_runs_exactly_one_configuration(tmp_path) -> None:
    cfg = _write(tmp_path / "g.yaml", "search:\n  method: [dafl, deepinv]\n  seed: [0, 1, 2]\n")
    assert len(plan_sweep(cfg, output=str(tmp_path / "a")).configs) == 6
    single = plan_sweep(cfg, ["seed=7"], output=str(tmp_path / "b"), single=True)
    assert len(single.configs) == 1 and single.configs[0].seed == 7


def test_default_output_is_results_stem_under_launch_dir(tmp_path) -> None:
    cfg = _write(tmp_path / "my_grid.yaml", "method: dafl\n")
    plan = plan_sweep(cfg, launch_dir=tmp_path / "launch")
    assert plan.out_dir == (tmp_path / "launch" / "results" / "my_grid").resolve()
