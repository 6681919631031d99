"""Train and cache the teacher on the labelled data (the only place that data is used to train).

The cache lives under ``$KDCI_RAY_CACHE`` (``kdci_ray.cache``); the run's labelled data come from
``kdci_ray.train.datasets``. A cached teacher's
file name is keyed by everything that changes it (``teacher_record``: data, architecture, seed,
schedule, thread count, cache version): a short readable prefix plus a hash. The file carries
that record, the versions of the packages that change its weights (``TEACHER_PACKAGES``) and its
test accuracy, and all are checked before it is used: one trained with other settings or package
versions, or below the run's ``teacher.min_acc`` (a smoke run's 1-epoch teacher), is retrained
(``ensure_teacher``, saying why) or refused (``load_teacher``, in a trial).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from kdci_ray.cache import cache_dir
from kdci_ray.data import LabeledData
from kdci_ray.environment import TEACHER_PACKAGES, note_cache_use, version_difference, versions
from kdci_ray.errors import ConfigError
from kdci_ray.methods.pool import augment
from kdci_ray.models import create_model, load_checkpoint, save_checkpoint
from kdci_ray.models.checkpoint import read_metadata
from kdci_ray.train.datasets import load_data
from kdci_ray.train.evaluate import accuracy, predict_logits
from kdci_ray.train.runtime import limit_threads, seed_everything, thread_count

if TYPE_CHECKING:
    from kdci_ray.experiments.dfkd import ExperimentConfig

CACHE_VERSION = 2  # bump when the embedded data's preprocessing changes
# what train_teacher does beyond its settings: change it together with train_teacher
SCHEDULE = "sgd(momentum=0.9,nesterov,wd=5e-4)+onecycle+shift(pad=1)"
FINITE_CHECK_BATCH = 256  # test images the finiteness check runs the teacher on


def teacher_record(cfg: ExperimentConfig) -> dict[str, Any]:
    """Everything the embedded teacher of ``cfg`` depends on (saved with it; all but the
    package ``versions`` key its file name: another version retrains it in place)."""
    d, t = cfg.data, cfg.teacher
    return {"cache_version": CACHE_VERSION, "data": d.name, "data_root": d.root,
            "image_size": d.image_size, "test_fraction": d.test_fraction,
            "split_seed": d.split_seed, "arch": t.arch, "seed": t.seed, "epochs": t.epochs,
            "lr": t.lr, "batch_size": t.batch_size, "schedule": SCHEDULE,
            "threads": thread_count(), "versions": versions(TEACHER_PACKAGES)}


def _settings(record: Any) -> Any:
    """A teacher record without its package versions (what keys the file name)."""
    return {k: v for k, v in record.items() if k != "versions"} if isinstance(record, dict) \
        else record


def teacher_path(cfg: ExperimentConfig) -> Path:
    """Where this config's teacher is read from: ``teacher.checkpoint`` or the embedded cache."""
    if cfg.teacher.checkpoint:
        return Path(cfg.teacher.checkpoint).expanduser().resolve()
    record = _settings(teacher_record(cfg))
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]
    d, t = cfg.data, cfg.teacher
    key = (f"{d.name}{d.image_size}_{t.arch}_seed{t.seed}_e{t.epochs}_t{record['threads']}_"
           f"{digest}")
    return cache_dir() / "teachers" / f"{key}.pt"


def cached_teacher_problem(cfg: ExperimentConfig, role: str = "teacher") -> str:
    """Why the teacher file of ``cfg`` cannot be used ("" when it can): missing, or, for the
    embedded cache, unreadable, trained with other settings or below ``teacher.min_acc``."""
    path = teacher_path(cfg)
    if not path.is_file():
        return f"no cached {role} at {path}"
    if cfg.teacher.checkpoint:
        return ""  # the user's own file: checked when it is loaded
    try:
        meta = read_metadata(path)
    except ValueError as exc:
        return f"cached {role} {path} is unreadable ({exc})"
    record, wanted = meta.get("record"), teacher_record(cfg)
    if _settings(record) != _settings(wanted):
        if not isinstance(record, dict):
            return f"cached {role} {path} carries no record of its settings"
        record, wanted = _settings(record), _settings(wanted)
        diff = ", ".join(f"{k} {record.get(k)!r} instead of {wanted.get(k)!r}"
                         for k in {**wanted, **record} if record.get(k) != wanted.get(k))
        return f"cached {role} {path} was trained with other settings ({diff})"
    if not isinstance(record.get("versions"), dict):
        return f"cached {role} {path} records no package versions (an older kdci_ray made it)"
    diff = version_difference(record["versions"], wanted["versions"])
    if diff:
        return f"cached {role} {path} was trained with other package versions ({diff})"
    acc, min_acc = meta.get("test_acc"), cfg.teacher.min_acc
    if not isinstance(acc, float) or not acc >= min_acc:  # NaN too
        shown = f"{acc:.4f}" if isinstance(acc, float) else repr(acc)
        return f"cached {role} {path} has test acc {shown} < teacher.min_acc={min_acc}"
    return ""


def build_teacher(cfg: ExperimentConfig, data: LabeledData) -> nn.Module:
    return create_model(cfg.teacher.arch, data.num_classes, data.channels)


def train_teacher(cfg: ExperimentConfig, log=print) -> tuple[Path, float]:
    """Supervised training on the train split; saves to ``teacher_path(cfg)``; returns test acc."""
    tc = cfg.teacher
    limit_threads()
    record = teacher_record(cfg)
    data = load_data(cfg)
    seed_everything(tc.seed)
    model = build_teacher(cfg, data)
    steps_per_epoch = math.ceil(len(data.x_train) / tc.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=0.9, weight_decay=5e-4,
                          nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc.lr,
                                                total_steps=max(1, tc.epochs * steps_per_epoch))
    gen = torch.Generator().manual_seed(tc.seed)
    x_all = data.normalize(data.x_train)
    for epoch in range(tc.epochs):
        model.train()
        perm = torch.randperm(len(x_all), generator=gen)
        for i in range(0, len(perm), tc.batch_size):
            idx = perm[i:i + tc.batch_size]
            x = augment(x_all[idx], gen, pad=1, flip=False)
            loss = F.cross_entropy(model(x).logits, data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0 or epoch + 1 == tc.epochs:
            acc = accuracy(*predict_logits(model, data, torch.device("cpu")))
            log(f"teacher epoch {epoch + 1}/{tc.epochs}: test acc {acc:.4f}")
    acc = accuracy(*predict_logits(model, data, torch.device("cpu")))
    if acc < tc.min_acc:
        raise RuntimeError(
            f"teacher reached only {acc:.4f} test accuracy (< teacher.min_acc={tc.min_acc}); "
            f"raise teacher.epochs or adjust teacher.lr"
        )
    path = teacher_path(cfg)
    save_checkpoint(model, path, test_acc=acc, arch=tc.arch, dataset=data.name,
                    num_classes=data.num_classes, record=record)
    return path, acc


def ensure_teacher(cfg: ExperimentConfig, log=print, role: str = "teacher") -> Path:
    """The teacher checkpoint for ``cfg``: trains the embedded one when it is missing or its
    cached file cannot be used (``cached_teacher_problem``; the reason is logged)."""
    path = teacher_path(cfg)
    if cfg.teacher.checkpoint:
        if not path.is_file():
            raise FileNotFoundError(
                f"{role} checkpoint not found: {path} (expected a torch file holding "
                f"{{'state_dict': ...}} for arch '{cfg.teacher.arch}'); fix teacher.checkpoint"
            )
        return path
    problem = cached_teacher_problem(cfg, role)
    status = "rebuilt" if problem and path.is_file() else "built" if problem else "hit"
    if problem:
        log(f"{problem}; training one ({cfg.teacher.arch} on {cfg.data.name}, "
            f"{cfg.teacher.epochs} epochs)")
        train_teacher(cfg, log)
    note_cache_use("teacher", path, status, role=role)
    return path


def load_teacher(cfg: ExperimentConfig, data: LabeledData, device: torch.device) -> nn.Module:
    """The frozen teacher in eval mode; a checkpoint that does not fit raises a clear error, a
    cached one that cannot be used (``cached_teacher_problem``) is refused."""
    problem = "" if cfg.teacher.checkpoint else cached_teacher_problem(cfg)
    if problem:
        raise ConfigError(f"{problem}; a sweep of this config (or `kdci-ray teacher`) "
                          f"retrains it")
    model = build_teacher(cfg, data)
    load_checkpoint(model, teacher_path(cfg))
    if not cfg.teacher.checkpoint:
        note_cache_use("teacher", teacher_path(cfg), "hit")
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def check_finite(model: nn.Module, data: LabeledData, path: Path, role: str = "teacher") -> None:
    """Refuse a model whose logits on a batch of the test split are not finite (NaN weights)."""
    x = data.normalize(data.x_test[:FINITE_CHECK_BATCH])
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(x.to(device)).logits
    if not torch.isfinite(logits).all():
        raise ConfigError(f"{role} checkpoint {path}: non-finite logits (NaN/inf) on the test "
                          f"split; the checkpoint is broken")
