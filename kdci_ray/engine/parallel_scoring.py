"""Score an open-world pool with frozen models on Ray workers (``kdci-ray dictionary`` at scale).

The dictionary job's two passes over the data are forward passes only: the teacher scores the
whole pool (the selection of DFND / MosaicKD) and the dictionary's source model scores the kept
subset (the logits KDCI clusters). On a Ray cluster :class:`RayScorer` spreads both over actors
that ask for what a trial's Train worker asks for, so on an autoscaling cluster they wait for the
nodes the autoscaler starts, like the trials (bounded by ``run.start_timeout_s``): the pool
object (lazy: memmaps, file lists, crop parameters) and the models go to the object store once,
the index range is cut into chunks that the actors take in turn, and the results come back in
index order, with a progress line every tenth of the work. Same numbers as the in-process pass
(``data.selection.score_pool``) up to floating-point summation order.

The clustering of those logits (PCA + k-means, ``kdci.dictionary.build_dictionary``) can run on
a Ray actor too (:func:`build_dictionary_on_ray`): on a GPU cluster the head that drives the job
may have no GPU, so the 600k-sample dictionaries are clustered on a worker with one (cuML under
``kdci.backend: auto``), and only the small dictionary comes back.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdci_ray.data.labeled import normalize
from kdci_ray.data.selection import scores_from_logits
from kdci_ray.errors import ConfigError
from kdci_ray.kdci.dictionary import ConfounderDictionary, build_dictionary


class ClusterWaitTimeout(ConfigError):
    """Nothing could be placed on the cluster within ``run.start_timeout_s``."""


def _describe(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {int(v) if float(v).is_integer() else v}"
                           for k, v in sorted(bundle.items())) + "}"


def _remote(cls: type, bundle: dict[str, float]) -> Any:
    """``cls`` as a Ray actor class asking for ``bundle`` (CPU, GPU and custom resources)."""
    import ray

    custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
    return ray.remote(num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0),
                      resources=custom or None)(cls)


def wait_for_actors(actors: list[Any], timeout_s: float, what: str, unit: str,
                    log) -> list[Any]:
    """The actors that started within ``timeout_s`` (the others are killed), with a line every
    ``INTERVAL_S`` while some wait for their nodes; none placed is a
    :class:`ClusterWaitTimeout`. ``what`` names them in the messages, ``unit`` their request."""
    import ray

    from kdci_ray.engine.cluster_wait import INTERVAL_S

    pending = {a.__ray_ready__.remote(): a for a in actors}
    ready: list[Any] = []
    start = time.monotonic()
    while pending:
        left = timeout_s - (time.monotonic() - start)
        if left <= 0:
            break
        done, _ = ray.wait(list(pending), num_returns=len(pending),
                           timeout=min(INTERVAL_S, left))
        for ref in done:
            ray.get(ref)  # an actor that failed to start raises here
            ready.append(pending.pop(ref))
        if pending:
            log(f"{what}: {len(ready)} of {len(actors)} workers of {unit} placed after "
                f"{time.monotonic() - start:.0f} s (waiting up to run.start_timeout_s="
                f"{timeout_s:g} s for the cluster's nodes)")
    for actor in pending.values():
        ray.kill(actor)
    if not ready:
        raise ClusterWaitTimeout(
            f"no {what} worker of {unit} was placed within run.start_timeout_s={timeout_s:g} s: "
            f"the cluster has or added no node that fits (see `ray status`); raise "
            f"run.start_timeout_s, or check the node types and their max_workers"
        )
    if pending:
        log(f"{what}: going on with {len(ready)} of {len(actors)} workers (the others were "
            f"not placed within run.start_timeout_s)")
    return ready


class _ScoringWorker:
    """One Ray actor: the pool and the models, on this worker's device (``worker_device``: the
    GPU Ray gave it with ``use_gpu``; an actor that sees none raises ``GPUUnavailable`` rather
    than scoring 600k images on its CPU)."""

    def __init__(self, pool: Any, models: dict[str, nn.Module], mean: Sequence[float],
                 std: Sequence[float], use_gpu: bool, batch_size: int,
                 cpus: float = 1.0) -> None:
        from kdci_ray.train.runtime import limit_threads, thread_count, worker_device

        self.device = worker_device(use_gpu)
        # on a GPU the crops are read and cut on the CPUs it was given, not on one core
        limit_threads(max(1, int(cpus)) if self.device.type != "cpu" else thread_count())
        self.pool = pool
        self.models = {name: m.to(self.device).eval() for name, m in models.items()}
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size = batch_size

    @torch.no_grad()
    def logits(self, model: str, indices: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(indices), self.batch_size):
            images = self.pool.get(indices[i:i + self.batch_size]).to(self.device)
            x = normalize(images, self.mean, self.std)
            out.append(self.models[model](x).logits.float().cpu())
        return torch.cat(out).numpy()

    def scores(self, model: str, indices: np.ndarray, criterion: str) -> np.ndarray:
        return scores_from_logits(torch.from_numpy(self.logits(model, indices)), criterion)


class RayScorer:
    """Forward passes of ``models`` over ``pool`` on ``workers`` Ray actors, each asking for
    ``bundle`` (a trial's Train worker request: ``train.resources.worker_bundle``), so they land
    on the nodes the trials will use. On an autoscaling cluster the actors first wait for their
    nodes, up to ``start_timeout_s`` (a line every ``INTERVAL_S``); those still pending then are
    given up, and none placed is a :class:`ClusterWaitTimeout`. Ray must be initialised."""

    def __init__(self, pool: Any, models: dict[str, nn.Module], mean: Sequence[float],
                 std: Sequence[float], bundle: dict[str, float], workers: int,
                 start_timeout_s: float = 1800.0, batch_size: int = 1024,
                 chunk: int = 16384, log=None) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("RayScorer needs ray.init() first (kdci-ray dictionary does it)")
        if workers < 1:
            raise ValueError(f"RayScorer needs at least one worker, got {workers}")
        self.log = log or _stderr
        self.chunk = int(chunk)
        use_gpu = bundle.get("GPU", 0) > 0
        remote = _remote(_ScoringWorker, bundle)
        pool_ref = ray.put(pool)
        models_ref = ray.put({name: copy.deepcopy(m).cpu() for name, m in models.items()})
        self.unit = _describe(bundle)
        actors = [remote.remote(pool_ref, models_ref, list(mean), list(std), use_gpu,
                                batch_size, bundle.get("CPU", 1.0)) for _ in range(int(workers))]
        self.actors = wait_for_actors(actors, start_timeout_s, "pool scoring", self.unit,
                                      self.log)
        self.workers = len(self.actors)

    def _run(self, what: str, method: str, model: str, indices: np.ndarray,
             *extra: Any) -> list[np.ndarray]:
        from ray.util import ActorPool

        chunks = [indices[i:i + self.chunk] for i in range(0, len(indices), self.chunk)]
        # at least two chunks per actor, so a slow worker does not hold the last tenth alone
        if len(chunks) < 2 * self.workers and len(indices) > 0:
            per = math.ceil(len(indices) / (2 * self.workers))
            chunks = [indices[i:i + per] for i in range(0, len(indices), per)]
        started, done, last, out = time.monotonic(), 0, -1, []
        pool = ActorPool(self.actors)
        for part, result in zip(chunks, pool.map(
                lambda actor, c: getattr(actor, method).remote(model, c, *extra), chunks),
                strict=True):
            out.append(result)
            done += len(part)
            tenth = done * 10 // max(1, len(indices))
            if tenth != last:
                last = tenth
                self.log(f"{what}: {done}/{len(indices)} images on {self.workers} worker(s) of "
                         f"{self.unit} ({time.monotonic() - started:.0f}s)")
        return out

    def pool_scores(self, model: str, criterion: str, size: int) -> np.ndarray:
        """Selection scores of images ``0..size-1`` (``data.selection.score_pool``'s result)."""
        parts = self._run(f"selection ({model})", "scores", model,
                          np.arange(size, dtype=np.int64), criterion)
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.float64)

    def logits(self, model: str, indices: np.ndarray) -> Tensor:
        """``(len(indices), classes)`` float32 logits of ``model`` on those pool images."""
        parts = self._run(f"dictionary features ({model})", "logits", model,
                          np.asarray(indices, dtype=np.int64))
        return torch.from_numpy(np.concatenate(parts))

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def __enter__(self) -> RayScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _DictionaryBuilder:
    """One Ray actor that clusters features into a confounder dictionary (PCA + K-Means++;
    ``kdci.backend: auto`` resolves on the actor's node: cuML where it has a GPU and cuML)."""

    def __init__(self) -> None:
        from kdci_ray.train.runtime import limit_threads

        limit_threads()

    def build(self, features: Tensor, options: dict[str, Any]) -> ConfounderDictionary:
        return build_dictionary(features, **options)


def build_dictionary_on_ray(features: Tensor, options: dict[str, Any],
                            bundle: dict[str, float], start_timeout_s: float = 1800.0,
                            log=None) -> ConfounderDictionary:
    """``build_dictionary(features, **options)`` on one Ray actor asking for ``bundle`` (on a
    GPU cluster: one GPU and a trial worker's custom resources; without ``GPU`` the same code on
    a CPU actor). The features go to the object store once; the small dictionary comes back for
    the driver to store (worker nodes need not share its disk). The actor waits for its node up
    to ``start_timeout_s`` (:class:`ClusterWaitTimeout`), and is killed after the build."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("build_dictionary_on_ray needs ray.init() first")
    log = log or _stderr
    unit = _describe(bundle)
    actor = _remote(_DictionaryBuilder, bundle).remote()
    try:
        wait_for_actors([actor], start_timeout_s, "dictionary build", unit, log)
        log(f"dictionary build: clustering {len(features)} samples on a worker of {unit}")
        return ray.get(actor.build.remote(features, dict(options)))
    finally:
        ray.kill(actor)
