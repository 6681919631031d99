"""The open-world subset shared by the sampling-based methods (DFND, MosaicKD).

``OpenWorldSubset`` is the part of the unlabeled open-world pool a method keeps (selected by the
teacher's scores: "confidence" for DFND, "entropy" for MosaicKD), held in memory as uint8.
Moved here unchanged from ``methods/dfnd.py`` so that no method module imports another one.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from kdci_ray.data.selection import select
from kdci_ray.methods.base import MethodContext
from kdci_ray.methods.pool import augment
from kdci_ray.models.fingerprint import state_fingerprint


def teacher_key(ctx: MethodContext) -> str:
    """Identity of the teacher *as it scores*: its weights plus the input normalisation."""
    return state_fingerprint(ctx.teacher, f"{ctx.mean}|{ctx.std}")


class OpenWorldSubset:
    """The part of the open-world pool a sampling-based method keeps, in memory as uint8.

    ``criterion`` is that of :func:`kdci_ray.data.selection.select` ("confidence": DFND,
    "entropy": MosaicKD); ``n <= 0`` or ``n >= len(pool)`` keeps the whole pool. Under
    torch.distributed rank 0 selects first and the other ranks read its cached selection.
    ``pool_scores`` replaces the in-process scoring pass (see ``data.selection.select``).
    """

    def __init__(self, ctx: MethodContext, criterion: str, n: int, progress: bool = False,
                 pool_scores: Callable[[str], np.ndarray] | None = None) -> None:
        pool = ctx.open_world
        if pool is None:
            raise RuntimeError("this method needs an open-world pool (MethodContext.open_world)")
        self.ctx = ctx
        start = time.perf_counter()
        if 0 < n < len(pool):
            self.indices = self._select(pool, criterion, n, progress, pool_scores)
        else:
            self.indices = np.arange(len(pool), dtype=np.int64)
        self.images = self._materialise(pool, self.indices)
        self.seconds = time.perf_counter() - start
        h = hashlib.sha1(f"{pool.fingerprint}|{criterion}|{ctx.mean}|{ctx.std}|"
                         f"{ctx.world_size}|{ctx.imbalance!r}".encode())
        h.update(self.indices.tobytes())
        self.key = h.hexdigest()[:20]  # what the subset's KDCI dictionary is keyed by

    def _select(self, pool, criterion: str, n: int, progress: bool,
                pool_scores: Callable[[str], np.ndarray] | None) -> np.ndarray:
        ctx = self.ctx

        @torch.no_grad()
        def score(images: Tensor) -> Tensor:
            return ctx.teacher(ctx.normalize(images)).logits

        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if distributed and dist.get_rank() != 0:
            dist.barrier()  # wait for rank 0 to score the pool and cache the selection
        indices = select(pool, score, n, criterion, ctx.cache_dir, key_extra=teacher_key(ctx),
                         progress=progress, pool_scores=pool_scores, imbalance=ctx.imbalance,
                         strict=ctx.strict_shift, num_classes=ctx.num_classes)
        if distributed and dist.get_rank() == 0:
            dist.barrier()
        return np.asarray(indices, dtype=np.int64)

    @staticmethod
    def _materialise(pool, indices: np.ndarray, chunk: int = 8192) -> Tensor:
        first = pool.get(indices[:1])
        out = torch.empty((len(indices), *first.shape[1:]), dtype=torch.uint8)
        for i in range(0, len(indices), chunk):
            out[i:i + chunk] = pool.get(indices[i:i + chunk])
        return out

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, batch_size: int, generator: torch.Generator, pad: int = 0,
               flip: bool = False) -> Tensor:
        """``batch_size`` images drawn with replacement, normalised, optionally augmented."""
        idx = torch.randint(len(self.images), (batch_size,), generator=generator)
        x = self.ctx.normalize(self.images[idx])
        return augment(x, generator, pad=pad, flip=flip) if pad > 0 or flip else x

    def shard(self) -> Tensor:
        """This rank's equal share of the subset, normalised (the whole subset on one rank):
        the KDCI refresh gathers all ranks' shares, so the dictionary sees each image once."""
        per = len(self.images) // self.ctx.world_size
        start = self.ctx.rank * per
        return self.ctx.normalize(self.images[start:start + per])
