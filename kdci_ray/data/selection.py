"""Explicit, recorded selection of an open-world pool by the teacher.

The sampling-based methods do not distill on the raw open-world pool but on the part of it the
teacher finds most useful:

- ``confidence``: the ``n`` images with the highest maximum softmax probability. DFND (Chen et
  al., CVPR 2021) keeps the unlabeled images the teacher is most confident about (its "noisy
  data" selection); we use the plain max-probability score, without DFND's extra class-balance
  and noise-adaptation terms.
- ``entropy``: the ``n`` images with the highest prediction entropy, the subset choice this
  project uses for MosaicKD (Fang et al., NeurIPS 2021), whose open-world data is out of domain
  by construction.

Ties go to the lower index; NaN scores rank last. The result (sorted int64 pool indices) is
cached on disk keyed by the criterion, ``n``, the pool's fingerprint and ``key_extra`` (the
teacher checkpoint's hash), so every trial of a sweep reuses one scoring pass. Its record carries
the versions of the packages that change it (``SELECTION_PACKAGES``: the pixels Pillow decodes,
the teacher's scores); an entry made with others is scored again and replaced, saying so.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdci_ray.atomic import atomic_write
from kdci_ray.data.pool_format import OpenWorldPool
from kdci_ray.environment import (
    SELECTION_PACKAGES,
    note_cache_use,
    say,
    version_difference,
    versions,
)

CRITERIA = ("confidence", "entropy")


def file_sha1(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """The SHA-1 hex digest of a file, read in chunks (teacher checkpoints)."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def selection_key(criterion: str, n: int, fingerprint: str, key_extra: str = "") -> str:
    """The cache key: SHA-1 of (criterion, n, pool fingerprint, key_extra), 20 hex digits."""
    payload = json.dumps([criterion, int(n), fingerprint, key_extra])
    return hashlib.sha1(payload.encode()).hexdigest()[:20]


def scores_from_logits(logits: Tensor, criterion: str) -> np.ndarray:
    """Per-sample selection scores (higher = kept first) from ``(B, K)`` logits."""
    logp = torch.log_softmax(logits.detach().to("cpu", torch.float64), dim=1)
    if criterion == "confidence":
        score = logp.max(dim=1).values.exp()
    elif criterion == "entropy":
        score = -(logp.exp() * logp).sum(dim=1)
    else:
        raise ValueError(f"unknown selection criterion {criterion!r}: choose one of "
                         f"{', '.join(CRITERIA)}")
    return score.numpy()


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """Sorted indices of the ``n`` highest scores; ties go to the lower index, NaN ranks last."""
    ranked = np.where(np.isnan(scores), -np.inf, scores)
    order = np.argsort(-ranked, kind="stable")
    return np.sort(order[:n]).astype(np.int64)


def _stale(json_path: Path, wanted: dict[str, str | None]) -> str:
    """Why a cached selection's record does not vouch for it here ("" when it does)."""
    try:
        record = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return "its record is missing or unreadable"
    recorded = record.get("versions") if isinstance(record, dict) else None
    return version_difference(recorded, wanted)


def _load_cached(npy: Path, n: int, length: int) -> np.ndarray | None:
    try:
        indices = np.load(npy, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None  # unreadable: recompute and overwrite
    if indices.shape != (n,) or indices.dtype.kind not in "iu":
        return None
    if n and (indices.min() < 0 or indices.max() >= length):
        return None
    return indices.astype(np.int64)


def score_pool(pool: OpenWorldPool, score_fn: Callable[[Tensor], Tensor], criterion: str,
               batch_size: int = 1024, progress: bool = False,
               labels: np.ndarray | None = None) -> np.ndarray:
    """Score every image of the pool once, in index order and batches of ``batch_size``;
    ``labels`` (length of the pool), when given, receives the teacher's arg-max classes."""
    total = len(pool)
    scores = np.empty(total, dtype=np.float64)
    started, last = time.monotonic(), -1
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        with torch.no_grad():
            logits = score_fn(pool.get(np.arange(start, stop)))
        if logits.dim() != 2 or logits.shape[0] != stop - start:
            raise ValueError(f"score_fn must return (batch, classes) logits, got "
                             f"{tuple(logits.shape)} for a batch of {stop - start}")
        scores[start:stop] = scores_from_logits(logits, criterion)
        if labels is not None:
            labels[start:stop] = logits.argmax(dim=1).cpu().numpy()
        tenth = stop * 10 // total
        if progress and tenth != last:
            last = tenth
            print(f"selection: scored {stop}/{total} images "
                  f"({time.monotonic() - started:.0f}s)", file=sys.stderr, flush=True)
    return scores


def _scores_and_classes(pool: OpenWorldPool, score_fn: Callable[[Tensor], Tensor],
                        criterion: str, batch_size: int, progress: bool,
                        cache_dir: Path | None, scorer: str,
                        wanted: dict[str, str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Every pool image's score and the teacher's arg-max class (what the shifted selections of
    every imbalance level are cut from), cached as ``scores-<key>.npz`` beside the selections:
    the levels of a benchmark score each pool once. Trusted as a selection is (its record's
    package versions)."""
    key = selection_key(criterion, 0, pool.fingerprint, f"{scorer}|scores-and-classes")
    npz = json_path = None
    if cache_dir is not None:
        npz, json_path = cache_dir / f"scores-{key}.npz", cache_dir / f"scores-{key}.json"
        if npz.is_file() and not _stale(json_path, wanted):
            try:
                with np.load(npz, allow_pickle=False) as found:
                    scores, labels = found["scores"], found["labels"]
                if scores.shape == labels.shape == (len(pool),) and labels.dtype.kind in "iu":
                    note_cache_use("pool-scores", npz, "hit", key, pool=pool.fingerprint)
                    return scores.astype(np.float64), labels.astype(np.int64)
            except (OSError, ValueError, KeyError, EOFError):
                pass  # unreadable: score again and overwrite
    labels = np.empty(len(pool), dtype=np.int64)
    scores = score_pool(pool, score_fn, criterion, batch_size, progress, labels)
    if npz is not None and json_path is not None:
        npz.parent.mkdir(parents=True, exist_ok=True)
        record = {"key": key, "criterion": criterion, "fingerprint": pool.fingerprint,
                  "scorer": scorer, "pool_length": len(pool), "versions": wanted}
        atomic_write(json_path, lambda fh: fh.write(json.dumps(record, indent=2).encode()))
        atomic_write(npz, lambda fh: np.savez(fh, scores=scores, labels=labels))
        note_cache_use("pool-scores", npz, "built", key, pool=pool.fingerprint)
    return scores, labels


def select(pool: OpenWorldPool, score_fn: Callable[[Tensor], Tensor], n: int, criterion: str,
           cache_dir: Path | None, key_extra: str = "", batch_size: int = 1024,
           progress: bool = False,
           pool_scores: Callable[[str], np.ndarray] | None = None,
           imbalance: float = 0.0, strict: bool = True, num_classes: int = 0) -> np.ndarray:
    """The ``n`` pool indices the teacher prefers under ``criterion``, sorted (int64).

    ``imbalance`` > 0 (a controlled shift, ``kdci_ray.data.shift``): per-class quotas of the
    teacher's ``num_classes``-way arg-max with that imbalance ratio, the criterion ranking within
    each class; the pool is then scored in this process (``pool_scores`` gives no classes) and
    the ratio is part of the cache key; ``strict=False`` caps a quota the pool cannot fill
    (smoke mode).

    ``score_fn`` maps a uint8 ``(B, C, H, W)`` batch to the teacher's ``(B, K)`` logits (the
    caller normalises and runs the teacher). With ``cache_dir`` the result is stored as
    ``<cache_dir>/<key>.npy`` with a ``<key>.json`` record (criterion, n, fingerprint,
    key_extra, pool length, time), both written atomically; a later call with the same key
    loads it instead of scoring the pool again.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown selection criterion {criterion!r}: choose one of "
                         f"{', '.join(CRITERIA)}")
    total = len(pool)
    if int(n) <= 0:
        raise ValueError(f"selection size n must be positive, got {n}")
    if int(n) > total:
        raise ValueError(f"cannot select n={n} images from an open-world pool of {total}: "
                         f"lower n or enlarge pool.size")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = int(n)
    fingerprint = pool.fingerprint
    scorer = key_extra  # who scores the pool (the teacher's identity), whatever the shift
    if imbalance:
        if num_classes < 1:
            raise ValueError("a selection with imbalance needs the teacher's num_classes")
        key_extra = f"{key_extra}|imbalance={float(imbalance)!r}|strict={strict}"
    key = selection_key(criterion, n, fingerprint, key_extra)
    npy = json_path = None
    wanted, status = versions(SELECTION_PACKAGES), "built"
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        npy, json_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
        if npy.is_file():
            stale, status = _stale(json_path, wanted), "rebuilt"
            cached = None if stale else _load_cached(npy, n, total)
            if cached is not None:
                note_cache_use("selection", npy, "hit", key, pool=fingerprint)
                return cached
            if stale:
                say(f"cached selection {npy} was made with other package versions ({stale}); "
                    f"scoring the pool again")

    if imbalance:
        from kdci_ray.data.shift import quota_select

        scores, labels = _scores_and_classes(pool, score_fn, criterion, int(batch_size),
                                             progress, cache_dir, scorer, wanted)
        indices = quota_select(scores, labels, n, float(imbalance), num_classes, strict)
    else:
        if pool_scores is not None:
            scores = np.asarray(pool_scores(criterion), dtype=np.float64)
            if scores.shape != (total,):
                raise ValueError(f"pool_scores returned {scores.shape} scores for a pool of "
                                 f"{total}")
        else:
            scores = score_pool(pool, score_fn, criterion, int(batch_size), progress)
        indices = top_n(scores, n)

    if npy is not None and json_path is not None:
        npy.parent.mkdir(parents=True, exist_ok=True)
        record = {"key": key, "criterion": criterion, "n": n, "fingerprint": fingerprint,
                  "key_extra": key_extra, "pool_length": total, "versions": wanted,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "created_unix": time.time()}
        # The record first: the .npy appearing is what marks the entry complete.
        atomic_write(json_path, lambda fh: fh.write(json.dumps(record, indent=2).encode()))
        atomic_write(npy, lambda fh: np.save(fh, indices, allow_pickle=False))
        note_cache_use("selection", npy, status, key, pool=fingerprint)
    return indices
