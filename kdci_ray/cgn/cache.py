"""Teacher CGNs and student sets cached on disk, shared by the trials of a sweep.

Counterfactual-augmentation variants change only how counterfactuals are sampled, so their
trials share one teacher per (data, teacher settings, seed) and one student set per (teacher,
student settings, queries); a retrained published teacher is cached per (checkpoint content,
retraining settings, data, seed). Keys hash the settings and the content of every input file
(checkpoint, textures), never a path alone, and an entry built on a device other than the CPU
(whose numbers differ) by that device's type. Entries hold CPU tensors and are loaded onto the
CPU (``map_location``), then moved to the run's device. They live under ``$KDCI_RAY_CACHE/cgn``;
a file lock per key makes a second trial that needs the same entry wait for the first and load
it. Each entry carries the versions of the packages that change it (``CGN_PACKAGES``); one built
with others (or by a kdci_ray that did not record them) is built again and replaced, saying so.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdci_ray.atomic import atomic_write
from kdci_ray.cache import cache_dir
from kdci_ray.cgn.blackbox import BlackBoxCGN, collect_queries
from kdci_ray.cgn.cgn_mnist import (
    IMAGE_SIZE,
    NUM_CLASSES,
    PublishedTeacher,
    published_teacher,
    sha256_of,
)
from kdci_ray.cgn.config import CGNConfig
from kdci_ray.cgn.data import MechanismData
from kdci_ray.cgn.mechanisms import CGN, CHANNELS, MECHANISMS, MechanismGenerator
from kdci_ray.cgn.student import train_student
from kdci_ray.cgn.teacher_fit import fit_teacher
from kdci_ray.environment import CGN_PACKAGES, note_cache_use, say, version_difference, versions
from kdci_ray.errors import ConfigError

CPU = torch.device("cpu")


def _key(*parts: Any) -> str:
    payload = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def data_key(cfg: CGNConfig) -> list[Any]:
    """The data settings plus the content of the texture files they read."""
    d = cfg.data
    files = []
    if d.published and d.textures.strip():
        root = Path(d.textures).expanduser()
        files = [(str(f.relative_to(root)), sha256_of(f)) for f in sorted(root.glob("*/*.jpg"))]
    return [dataclasses.asdict(d), files]


def device_key(device: str | torch.device) -> list[str]:
    """The part of a key that names the device an entry was built on: the device's type, with
    ``tf32`` when TF32 is allowed now (``run.tf32``, set for the run by ``pipeline.run``), and
    nothing for the CPU (so CPU entries keep the keys they always had)."""
    device = torch.device(device)
    if device.type == "cpu":
        return []
    tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    return [device.type, "tf32"] if tf32 else [device.type]


def teacher_key(cfg: CGNConfig, device: str | torch.device = CPU) -> str:
    # v3: a pretrained teacher is keyed by its file's content and the retraining settings
    content = (sha256_of(Path(cfg.teacher.checkpoint).expanduser())
               if cfg.teacher.mode == "pretrained" else None)
    retrain = dataclasses.asdict(cfg.retrain) if cfg.retrain.steps > 0 else None
    return _key("teacher-v3", data_key(cfg), dataclasses.asdict(cfg.teacher), cfg.seed, content,
                retrain, *device_key(device))


def students_key(cfg: CGNConfig, device: str | torch.device = CPU) -> str:
    return _key("students-v1", teacher_key(cfg, device), dataclasses.asdict(cfg.student),
                cfg.queries.per_class, cfg.seed)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def on_cpu(state: Any) -> Any:
    """``state`` (tensors in nested dicts, e.g. state dicts) with every tensor on the CPU; CPU
    tensors and a state dict's ``_metadata`` are kept as they are."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if not isinstance(state, dict):
        return state
    out = type(state)((k, on_cpu(v)) for k, v in state.items())
    if hasattr(state, "_metadata"):
        out._metadata = state._metadata
    return out


ENTRY, VERSIONS = "kdci_ray_cache_entry", "versions"  # an entry file: {ENTRY: state, VERSIONS}


def _load_or_build(path: Path, build: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """The entry at ``path`` (CPU tensors), built and written first when it is not there or
    was built with other package versions."""
    wanted = versions(CGN_PACKAGES)
    with _locked(path):
        status = "built"
        if path.is_file():
            stored = torch.load(path, map_location=CPU, weights_only=True)
            recorded = stored.get(VERSIONS) if isinstance(stored, dict) and ENTRY in stored \
                else None
            stale = version_difference(recorded, wanted)
            if not stale:
                note_cache_use("cgn", path, "hit")
                return stored[ENTRY], True
            say(f"cached SKDCGN entry {path} was built with other package versions ({stale}); "
                f"building it again")
            status = "rebuilt"
        state = on_cpu(build())
        buf = io.BytesIO()
        torch.save({ENTRY: state, VERSIONS: wanted}, buf)
        atomic_write(path, lambda fh: fh.write(buf.getvalue()))
        note_cache_use("cgn", path, status)
        return state, False


def cached_reference(cfg: CGNConfig, which: str,
                     train: Callable[[], tuple[nn.Module, float]],
                     build_model: Callable[[], nn.Module],
                     device: str | torch.device = CPU) -> tuple[nn.Module, float, bool]:
    """A reference classifier (``which``: biased | oracle) and its shifted-test accuracy,
    trained (by ``train``, on ``device``) once per data, classifier settings, seed and device
    (the teacher, students and augmentation do not change it): ``(model on device, accuracy,
    loaded from the cache)``."""
    key = _key("reference-v2", which, data_key(cfg), dataclasses.asdict(cfg.classifier),
               cfg.seed, *device_key(device))

    def build() -> dict[str, Any]:
        model, acc = train()
        return {"acc": torch.tensor(acc, dtype=torch.float64), "state": model.state_dict()}

    state, cached = _load_or_build(cache_dir() / "cgn" / f"ref-{which}-{key}.pt", build)
    model = build_model()
    model.load_state_dict(state["state"])
    return model.to(device).eval(), float(state["acc"]), cached


def cached_metrics(name: str, key_parts: list[Any],
                   compute: Callable[[], dict[str, float]]) -> tuple[dict[str, float], bool]:
    """Metrics computed once per ``key_parts`` (e.g. the shape-domain gap of a teacher)."""
    key = _key(f"metrics-v1-{name}", key_parts)

    def build() -> dict[str, Any]:
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in compute().items()}

    state, cached = _load_or_build(cache_dir() / "cgn" / f"{name}-{key}.pt", build)
    return {k: float(v) for k, v in state.items()}, cached


def cached_teacher_cgn(cfg: CGNConfig, train: MechanismData, log=print,
                       device: str | torch.device = CPU) -> tuple[CGN | PublishedTeacher, bool]:
    """The teacher CGN of ``cfg`` (fitted on ``train`` on ``device``), loaded when already
    cached; with ``teacher.mode: pretrained`` the published CGN-MNIST teacher at
    ``teacher.checkpoint`` (loaded strictly, never cached, ``False``), refused unless it fits
    ``train``. Returned on the CPU: it goes to a ``BlackBoxCGN``, which puts it on the run's
    device in the teacher's own process."""
    t = cfg.teacher
    if t.mode == "pretrained" and cfg.retrain.steps == 0:
        return pretrained_teacher(cfg, train, log), False
    if t.mode == "pretrained":
        return retrained_teacher(cfg, train, log, device)

    def build() -> dict[str, Any]:
        cgn, _ = fit_teacher(train, t, seed=cfg.seed, log=log, device=device)
        return cgn.state_dict()

    state, cached = _load_or_build(
        cache_dir() / "cgn" / f"teacher-{teacher_key(cfg, device)}.pt", build)
    num_classes = int(train.labels.max()) + 1
    cgn = CGN(num_classes, t.latent_dim, t.width, train.images.shape[-1])
    cgn.load_state_dict(state)
    return cgn.eval(), cached


def pretrained_teacher(cfg: CGNConfig, train: MechanismData, log=print) -> PublishedTeacher:
    """The published teacher of ``teacher.checkpoint`` in the interface ``BlackBoxCGN`` reads
    (32x32 answers, textures in [0, 1]); one ``ConfigError`` naming the gap when ``train``'s
    images are not the size or the classes the teacher generates."""
    path = Path(cfg.teacher.checkpoint).expanduser()
    teacher = published_teacher(path)
    log(f"teacher: the published CGN-MNIST teacher {path} ({IMAGE_SIZE}x{IMAGE_SIZE}, "
        f"{NUM_CLASSES} classes), loaded, not fitted")
    size, num_classes = train.images.shape[-1], int(train.labels.max()) + 1
    if size != IMAGE_SIZE or num_classes != NUM_CLASSES:
        raise ConfigError(
            f"teacher.mode=pretrained: the published CGN-MNIST teacher {path} answers "
            f"{IMAGE_SIZE}x{IMAGE_SIZE} images of {NUM_CLASSES} classes, but data.variant="
            f"{cfg.data.variant} gives {size}x{size} images of {num_classes} classes, and the "
            f"students, counterfactuals and classifiers work at the data's size: set "
            f"data.published: true (the variant at 32x32 with the published datasets' facts)")
    return teacher


def retrained_teacher(cfg: CGNConfig, train: MechanismData, log=print,
                      device: str | torch.device = CPU) -> tuple[PublishedTeacher, bool]:
    """The published teacher fine-tuned on ``train`` under ``cfg.retrain`` (SKDCGN's
    composition study, ``kdci_ray.cgn.retrain``) on ``device``, cached; returned on the CPU."""
    from kdci_ray.cgn.cgn_mnist import CGNMnist
    from kdci_ray.cgn.retrain import retrain_cgn

    published = pretrained_teacher(cfg, train, log)

    def build() -> dict[str, Any]:
        model, _ = retrain_cgn(published.cgn.to(device), train, cfg.retrain, seed=cfg.seed,
                               log=log)
        return model.state_dict()

    state, cached = _load_or_build(
        cache_dir() / "cgn" / f"teacher-{teacher_key(cfg, device)}.pt", build)
    model = CGNMnist()
    model.load_state_dict(state, strict=True)
    log(f"teacher: the published teacher retrained for {cfg.retrain.steps} steps "
        f"({'loaded from the cache' if cached else 'trained now'})")
    return PublishedTeacher(model.eval()).eval(), cached


def cached_students_of(cfg: CGNConfig, box: BlackBoxCGN, num_classes: int, log=print,
                       device: str | torch.device = CPU) -> tuple[dict[str, nn.Module], bool]:
    """One student per mechanism, trained on ``device`` from ``box``'s stored queries (or
    loaded), returned on ``device``."""
    s = cfg.student

    def build() -> dict[str, Any]:
        queries = collect_queries(box, cfg.queries.per_class, seed=cfg.seed)
        return {name: train_student(queries[name], s, num_classes, seed=cfg.seed, log=log,
                                    device=device)[0].state_dict() for name in MECHANISMS}

    states, cached = _load_or_build(
        cache_dir() / "cgn" / f"students-{students_key(cfg, device)}.pt", build)
    students = {}
    for name in MECHANISMS:
        g = MechanismGenerator(CHANNELS[name], num_classes, box.latent_dim, s.width,
                               box.image_size)
        g.load_state_dict(states[name])
        students[name] = g.to(device).eval()
    return students, cached
