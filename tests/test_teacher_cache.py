"""The cached teacher is keyed by everything that changes it and checked before use: a smoke run's
1-epoch teacher, or a file that records other settings, is never used (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdci_ray.cli import main
from kdci_ray.engine.files import load_experiment as load_sweep_file
from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd import resolve
from kdci_ray.models import create_model, load_checkpoint, save_checkpoint
from kdci_ray.train.datasets import load_data
from kdci_ray.train.kdci_setup import load_source_model, source_config
from kdci_ray.train.teacher import ensure_teacher, load_teacher, teacher_path, teacher_record

QUICKSTART = Path(__file__).resolve().parents[1] / "tune_configs" / "quickstart.yaml"


def test_a_smoke_teacher_and_the_real_one_have_different_paths() -> None:
    settings = load_sweep_file(QUICKSTART).settings
    real, smoke = resolve(settings), resolve(settings, smoke=True)
    assert smoke.teacher.epochs != real.teacher.epochs
    assert teacher_path(smoke) != teacher_path(real)
    assert teacher_path(smoke).parent == teacher_path(real).parent  # the same cache


@pytest.mark.parametrize("key, value", [("teacher.lr", 0.1), ("teacher.batch_size", 32)])
def test_every_training_setting_changes_the_path(tiny_settings, key: str, value) -> None:
    base = resolve(tiny_settings)
    assert teacher_path(resolve(tiny_settings, {key: value})) != teacher_path(base)


def test_another_thread_count_gets_another_teacher(tiny_settings, monkeypatch) -> None:
    one = teacher_path(resolve(tiny_settings))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    two = teacher_path(resolve(tiny_settings))
    assert one != two and "_t2_" in two.name and "_t1_" in one.name


def _fake_cache(tmp_path: Path, monkeypatch, cfg, **meta) -> Path:
    """A private cache holding an untrained model at ``cfg``'s teacher path, with ``meta``."""
    monkeypatch.setenv("KDCI_RAY_CACHE", str(tmp_path))
    path = teacher_path(cfg)
    torch.manual_seed(0)
    save_checkpoint(create_model(cfg.teacher.arch, 10, 1), path, **meta)
    return path


def test_a_cached_teacher_below_min_acc_is_retrained_not_used(tiny_settings, tmp_path,
                                                              monkeypatch) -> None:
    cfg = resolve(tiny_settings)  # teacher.min_acc 0.5, 4 epochs
    path = _fake_cache(tmp_path, monkeypatch, cfg, test_acc=0.098, record=teacher_record(cfg))
    with pytest.raises(ConfigError, match=r"test acc 0.0980 < teacher.min_acc=0.5"):
        load_teacher(cfg, load_data(cfg), torch.device("cpu"))
    lines: list[str] = []
    assert ensure_teacher(cfg, log=lines.append) == path
    assert "test acc 0.0980 < teacher.min_acc=0.5" in lines[0] and "training one" in lines[0]
    meta = load_checkpoint(create_model("tiny_cnn", 10, 1), path)
    assert meta["test_acc"] >= 0.5 and meta["record"] == teacher_record(cfg)
    load_teacher(cfg, load_data(cfg), torch.device("cpu"))  # now it is used


def test_the_teacher_command_does_not_call_a_bad_cached_file_cached(tiny_settings, tmp_path,
                                                                    monkeypatch, capsys) -> None:
    cfg = resolve(tiny_settings)
    _fake_cache(tmp_path, monkeypatch, cfg, test_acc=0.098, record=teacher_record(cfg))
    assert main(["teacher", *(f"{k}={v}" for k, v in tiny_settings.items())]) == 0
    out = capsys.readouterr().out
    assert "already cached" not in out
    assert "< teacher.min_acc=0.5" in out and "retraining it" in out


def test_a_cached_file_recording_other_settings_is_not_used(tiny_settings, tmp_path,
                                                            monkeypatch) -> None:
    cfg = resolve(tiny_settings)
    other = teacher_record(resolve(tiny_settings, {"teacher.epochs": 1}))
    path = _fake_cache(tmp_path, monkeypatch, cfg, test_acc=0.99, record=other)
    lines: list[str] = []
    ensure_teacher(cfg, log=lines.append)
    assert "trained with other settings (epochs 1 instead of 4)" in lines[0]
    meta = load_checkpoint(create_model("tiny_cnn", 10, 1), path)
    assert meta["record"] == teacher_record(cfg) and meta["test_acc"] != 0.99


def test_a_cached_file_without_a_record_is_not_used(tiny_settings, tmp_path, monkeypatch) -> None:
    cfg = resolve(tiny_settings)
    _fake_cache(tmp_path, monkeypatch, cfg, test_acc=0.99)
    lines: list[str] = []
    ensure_teacher(cfg, log=lines.append)
    assert "carries no record of its settings" in lines[0]


def test_a_weak_cached_kdci_source_model_is_retrained(tiny_settings, tmp_path, monkeypatch) -> None:
    cfg = resolve(tiny_settings, {"method": "dafl", "kdci.enabled": True, "kdci.source": "model",
                         "kdci.source_arch": "tiny_cnn"})
    other = source_config(cfg)
    path = _fake_cache(tmp_path, monkeypatch, other, test_acc=0.098,
                       record=teacher_record(other))
    lines: list[str] = []
    load_source_model(cfg, load_data(cfg), torch.device("cpu"), log=lines.append)
    assert lines[0].startswith(f"cached KDCI source model {path} has test acc 0.0980")
    assert load_checkpoint(create_model("tiny_cnn", 10, 1), path)["test_acc"] >= 0.5
