"""The open-world subset shared by the sampling-based methods (DFND, MosaicKD).

``OpenWorldSubset`` is the part of the unlabeled open-world pool a method keeps (selected by the
teacher's scores: "confidence" for DFND, "entropy" for MosaicKD), held in memory as uint8; it lives
here so that no method module imports another one.

Its KDCI dictionary (K = 128 over the whole subset, KDCI, Wang et al., CVPR 2024) is built from
the images the ranks' equal shares cover, ``len // workers * workers`` of them in order, and is
keyed by exactly those (``data_key``): the pre-build (``kdci-ray dictionary``, which knows
``run.workers``) and every rank of a trial compute the same key, whatever the world size each runs
with. Normalised images exist only a chunk at a time (``NormalizedImages``): at paper scale the
whole subset in float32 is ~7 GB (600k x 3x32x32).
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


class NormalizedImages:
    """A view of uint8 images that normalises only what is indexed: ``len(view)`` and
    ``view[a:b]`` (the normalised chunk, on the method's device) are all a KDCI refresh uses, so
    a subset's share is never held in float32 at once. ``view[:]`` materialises the whole view."""

    def __init__(self, images: Tensor, normalize: Callable[[Tensor], Tensor]) -> None:
        self.images = images
        self.normalize = normalize

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> torch.Size:
        return self.images.shape

    def __getitem__(self, index) -> Tensor:
        return self.normalize(self.images[index])


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
        # what the images are, whatever the ranks: the pool, how they were chosen (only through
        # the indices, kept for safety) and the normalisation the scoring model sees them with
        self._identity = f"{pool.fingerprint}|{criterion}|{ctx.mean}|{ctx.std}|{ctx.imbalance!r}"

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

    def covered(self, workers: int) -> int:
        """Images the equal shares of ``workers`` ranks cover: the first ``len // workers *
        workers`` (the rest, fewer than ``workers``, are in no rank's share)."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        return len(self) // workers * workers

    def data_key(self, workers: int = 1) -> str:
        """Identity of the images a KDCI dictionary of ``workers`` ranks is built from (the
        first ``covered(workers)`` of the subset): the key its ``DictionarySpec`` is stored under.
        Two world sizes that cover the same images share it."""
        count = self.covered(workers)
        h = hashlib.sha1(f"{self._identity}|{count}".encode())
        h.update(self.indices[:count].tobytes())
        return h.hexdigest()[:20]

    @property
    def key(self) -> str:
        """``data_key`` for this run's world size (what every rank of a trial computes)."""
        return self.data_key(self.ctx.world_size)

    def normalized(self, count: int | None = None) -> NormalizedImages:
        """The first ``count`` images (all by default), normalised only when indexed."""
        return NormalizedImages(self.images[:len(self) if count is None else count],
                                self.ctx.normalize)

    def sample(self, batch_size: int, generator: torch.Generator, pad: int = 0,
               flip: bool = False) -> Tensor:
        """``batch_size`` images drawn with replacement, normalised, optionally augmented."""
        idx = torch.randint(len(self.images), (batch_size,), generator=generator)
        x = self.ctx.normalize(self.images[idx])
        return augment(x, generator, pad=pad, flip=flip) if pad > 0 or flip else x

    def heldout(self, n: int, seed: int) -> Tensor:
        """``n`` normalised pool images the selection left out (never distilled on), drawn
        without replacement by a NumPy generator of ``seed``; fewer when fewer are left."""
        pool = self.ctx.open_world
        rest = np.setdiff1d(np.arange(len(pool), dtype=np.int64), self.indices)
        chosen = np.sort(np.random.default_rng(seed).permutation(rest)[:n])
        return self.ctx.normalize(self._materialise(pool, chosen)) if len(chosen) else \
            torch.empty(0)

    def shard(self) -> NormalizedImages:
        """This rank's equal share of the subset (the whole subset on one rank), normalised a
        chunk at a time when indexed: the KDCI refresh scores it in slices and gathers all
        ranks' shares in rank order, i.e. the first ``covered(world_size)`` images, each once."""
        per = len(self.images) // self.ctx.world_size
        start = self.ctx.rank * per
        return NormalizedImages(self.images[start:start + per], self.ctx.normalize)
