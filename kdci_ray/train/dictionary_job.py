"""Build-once KDCI dictionaries as artifacts, ahead of the trials that share them.

The sampling-based methods (MosaicKD, DFND) cluster a dictionary once over their whole selected
open-world subset (KDCI, Wang et al., CVPR 2024: K = 128 over the 600k sampled images). This job
runs exactly what a trial would run up to that point (the teacher's selection of the pool, then
the dictionary source's logits on the subset, PCA + K-Means++) and saves the result in the
dictionary store; every trial with the same spec then loads it (``kdci/cached = 1``). It is what
``kdci-ray dictionary CONFIG`` runs, and what a sweep runs before its trials start.
"""

from __future__ import annotations

import time
from typing import Any

from kdci_ray.config import ConfigError, ExperimentConfig
from kdci_ray.methods import METHODS
from kdci_ray.methods.dfnd import OpenWorldSubset
from kdci_ray.models import create_model
from kdci_ray.train.kdci_setup import build_kdci, dictionary_store
from kdci_ray.train.runtime import current_runtime, limit_threads
from kdci_ray.train.task import method_context
from kdci_ray.train.teacher import ensure_teacher, load_data, load_teacher


def has_shared_dictionary(cfg: ExperimentConfig) -> bool:
    """Whether a run of ``cfg`` uses a build-once dictionary that can be shared as an artifact."""
    kc = cfg.kdci
    return (kc.enabled and kc.cache and kc.source != "random"
            and METHODS[cfg.method].kdci_refresh == "once")


def dictionary_identity(cfg: ExperimentConfig) -> tuple:
    """The config values a build-once dictionary depends on (cheap de-duplication of a grid)."""
    method_cls = METHODS[cfg.method]
    kc = cfg.kdci
    return (cfg.method, method_cls.open_world_selection(cfg.method_config),
            repr(cfg.data), repr(cfg.teacher), repr(cfg.pool), cfg.run.workers,
            kc.k or method_cls.kdci_k, kc.pca_dim, kc.backend, kc.algorithm, kc.n_init,
            kc.source, kc.source_arch, kc.source_checkpoint)


def build_shared_dictionary(cfg: ExperimentConfig, log=print) -> dict[str, Any]:
    """Select the subset, score it, build (or load) and store the dictionary of ``cfg``.

    Returns the artifact's metadata plus ``path``, ``cached`` and ``seconds``."""
    method_cls = METHODS[cfg.method]
    if method_cls.kdci_refresh != "once":
        raise ConfigError(
            f"method '{cfg.method}' rebuilds its KDCI dictionary every synthesis round from fresh "
            f"synthetic images, so there is no dictionary to build ahead; `kdci-ray dictionary` "
            f"is for the sampling-based methods ({', '.join(sampling_methods())})"
        )
    if cfg.kdci.source == "random":
        raise ConfigError("kdci.source=random draws its dictionary per trial; nothing to build")
    start = time.perf_counter()
    limit_threads()
    rt = current_runtime(cfg.run.use_gpu)
    data = load_data(cfg)
    ensure_teacher(cfg, log)  # the embedded teacher is trained once; a given one must exist
    teacher = load_teacher(cfg, data, rt.device)
    student = create_model(cfg.student.arch, data.num_classes, data.channels).to(rt.device)
    ctx = method_context(cfg, data, teacher, student, rt)
    selection = method_cls.open_world_selection(cfg.method_config)
    log(f"{cfg.method}: selecting {selection[1]} of {len(ctx.open_world)} pool images "
        f"by {selection[0]}")
    subset = OpenWorldSubset(ctx, *selection, progress=True)
    kdci = build_kdci(cfg, method_cls.kdci_k, data, rt.device)
    if kdci.store is None:  # kdci.cache=false still gets its artifact when asked for one
        kdci.store = dictionary_store()
    # as a trial of `run.workers` ranks would see it: each rank's equal share, gathered
    per = len(subset) // cfg.run.workers
    images = ctx.normalize(subset.images[:per * cfg.run.workers])
    metrics = kdci.refresh(teacher, images, data_key=subset.key)
    model = kdci.source_model if kdci.source_model is not None else teacher
    spec = kdci.spec(model, subset.key)
    return {**kdci.store.metadata(spec), "path": str(kdci.store.paths(spec)[0]),
            "cached": bool(metrics["kdci/cached"]), "seconds": time.perf_counter() - start}


def sampling_methods() -> list[str]:
    return [name for name, cls in METHODS.items() if cls.kdci_refresh == "once"]


def build_all(configs: list[ExperimentConfig], log=print,
              only_shared: bool = True) -> list[dict[str, Any]]:
    """Each distinct build-once dictionary of ``configs`` once (``only_shared``: skip the
    configs that would not use one: KDCI off, caching off, random source)."""
    seen: set[tuple] = set()
    out = []
    for cfg in configs:
        if METHODS[cfg.method].kdci_refresh != "once":
            continue
        if cfg.kdci.source == "random" or (only_shared and not has_shared_dictionary(cfg)):
            continue
        ident = dictionary_identity(cfg)
        if ident in seen:
            continue
        seen.add(ident)
        out.append(build_shared_dictionary(cfg, log))
        e = out[-1]
        log(f"dictionary {e['key']}: {cfg.method}, K={e['k']}, source={e['spec']['source']}, "
            f"N={e['num_samples']}, backend={e['backend']}/{e['algorithm']}, "
            f"inertia={e['inertia']:.4g}, {'reused' if e['cached'] else 'built'} in "
            f"{e['seconds']:.1f} s -> {e['path']}")
    return out
