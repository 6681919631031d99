"""The steps before a sweep's first trial: every input it reads is checked (and the work its
trials share is done) once, before Ray starts, so a bad input costs seconds, not a cluster.

``check_inputs``: the cache directory is writable; data readable; each distinct teacher present
(the embedded one trained once here), fitting its architecture and giving finite logits;
file-backed pools readable; KDCI's other models trained or checked; the build-once dictionaries
and the pool selections of the sampling-based methods made (on the cluster's workers when
``RAY_ADDRESS`` is set, waiting visibly for its nodes).
"""

from __future__ import annotations

from typing import Any

from kdci_ray.config import ExperimentConfig
from kdci_ray.train.cluster_wait import watch_cluster
from kdci_ray.tune.driver import SweepPlan, check_resources, init_ray


def check_inputs(plan: SweepPlan, log=print) -> None:
    """Data readable, teacher present and fitting its architecture (the embedded teacher is trained
    once here, not per trial), and the file-backed open-world pools of MosaicKD / DFND present."""
    import torch

    from kdci_ray.train.teacher import (
        check_cache_dir,
        check_finite,
        ensure_teacher,
        load_data,
        load_teacher,
        teacher_path,
    )

    check_cache_dir()
    datasets: dict[tuple, Any] = {}
    seen: set[tuple] = set()
    for cfg in plan.configs:
        d = cfg.data
        data_key = (d.name, d.root, d.image_size, d.test_fraction, d.split_seed)
        if data_key not in datasets:
            datasets[data_key] = load_data(cfg)  # raises a clear error for a missing data path
        data = datasets[data_key]
        _check_pool(cfg, data, seen)
        key = (teacher_path(cfg), cfg.teacher.arch, data_key)
        if key in seen:
            continue
        seen.add(key)
        ensure_teacher(cfg, log)
        teacher = load_teacher(cfg, data, torch.device("cpu"))  # one that does not fit fails
        check_finite(teacher, data, teacher_path(cfg))  # and one with NaN weights
    _prepare_kdci(plan, datasets, log)


def _prepare_kdci(plan: SweepPlan, datasets: dict[tuple, Any], log) -> None:
    """KDCI's other models (``kdci.source: model``) trained or checked once, and the build-once
    dictionaries of the sampling-based methods built once into the store, before any trial (so
    the trials share them instead of racing to build the same one); the pool selections of
    their vanilla trials too (every pool image is read once here: a corrupt one is refused
    before any trial starts)."""
    import torch

    from kdci_ray.train.dictionary_job import build_all, default_scoring_workers
    from kdci_ray.train.kdci_setup import load_source_model

    seen: set[tuple] = set()
    for cfg in plan.configs:
        kc, d = cfg.kdci, cfg.data
        if not kc.enabled or kc.source != "model":
            continue
        key = (kc.source_arch, kc.source_checkpoint, cfg.teacher.seed, repr(d))
        if key not in seen:
            seen.add(key)
            data = datasets[(d.name, d.root, d.image_size, d.test_fraction, d.split_seed)]
            load_source_model(cfg, data, torch.device("cpu"), log)
    workers = default_scoring_workers()
    if workers == 1:
        build_all(plan.configs, log, workers=workers, selections=True)
        return
    init_ray()  # on a cluster: score the pools on its workers (run_sweep reuses the link)
    check_resources(plan)  # before asking the autoscaler for nodes
    with watch_cluster(log):
        build_all(plan.configs, log, workers=workers, selections=True)


def _check_pool(cfg: ExperimentConfig, data: Any, seen: set[tuple]) -> None:
    """Open a file-backed pool once (headers only: a missing or malformed pool fails here)."""
    from kdci_ray.methods import METHODS
    from kdci_ray.train.task import open_world

    p = cfg.pool
    key = ("pool", p.source, p.path, p.size, p.transform, data.channels, data.image_size)
    if not METHODS[cfg.method].needs_open_world or p.source == "embedded" or key in seen:
        return
    seen.add(key)
    open_world(cfg, data)
