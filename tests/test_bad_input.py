"""The README's bad-input table, row by row, through the real command line: each input gets one
clear message (exit code 2, no traceback) naming the problem and the fix, before any trial
starts, and nothing in the output directory is created or overwritten."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from refusal import assert_refused

from kdci_ray.cli import main
from kdci_ray.models import create_model, save_checkpoint


def _yaml(tmp: Path, body: dict, name: str = "exp.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _garbage_cifar(tmp: Path) -> dict:
    root = tmp / "cifar"
    (root / "cifar-10-batches-py").mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch"]:
        (root / "cifar-10-batches-py" / name).write_text("not a pickle")
    return {"data.name": "cifar10", "data.root": str(root)}


def _checkpoint(tmp: Path, arch: str, classes: int) -> str:
    path = tmp / f"{arch}_{classes}.pt"
    save_checkpoint(create_model(arch, classes, 1), path)
    return str(path)


def _garbage_checkpoint(tmp: Path) -> str:
    path = tmp / "broken.pt"
    path.write_bytes(b"\x00truncated download")
    return str(path)


# name: (settings builder, extra argv, what the message must say)
CASES: dict[str, tuple[Callable[[Path], dict], list[str], list[str]]] = {
    "unknown key": (lambda t: {"train.kd_step": 3}, [],
                    ["unknown config key 'train.kd_step'", "did you mean 'train.kd_steps'"]),
    "unknown override": (lambda t: {}, ["kdci.enable=true"],
                         ["kdci.enable'", "kdci.enabled"]),
    "unknown search key": (lambda t: {"search": {"train.lrr": [0.1]}}, [],
                           ["train.lrr", "train.lr"]),
    "wrong value type": (lambda t: {"train.rounds": "many"}, [],
                         ["'train.rounds' expects int", "'many'"]),
    "value not allowed": (lambda t: {"kdci.backend": "gpu"}, [],
                          ["'kdci.backend' must be one of", "cuml"]),
    "missing data path": (lambda t: {"data.name": "cifar10", "data.root": str(t / "nope")}, [],
                          [str(Path("nope")), "data_batch_1"]),
    "unreadable data": (_garbage_cifar, [],
                        ["data_batch_1 is not a CIFAR python pickle batch", "b'data'"]),
    "missing checkpoint": (lambda t: {"teacher.arch": "tiny_cnn",
                                      "teacher.checkpoint": str(t / "gone.pt")}, [],
                           ["checkpoint not found", "gone.pt", "state_dict"]),
    "unreadable checkpoint": (lambda t: {"teacher.arch": "tiny_cnn",
                                         "teacher.checkpoint": _garbage_checkpoint(t)}, [],
                              ["could not read checkpoint", "broken.pt", "torch.save"]),
    "checkpoint of another architecture": (
        lambda t: {"teacher.arch": "tiny_cnn",
                   "teacher.checkpoint": _checkpoint(t, "digits_cnn_small", 10)}, [],
        ["does not match model", "shape mismatches"]),
    "checkpoint of another class count": (
        lambda t: {"teacher.arch": "tiny_cnn", "teacher.checkpoint": _checkpoint(t, "tiny_cnn", 7)},
        [], ["does not match model", "fc.weight: checkpoint (7, 16) vs model (10, 16)"]),
    "K larger than the samples": (lambda t: {"method": "dafl", "kdci.enabled": True,
                                             "kdci.k": 500}, [],
                                  ["K=500 is larger than", "lower kdci.k"]),
    "grid of zero trials": (lambda t: {"search": {"seed": {"grid": []}}}, [],
                            ["zero trials", "seed"]),
    "bad checkpoint interval": (lambda t: {"run.checkpoint_every": 3, "train.eval_every": 2}, [],
                                ["run.checkpoint_every", "multiple of train.eval_every"]),
    "malformed worker resources": (lambda t: {"run.worker_resources": "accel"}, [],
                                   ["run.worker_resources", "'name=amount'", "'accel'"]),
    "worker resources naming GPU": (lambda t: {"run.worker_resources": "GPU=1"}, [],
                                    ["must not name 'GPU'", "run.gpus_per_worker"]),
    "non-positive start timeout": (lambda t: {"run.start_timeout_s": 0}, [],
                                   ["run.start_timeout_s", "must be > 0"]),
    "one-process trainer with a worker group": (
        lambda t: {"run.trainer": "tune_trial", "run.workers": 2}, [],
        ["run.trainer' tune_trial", "run.workers is 2", "ray_train"]),
    "trainers that differ between trials": (
        lambda t: {"search": {"run.workers": [1, 2]}}, [],
        ["different run.trainer values (ray_train, tune_trial;", "set run.trainer"]),
    "resume with nothing to resume": (lambda t: {}, ["--resume"],
                                      ["nothing to resume", "without --resume"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_one_clear_error_and_writes_nothing(tiny_settings, tmp_path, capsys,
                                                           case) -> None:
    build, argv, expected = CASES[case]
    out = tmp_path / "out"
    config = _yaml(tmp_path, {**tiny_settings, **build(tmp_path)})
    assert_refused(capsys, ["sweep", str(config), "--output", str(out), *argv], expected, out)


def _launched(tmp_path: Path, settings: dict, body: dict, name: str) -> tuple[Path, Path]:
    """A sweep directory as a launch leaves it (sweep.yaml written), without running trials."""
    from kdci_ray.engine import plan_sweep
    from kdci_ray.engine.sweep_dir import prepare_output

    out = tmp_path / "out"
    config = _yaml(tmp_path, {**settings, **body}, name)
    prepare_output(plan_sweep(config, output=str(out)), overwrite=False)
    (out / "result_of_a_finished_trial.txt").write_text("precious")
    return config, out


def test_an_output_directory_with_a_different_sweep_is_refused(tiny_settings, tmp_path,
                                                               capsys) -> None:
    _, out = _launched(tmp_path, tiny_settings, {"method": "dafl"}, "first.yaml")
    before = (out / "sweep.yaml").read_text()
    other = _yaml(tmp_path, {**tiny_settings, "method": "deepinv"}, "second.yaml")
    for extra in ([], ["--resume"]):
        code = main(["sweep", str(other), "--output", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 2 and "holds a different sweep" in err, err
        assert len(err.strip().splitlines()) == 1
    assert (out / "sweep.yaml").read_text() == before
    assert (out / "result_of_a_finished_trial.txt").read_text() == "precious"


def test_the_same_sweep_again_points_at_resume_and_overwrite(tiny_settings, tmp_path,
                                                             capsys) -> None:
    config, out = _launched(tmp_path, tiny_settings, {"method": "dafl"}, "same.yaml")
    code = main(["sweep", str(config), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "already holds the same sweep" in err
    assert "--resume" in err and "--overwrite" in err
    # the sweep is recorded but no trial ever started: nothing for Tune to resume
    code = main(["sweep", str(config), "--output", str(out), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "no Tune experiment state" in err
    code = main(["sweep", str(out), "--resume", "train.lr=0.3"])
    err = capsys.readouterr().err
    assert code == 2 and "resumed exactly as launched" in err
    assert (out / "result_of_a_finished_trial.txt").read_text() == "precious"


def test_a_trial_the_cluster_can_never_place_is_refused(tiny_settings, tmp_path, capsys,
                                                        ray_session) -> None:
    out = tmp_path / "out"
    config = _yaml(tmp_path, {**tiny_settings, "method": "dafl", "run.workers": 3})
    code = main(["sweep", str(config), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "can never place" in err and "run.workers=3" in err and "at most 2" in err
    assert not out.exists()
