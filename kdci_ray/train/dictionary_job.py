"""Build-once KDCI dictionaries as artifacts, ahead of the trials that share them.

The sampling-based methods (MosaicKD, DFND) cluster a dictionary once over their whole selected
open-world subset (KDCI, Wang et al., CVPR 2024: K = 128 over the 600k sampled images). This job
runs exactly what a trial would run up to that point (the teacher's selection of the pool, then
the dictionary source's logits on the subset, PCA + K-Means++) and saves the result in the
dictionary store; every trial with the same spec then loads it (``kdci/cached = 1``). It is what
``kdci-ray dictionary CONFIG`` runs, and what a sweep runs before its trials start.
"""

from __future__ import annotations

import os
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
    """The config values a build-once dictionary depends on (cheap de-duplication of a grid).
    Not ``kdci.backend``: as in the artifact key, the machine that builds it is no part of it."""
    method_cls = METHODS[cfg.method]
    kc = cfg.kdci
    return (cfg.method, method_cls.open_world_selection(cfg.method_config),
            repr(cfg.data), repr(cfg.teacher), repr(cfg.pool), cfg.run.workers,
            kc.k or method_cls.kdci_k, kc.pca_dim, kc.algorithm, kc.n_init,
            kc.source, kc.source_arch, kc.source_checkpoint)


def build_shared_dictionary(cfg: ExperimentConfig, log=print,
                            workers: int = 1) -> dict[str, Any]:
    """Select the subset, score it, build (or load) and store the dictionary of ``cfg``.

    ``workers``: 1 scores in this process; otherwise the two forward passes (the teacher over the
    pool, the source model over the kept subset) run on that many Ray actors, each asking for a
    trial's Train worker resources (0: as many as the cluster can hold, counting the nodes its
    autoscaler may add; Ray must be initialised; they wait up to ``run.start_timeout_s``).
    Returns the artifact's metadata plus ``path``, ``cached``, ``seconds`` and
    ``scoring_workers``."""
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
    kdci = build_kdci(cfg, method_cls.kdci_k, data, rt.device)
    if kdci.store is None:  # kdci.cache=false still gets its artifact when asked for one
        kdci.store = dictionary_store()
    model = kdci.source_model if kdci.source_model is not None else teacher
    source_name = "teacher" if model is teacher else "source"
    scorers: list[Any] = []  # the Ray actors, started on first use (cached work needs none)

    def scorer() -> Any:
        if not scorers:
            from kdci_ray.train.parallel_scoring import RayScorer
            from kdci_ray.train.placement import cluster_capacity, worker_bundle

            models = {"teacher": teacher, source_name: model}  # one entry when they are one
            count = workers or max(1, cluster_capacity(cfg.run))
            scorers.append(RayScorer(ctx.open_world, models, data.mean, data.std,
                                     bundle=worker_bundle(cfg.run), workers=count,
                                     start_timeout_s=cfg.run.start_timeout_s, log=log))
        return scorers[0]

    try:
        log(f"{cfg.method}: selecting {selection[1]} of {len(ctx.open_world)} pool images "
            f"by {selection[0]}")
        pool_scores = None if workers == 1 else \
            (lambda criterion: scorer().pool_scores("teacher", criterion, len(ctx.open_world)))
        subset = OpenWorldSubset(ctx, *selection, progress=True, pool_scores=pool_scores)
        spec = kdci.spec(model, subset.key)
        cached = kdci.store.load(spec) is not None
        if not cached:
            # as a trial of `run.workers` ranks would see it: each rank's equal share, gathered
            keep = len(subset) // cfg.run.workers * cfg.run.workers
            if workers == 1:
                kdci.refresh(teacher, ctx.normalize(subset.images[:keep]), data_key=subset.key)
            else:
                logits = scorer().logits(source_name, subset.indices[:keep])
                kdci.refresh(teacher, None, data_key=subset.key, logits=logits)
    finally:
        for s in scorers:
            s.close()
    return {**kdci.store.metadata(spec), "path": str(kdci.store.paths(spec)[0]),
            "cached": cached, "seconds": time.perf_counter() - start,
            "scoring_workers": scorers[0].workers if scorers else 1}


def default_scoring_workers() -> int:
    """0 (as many workers as the cluster can hold) when ``RAY_ADDRESS`` names a cluster, else 1
    (score in this process: starting a local Ray costs more than it saves on one machine)."""
    return 0 if os.environ.get("RAY_ADDRESS") else 1


def sampling_methods() -> list[str]:
    return [name for name, cls in METHODS.items() if cls.kdci_refresh == "once"]


def build_all(configs: list[ExperimentConfig], log=print, only_shared: bool = True,
              workers: int = 1) -> list[dict[str, Any]]:
    """Each distinct build-once dictionary of ``configs`` once (``only_shared``: skip the
    configs that would not use one: KDCI off, caching off, random source; ``workers``: as for
    :func:`build_shared_dictionary`)."""
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
        out.append(build_shared_dictionary(cfg, log, workers))
        e = out[-1]
        log(f"dictionary {e['key']}: {cfg.method}, K={e['k']}, source={e['spec']['source']}, "
            f"N={e['num_samples']}, backend={e['backend']}/{e['algorithm']}, "
            f"inertia={e['inertia']:.4g}, {'reused' if e['cached'] else 'built'} in "
            f"{e['seconds']:.1f} s -> {e['path']}")
    return out
