"""`kdci-ray teacher`: trains on the train split only, caches, reuses, and enforces its bar."""

from __future__ import annotations

import pytest

from kdci_ray.cli import main
from kdci_ray.experiments.dfkd import resolve
from kdci_ray.models import create_model, load_checkpoint
from kdci_ray.train.datasets import load_data
from kdci_ray.train.evaluate import accuracy, predict_logits
from kdci_ray.train.teacher import teacher_path, train_teacher


def test_teacher_command_caches_and_reuses(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KDCI_RAY_CACHE", str(tmp_path))
    args = ["teacher", "teacher.arch=tiny_cnn", "teacher.epochs=2", "teacher.min_acc=0"]
    assert main(args) == 0
    cfg = resolve({"teacher.arch": "tiny_cnn", "teacher.epochs": 2})
    path = teacher_path(cfg)
    assert path.is_file() and path.is_relative_to(tmp_path)
    stamp = path.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert "already cached" in capsys.readouterr().out and path.stat().st_mtime_ns == stamp
    meta = load_checkpoint(create_model("tiny_cnn", 10, 1), path)
    assert meta["arch"] == "tiny_cnn" and 0.0 <= meta["test_acc"] <= 1.0


def test_teacher_below_its_bar_fails_and_saves_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KDCI_RAY_CACHE", str(tmp_path))
    cfg = resolve({"teacher.arch": "tiny_cnn", "teacher.epochs": 1, "teacher.min_acc": 0.999})
    with pytest.raises(RuntimeError, match="teacher.min_acc"):
        train_teacher(cfg, log=lambda m: None)
    assert not teacher_path(cfg).exists()


def test_embedded_teacher_reaches_97_percent(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KDCI_RAY_CACHE", str(tmp_path))
    cfg = resolve({})
    path, acc = train_teacher(cfg, log=lambda m: None)
    model = create_model(cfg.teacher.arch, 10, 1)
    load_checkpoint(model, path)
    import torch

    measured = accuracy(*predict_logits(model, load_data(cfg), torch.device("cpu")))
    assert measured == pytest.approx(acc) and measured >= 0.97
