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

from kdci_ray.config import ConfigError
from kdci_ray.data.labeled import normalize
from kdci_ray.data.selection import scores_from_logits


class ClusterWaitTimeout(ConfigError):
    """Nothing could be placed on the cluster within ``run.start_timeout_s``."""


def _describe(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {int(v) if float(v).is_integer() else v}"
                           for k, v in sorted(bundle.items())) + "}"


class _ScoringWorker:
    """One Ray actor: the pool and the models, on this worker's device."""

    def __init__(self, pool: Any, models: dict[str, nn.Module], mean: Sequence[float],
                 std: Sequence[float], use_gpu: bool, batch_size: int) -> None:
        from kdci_ray.train.runtime import limit_threads

        limit_threads()
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
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
    ``bundle`` (a trial's Train worker request: ``train.placement.worker_bundle``), so they land
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
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.chunk = int(chunk)
        use_gpu = bundle.get("GPU", 0) > 0
        custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
        remote = ray.remote(num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0),
                            resources=custom or None)(_ScoringWorker)
        pool_ref = ray.put(pool)
        models_ref = ray.put({name: copy.deepcopy(m).cpu() for name, m in models.items()})
        self.unit = _describe(bundle)
        actors = [remote.remote(pool_ref, models_ref, list(mean), list(std), use_gpu,
                                batch_size) for _ in range(int(workers))]
        self.actors = self._wait_ready(actors, start_timeout_s)
        self.workers = len(self.actors)

    def _wait_ready(self, actors: list[Any], timeout_s: float) -> list[Any]:
        """The actors that started within ``timeout_s`` (the others are killed)."""
        import ray

        from kdci_ray.train.cluster_wait import INTERVAL_S

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
                self.log(f"pool scoring: {len(ready)} of {len(actors)} workers of {self.unit} "
                         f"placed after {time.monotonic() - start:.0f} s (waiting up to "
                         f"run.start_timeout_s={timeout_s:g} s for the cluster's nodes)")
        for actor in pending.values():
            ray.kill(actor)
        if not ready:
            raise ClusterWaitTimeout(
                f"no pool scoring worker of {self.unit} was placed within "
                f"run.start_timeout_s={timeout_s:g} s: the cluster has or added no node that "
                f"fits (see `ray status`); raise run.start_timeout_s, or check the node types "
                f"and their max_workers"
            )
        if pending:
            self.log(f"pool scoring: going on with {len(ready)} of {len(actors)} workers "
                     f"(the others were not placed within run.start_timeout_s)")
        return ready

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
