"""KDCI's work done once before any trial: other models, build-once dictionaries, selections.

Methods whose substitution data is a fixed pool (``substitution.kind == "fixed"``: MosaicKD, DFND)
cluster a dictionary once over their whole selected open-world subset (KDCI, Wang et al., CVPR
2024: K = 128 over the 600k sampled images). This job runs exactly what a trial of ``run.workers``
ranks would run up to that point (the teacher's selection of the pool, then the dictionary
source's logits on the images the ranks' shares cover, PCA + K-Means++) and saves the result in
the dictionary store under the key of those images (``OpenWorldSubset.data_key``), which every
rank of such a trial computes too: the trials load it (``kdci/cached = 1``). A dictionary already
stored is found before anything is scored. Images are normalised and scored a batch at a time
(never the whole subset in float32); on a GPU cluster the clustering runs on a Ray actor with one
GPU (``builds_on_gpu_actor``), elsewhere in this process. It is what ``kdci-ray dictionary CONFIG``
runs (``build_all``), and what a sweep runs before its trials start (``prepare_kdci``: also the
other models of ``kdci.source: model`` and the pool selections of the vanilla trials).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from kdci_ray.engine.placement import NodeShape, placeable_workers, worker_bundle
from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd import ExperimentConfig, RunConfig
from kdci_ray.kdci import KDCI
from kdci_ray.kdci.dictionary import (
    ConfounderDictionary,
    build_dictionary,
    dictionary_features,
    teacher_logits,
)
from kdci_ray.methods import METHODS
from kdci_ray.methods.open_world import NormalizedImages, OpenWorldSubset
from kdci_ray.models import create_model
from kdci_ray.train.datasets import load_data
from kdci_ray.train.kdci_setup import dictionary_store, load_source_model
from kdci_ray.train.loop import method_context
from kdci_ray.train.runtime import Runtime, host_device, limit_threads
from kdci_ray.train.teacher import ensure_teacher, load_teacher


def has_shared_dictionary(cfg: ExperimentConfig) -> bool:
    """Whether a run of ``cfg`` uses a build-once dictionary that can be shared as an artifact."""
    kc = cfg.kdci
    return (kc.enabled and kc.cache and kc.source != "random"
            and METHODS[cfg.method].substitution.fixed)


def selection_identity(cfg: ExperimentConfig) -> tuple:
    """The config values a sampling-based method's pool selection depends on."""
    return ("selection", cfg.method,
            METHODS[cfg.method].open_world_selection(cfg.method_config), repr(cfg.data),
            repr(cfg.teacher), repr(cfg.pool), repr(cfg.shift))


def dictionary_identity(cfg: ExperimentConfig) -> tuple:
    """The config values a build-once dictionary depends on (cheap de-duplication of a grid;
    ``kdci.k`` as resolved). Not ``kdci.backend``: as in the artifact key, the machine that builds
    it is no part of it."""
    kc = cfg.kdci
    return (cfg.method, METHODS[cfg.method].open_world_selection(cfg.method_config),
            repr(cfg.data), repr(cfg.teacher), repr(cfg.pool), repr(cfg.shift), cfg.run.workers,
            kc.k, kc.pca_dim, kc.algorithm, kc.n_init,
            kc.source, kc.source_arch, kc.source_checkpoint)


class _PoolJob:
    """What the selection and the dictionary of a fixed-pool ``cfg`` need: its data, teacher,
    method context and, on first use, Ray scorers (``workers`` as below)."""

    def __init__(self, cfg: ExperimentConfig, log, workers: int) -> None:
        limit_threads()
        self.cfg, self.log, self.workers = cfg, log, workers
        self.method_cls = METHODS[cfg.method]
        # the driver, possibly on a GPU-less head: its GPU if it has one, else the CPU
        self.rt = Runtime(rank=0, world_size=1, device=host_device(cfg.run.use_gpu))
        self.data = load_data(cfg)
        ensure_teacher(cfg, log)  # the embedded teacher is trained once; a given one must exist
        self.teacher = load_teacher(cfg, self.data, self.rt.device)
        student = create_model(cfg.student.arch, self.data.num_classes,
                               self.data.channels).to(self.rt.device)
        self.ctx = method_context(cfg, self.data, self.teacher, student, self.rt)
        self.selection = self.method_cls.open_world_selection(cfg.method_config)
        self.models: dict[str, Any] = {"teacher": self.teacher}
        self._scorers: list[Any] = []  # the Ray actors, started on first use

    def scorer(self) -> Any:
        if not self._scorers:
            from kdci_ray.engine.parallel_scoring import RayScorer
            from kdci_ray.engine.placement import cluster_capacity

            run = self.cfg.run
            count = self.workers or max(1, cluster_capacity(run))
            self._scorers.append(RayScorer(
                self.ctx.open_world, self.models, self.data.mean, self.data.std,
                bundle=worker_bundle(run), workers=count, start_timeout_s=run.start_timeout_s,
                log=self.log))
        return self._scorers[0]

    @property
    def scoring_workers(self) -> int:
        return self._scorers[0].workers if self._scorers else 1

    def select(self) -> OpenWorldSubset:
        """The teacher's selection of the pool (cached; scored on the scorers if not)."""
        size = len(self.ctx.open_world)
        self.log(f"{self.cfg.method}: selecting {self.selection[1]} of {size} pool images by "
                 f"{self.selection[0]}")
        pool_scores = None if self.workers == 1 else \
            (lambda criterion: self.scorer().pool_scores("teacher", criterion, size))
        return OpenWorldSubset(self.ctx, *self.selection, progress=True, pool_scores=pool_scores)

    def close(self) -> None:
        for s in self._scorers:
            s.close()


def dictionary_bundle(run: RunConfig, gpus: float = 1.0) -> dict[str, float]:
    """What the dictionary-building actor asks for: a trial worker's CPUs and custom resources
    (so it lands on a node the trials use) and ``gpus`` GPUs (one; 0 only in tests)."""
    bundle = {**worker_bundle(run), "GPU": float(gpus)}
    return {k: v for k, v in bundle.items() if v > 0}


def builds_on_gpu_actor(run: RunConfig, shapes: list[NodeShape] | None,
                        max_added: int | None = None) -> bool:
    """Whether a dictionary is clustered on a Ray actor with one GPU rather than in the driver:
    with ``run.use_gpu``, when Ray is reachable (``shapes``: its alive and autoscalable nodes,
    ``engine.placement``; None without Ray) and some node has or may add room for
    :func:`dictionary_bundle` (``max_added``: the autoscaler's global ``max_workers``)."""
    if not run.use_gpu or shapes is None:
        return False
    return placeable_workers(dictionary_bundle(run), shapes, max_added) > 0


def _cluster_shapes() -> tuple[list[NodeShape] | None, int | None]:
    """The connected Ray cluster's node shapes and autoscaler cap; ``(None, None)`` without Ray."""
    import ray

    if not ray.is_initialized():
        return None, None
    from kdci_ray.engine.placement import alive_shapes, autoscaler_max_workers, autoscaler_shapes

    return alive_shapes(ray.nodes()) + autoscaler_shapes(), autoscaler_max_workers()


@torch.no_grad()
def score_in_chunks(model: nn.Module, images: NormalizedImages, batch_size: int) -> Tensor:
    """``(N, C)`` float32 logits of ``model`` on ``images``, on the CPU: each batch normalised
    only when scored (the trial's refresh scores the same batches: ``teacher_logits``
    over slices, so the numbers are identical)."""
    parts = [teacher_logits(model, images[i:i + batch_size], batch_size).float().cpu()
             for i in range(0, len(images), batch_size)]
    return torch.cat(parts)


def build_shared_dictionary(cfg: ExperimentConfig, log=print, workers: int = 1,
                            actor_gpus: float | None = None) -> dict[str, Any]:
    """Select the subset, then find the dictionary of ``cfg`` in the store, or score, build and
    store it.

    The store is checked first: a dictionary already there (built for the same images, model
    and clustering settings) is reported, with nothing scored, normalised or clustered.
    ``workers``: 1 scores in this process (a batch at a time); otherwise the two forward passes
    (the teacher over the pool, the source model over the kept subset) run on that many Ray
    actors, each asking for a trial's Train worker resources (0: as many as the cluster can hold,
    counting the nodes its autoscaler may add; Ray must be initialised; they wait up to
    ``run.start_timeout_s``). ``actor_gpus``: None clusters on a Ray actor with one GPU when
    :func:`builds_on_gpu_actor` says so, else here; a number always uses the actor, with that
    many GPUs (0: the same code on a CPU actor, for tests). Returns the artifact's metadata plus
    ``path``, ``cached``, ``seconds``, ``scoring_workers`` and ``built_on`` (driver | actor |
    none)."""
    if not METHODS[cfg.method].substitution.fixed:
        raise ConfigError(
            f"method '{cfg.method}' rebuilds its KDCI dictionary every synthesis round from fresh "
            f"synthetic images, so there is no dictionary to build ahead; `kdci-ray dictionary` "
            f"is for the sampling-based methods ({', '.join(sampling_methods())})"
        )
    if cfg.kdci.source == "random":
        raise ConfigError("kdci.source=random draws its dictionary per trial; nothing to build")
    start = time.perf_counter()
    job = _PoolJob(cfg, log, workers)
    source_model = None
    if cfg.kdci.source == "model":
        source_model = load_source_model(cfg, job.data, job.rt.device)
    # kdci.cache=false still gets its artifact when asked for one
    kdci = KDCI(cfg.kdci, job.data.num_classes, job.rt.device, seed=cfg.seed,
                score_batch=cfg.train.batch_size, fixed_pool=True, source_model=source_model,
                store=dictionary_store(), dictionary_seed=cfg.pool.seed)
    model = kdci.source_model if kdci.source_model is not None else job.teacher
    source_name = "teacher" if model is job.teacher else "source"
    job.models[source_name] = model  # one entry when they are one
    built_on = "none"
    try:
        subset = job.select()
        # the images a trial of run.workers ranks covers with its equal shares, and their key
        keep = subset.covered(cfg.run.workers)
        spec = kdci.spec(model, subset.data_key(cfg.run.workers))
        cached = kdci.store.load(spec) is not None
        if not cached:
            if workers == 1:
                logits = score_in_chunks(model, subset.normalized(keep), kdci.score_batch)
            else:
                logits = job.scorer().logits(source_name, subset.indices[:keep])
            job.close()  # the scorers' resources are the builder's now
            dictionary, built_on = _build(cfg, kdci.config, dictionary_features(
                logits, kdci.config.space), spec.seed, actor_gpus, log)
            kdci.store.save(spec, dictionary)
    finally:
        job.close()
    return {**kdci.store.metadata(spec), "path": str(kdci.store.paths(spec)[0]),
            "cached": cached, "seconds": time.perf_counter() - start,
            "scoring_workers": job.scoring_workers, "built_on": built_on}


def _build(cfg: ExperimentConfig, settings: Any, features: Tensor, seed: int,
           actor_gpus: float | None, log) -> tuple[ConfounderDictionary, str]:
    """PCA + K-Means++ of ``features`` as a trial's refresh would cluster them (the settings'
    K, PCA, backend, algorithm; ``seed``: the spec's), here or on a Ray actor (see
    :func:`build_shared_dictionary`); the dictionary and where it was built."""
    options = {"k": settings.k, "pca_dim": settings.pca_dim, "seed": seed,
               "n_init": settings.n_init, "backend": settings.backend,
               "algorithm": settings.algorithm}
    if actor_gpus is None and cfg.run.use_gpu:
        shapes, max_added = _cluster_shapes()
        actor_gpus = 1.0 if builds_on_gpu_actor(cfg.run, shapes, max_added) else None
    if actor_gpus is None:
        return build_dictionary(features, **options), "driver"
    from kdci_ray.engine.parallel_scoring import build_dictionary_on_ray

    dictionary = build_dictionary_on_ray(features, options, dictionary_bundle(cfg.run, actor_gpus),
                                         cfg.run.start_timeout_s, log)
    return dictionary, "actor"


def build_selection(cfg: ExperimentConfig, log=print, workers: int = 1) -> None:
    """The teacher's selection of a fixed-pool ``cfg``'s pool, made (or found) in the
    selection cache now, so its trials load it; every pool image is read here, so a corrupt
    one is refused before any trial starts (``workers`` as for ``build_shared_dictionary``)."""
    job = _PoolJob(cfg, log, workers)
    try:
        job.select()
    finally:
        job.close()


def default_scoring_workers() -> int:
    """0 (as many workers as the cluster can hold) when ``RAY_ADDRESS`` names a cluster, else 1
    (score in this process: starting a local Ray costs more than it saves on one machine)."""
    return 0 if os.environ.get("RAY_ADDRESS") else 1


def sampling_methods() -> list[str]:
    """The methods whose substitution data is a fixed pool (a build-once dictionary)."""
    return [name for name, cls in METHODS.items() if cls.substitution.fixed]


_WHERE = {"none": "", "driver": "", "actor": " on a Ray worker"}


def build_all(configs: list[ExperimentConfig], log=print, only_shared: bool = True,
              workers: int = 1, selections: bool = False) -> list[dict[str, Any]]:
    """Each distinct build-once dictionary of ``configs`` once (``only_shared``: skip the
    configs that would not use one: KDCI off, caching off, random source; ``workers``: as for
    :func:`build_shared_dictionary`); with ``selections``, also the pool selection of every
    other sampling-based config (:func:`build_selection`)."""
    seen: set[tuple] = set()
    out = []
    for cfg in configs:
        if not METHODS[cfg.method].substitution.fixed:
            continue
        if cfg.kdci.source == "random" or (only_shared and not has_shared_dictionary(cfg)):
            ident = selection_identity(cfg)
            if selections and ident not in seen:
                seen.add(ident)
                build_selection(cfg, log, workers)
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
            f"{e['seconds']:.1f} s{_WHERE[e['built_on']]} -> {e['path']}")
    return out


def data_key(cfg: ExperimentConfig) -> tuple:
    """What identifies ``cfg``'s loaded data set (the key of ``prepare_kdci``'s ``datasets``)."""
    d = cfg.data
    return (d.name, d.root, d.image_size, d.test_fraction, d.split_seed)


def prepare_kdci(configs: list[ExperimentConfig], log=print, workers: int | None = None,
                 datasets: dict[tuple, Any] | None = None,
                 connect: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """KDCI's work shared by the trials of ``configs``, done once before any of them starts:
    the other models of ``kdci.source: model`` trained (embedded) or checked, each once; the
    build-once dictionaries of the fixed-pool methods built into the store (so the trials share
    them instead of racing to build the same one); and the pool selections of their other
    trials (every pool image is read here: a corrupt one is refused before any trial starts).

    ``workers``: pool scorers, as for :func:`build_shared_dictionary` (None:
    :func:`default_scoring_workers`: Ray workers on a cluster, else this process); ``connect``:
    called once before scoring on Ray workers (``workers != 1``), e.g. to connect to Ray and
    check that the cluster can place a scorer; ``datasets``: data sets already loaded, by
    :func:`data_key` (missing ones are loaded and added). Returns :func:`build_all`'s records."""
    import torch

    from kdci_ray.engine.cluster_wait import watch_cluster

    datasets = {} if datasets is None else datasets
    seen: set[tuple] = set()
    for cfg in configs:
        kc = cfg.kdci
        if not kc.enabled or kc.source != "model":
            continue
        key = (kc.source_arch, kc.source_checkpoint, cfg.teacher.seed, repr(cfg.data))
        if key in seen:
            continue
        seen.add(key)
        if data_key(cfg) not in datasets:
            datasets[data_key(cfg)] = load_data(cfg)
        load_source_model(cfg, datasets[data_key(cfg)], torch.device("cpu"), log)
    workers = default_scoring_workers() if workers is None else workers
    if workers == 1:
        return build_all(configs, log, workers=workers, selections=True)
    if connect is not None:
        connect()
    with watch_cluster(log):
        return build_all(configs, log, workers=workers, selections=True)
