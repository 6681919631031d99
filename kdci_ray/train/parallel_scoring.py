"""Score an open-world pool with frozen models on Ray workers (``kdci-ray dictionary`` at scale).

The dictionary job's two passes over the data are forward passes only: the teacher scores the
whole pool (the selection of DFND / MosaicKD) and the dictionary's source model scores the kept
subset (the logits KDCI clusters). On a Ray cluster :class:`RayScorer` spreads both over one actor
per available GPU (``run.use_gpu``) or CPU: the pool object (lazy: memmaps, file lists, crop
parameters) and the models go to the object store once, the index range is cut into chunks that
the actors take in turn, and the results come back in index order, with a progress line every
tenth of the work. Same numbers as the in-process pass (``data.selection.score_pool``) up to
floating-point summation order.
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
    """Forward passes of ``models`` over ``pool`` on ``workers`` Ray actors (0: one per GPU of
    the cluster with ``use_gpu``, else one per CPU). Ray must be initialised by the caller."""

    def __init__(self, pool: Any, models: dict[str, nn.Module], mean: Sequence[float],
                 std: Sequence[float], use_gpu: bool = False, workers: int = 0,
                 batch_size: int = 1024, chunk: int = 16384) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("RayScorer needs ray.init() first (kdci-ray dictionary does it)")
        resources = ray.available_resources()
        unit = "GPU" if use_gpu else "CPU"
        available = int(resources.get(unit, 0))
        if available < 1:
            fix = "set run.use_gpu=false to score on CPUs" if use_gpu else \
                "wait for the running jobs or add nodes"
            raise ConfigError(f"no {unit} is free on the Ray cluster to score the pool ({fix})")
        self.workers = min(int(workers), available) if workers > 0 else available
        self.chunk = int(chunk)
        remote = ray.remote(num_gpus=1, num_cpus=1)(_ScoringWorker) if use_gpu else \
            ray.remote(num_cpus=1)(_ScoringWorker)
        pool_ref = ray.put(pool)
        models_ref = ray.put({name: copy.deepcopy(m).cpu() for name, m in models.items()})
        self.actors = [remote.remote(pool_ref, models_ref, list(mean), list(std), use_gpu,
                                     batch_size) for _ in range(self.workers)]
        self.unit = unit

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
                print(f"{what}: {done}/{len(indices)} images on {self.workers} {self.unit} "
                      f"worker(s) ({time.monotonic() - started:.0f}s)", file=sys.stderr,
                      flush=True)
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
