"""Train and cache the teacher on the labelled data (the only place that data is used to train).

The cache lives under ``$KDCI_RAY_CACHE`` (default ``~/.cache/kdci_ray``), keyed by dataset,
split, architecture and seed, so the demo trains it once and reuses it after.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdci_ray.config import ExperimentConfig
from kdci_ray.data import LabeledData, load_dataset
from kdci_ray.methods.pool import augment
from kdci_ray.models import create_model, load_checkpoint, save_checkpoint
from kdci_ray.train.evaluate import accuracy, predict_logits
from kdci_ray.train.runtime import seed_everything

CACHE_VERSION = 1  # bump when the embedded data's preprocessing changes


def cache_dir() -> Path:
    return Path(os.environ.get("KDCI_RAY_CACHE", Path.home() / ".cache" / "kdci_ray")).expanduser()


def teacher_path(cfg: ExperimentConfig) -> Path:
    """Where this config's teacher is read from: ``teacher.checkpoint`` or the embedded cache."""
    if cfg.teacher.checkpoint:
        return Path(cfg.teacher.checkpoint).expanduser().resolve()
    d = cfg.data
    key = (f"v{CACHE_VERSION}_{d.name}{d.image_size}_split{d.split_seed}_{d.test_fraction}_"
           f"{cfg.teacher.arch}_seed{cfg.teacher.seed}")
    return cache_dir() / "teachers" / f"{key}.pt"


def load_data(cfg: ExperimentConfig) -> LabeledData:
    d = cfg.data
    return load_dataset(d.name, d.root, d.image_size, d.test_fraction, d.split_seed)


def build_teacher(cfg: ExperimentConfig, data: LabeledData) -> nn.Module:
    return create_model(cfg.teacher.arch, data.num_classes, data.channels)


def train_teacher(cfg: ExperimentConfig, log=print) -> tuple[Path, float]:
    """Supervised training on the train split; saves to ``teacher_path(cfg)``; returns test acc."""
    tc = cfg.teacher
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
                    num_classes=data.num_classes)
    return path, acc


def ensure_teacher(cfg: ExperimentConfig, log=print) -> Path:
    """The teacher checkpoint for ``cfg``: trains the embedded one when it is missing."""
    path = teacher_path(cfg)
    if path.is_file():
        return path
    if cfg.teacher.checkpoint:
        raise FileNotFoundError(
            f"teacher checkpoint not found: {path} (expected a torch file holding "
            f"{{'state_dict': ...}} for arch '{cfg.teacher.arch}'); fix teacher.checkpoint"
        )
    log(f"no cached teacher at {path}; training one ({cfg.teacher.arch} on {cfg.data.name})")
    train_teacher(cfg, log)
    return path


def load_teacher(cfg: ExperimentConfig, data: LabeledData, device: torch.device) -> nn.Module:
    """The frozen teacher in eval mode; a checkpoint that does not fit raises a clear error."""
    model = build_teacher(cfg, data)
    load_checkpoint(model, teacher_path(cfg))
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
