"""The embedded open-world pool: random crops of the photographs that ship with scikit-learn.

MosaicKD (Fang et al., NeurIPS 2021) and DFND (Chen et al., CVPR 2021) draw on a large unlabeled
open-world pool (ImageNet, Places365, ...). On a machine without any of those we crop the two real
photographs packaged in scikit-learn (``china.jpg`` and ``flower.jpg``, 427x640 RGB): real,
unlabeled, out of domain, and as large as asked without materialising anything. Every crop is
fixed by ``(seed, index)``: the crop parameters of all ``size`` indices are drawn once at
construction (a few bytes each) and the pixels are cut and resized on demand in ``get``.

Deviation from "square-ish" crops: the crops are exactly square (side a uniform share in
``[min_scale, 1]`` of the photo's shorter side), so resizing to ``image_size x image_size`` never
distorts them. Resizing is PIL's bilinear filter, which widens its support when downscaling
(antialiased), applied for speed to the level of a precomputed 2x box-filter pyramid of the photo
that still holds at least ``_GAP`` source pixels per output pixel (as PIL's ``reducing_gap``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from kdci_ray.data.pool_format import check_format

SOURCE = "sklearn-sample-images"
_VERSION = 1  # bump when the crop recipe changes: it is part of the fingerprint
_GAP = 2.0  # resize from a pyramid level with >= _GAP source pixels per output pixel


@functools.lru_cache(maxsize=1)
def _photo_arrays() -> tuple[tuple[str, ...], tuple[np.ndarray, ...]]:
    """The packaged photographs as ``(H, W, 3)`` uint8 arrays, in a fixed (name) order."""
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    names = [str(f).replace("\\", "/").rsplit("/", 1)[-1] for f in bunch.filenames]
    order = sorted(range(len(names)), key=lambda i: names[i])
    arrays = tuple(np.ascontiguousarray(bunch.images[i], dtype=np.uint8) for i in order)
    return tuple(names[i] for i in order), arrays


@functools.lru_cache(maxsize=2)
def _pyramids(mode: str) -> tuple[list, ...]:
    """Per photograph, PIL images in ``mode`` ("L": ITU-R 601-2 luma, or "RGB") at full size,
    1/2, 1/4, ... (2x2 box averages), down to a few pixels."""
    from PIL import Image

    pyramids = []
    for array in _photo_arrays()[1]:
        levels = [Image.fromarray(array, "RGB").convert(mode)]
        while min(levels[-1].size) >= 8:
            levels.append(levels[-1].reduce(2))
        pyramids.append(levels)
    return tuple(pyramids)


def _as_indices(indices: Sequence[int] | np.ndarray, length: int) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= length):
        bad = idx[(idx < 0) | (idx >= length)][0]
        raise IndexError(f"index {bad} out of range for a pool of {length} images")
    return idx


class EmbeddedPhotoPool:
    """``size`` random square crops of scikit-learn's sample photographs, made on demand.

    Crop ``i`` takes photo ``p_i``, a square of side ``s_i`` = a uniform share in
    ``[min_scale, 1]`` of that photo's shorter side at a uniform random position, optionally
    mirrored horizontally, resized to ``image_size`` and converted to ``channels`` (1: ITU-R
    601-2 luma, as PIL's ``convert("L")``; 3: RGB). The parameters of index ``i`` depend only on
    ``(seed, i)`` (one seeded generator filled in index order), so a smaller pool is a prefix of
    a larger one with the same seed.
    """

    def __init__(self, size: int, channels: int, image_size: int, seed: int = 0,
                 min_scale: float = 0.1) -> None:
        if int(size) < 1:
            raise ValueError(f"pool size must be at least 1, got {size}")
        check_format(channels, image_size)
        if not 0.0 < float(min_scale) <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        self.size = int(size)
        self.channels = int(channels)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.min_scale = float(min_scale)
        self.mode = "L" if self.channels == 1 else "RGB"
        self.names, arrays = _photo_arrays()
        heights = np.array([a.shape[0] for a in arrays], dtype=np.int64)
        widths = np.array([a.shape[1] for a in arrays], dtype=np.int64)
        self._draw(heights, widths)

    def _draw(self, heights: np.ndarray, widths: np.ndarray) -> None:
        """Draw every crop's (photo, side, x, y, flip) once, stored compactly (8 bytes/crop)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x9E0A]))
        self.photo = np.empty(self.size, dtype=np.uint8)
        self.side = np.empty(self.size, dtype=np.int16)
        self.x0 = np.empty(self.size, dtype=np.int16)
        self.y0 = np.empty(self.size, dtype=np.int16)
        self.flip = np.empty(self.size, dtype=bool)
        chunk = 1 << 17  # bounds the float64 temporaries; the stream is the same either way
        for start in range(0, self.size, chunk):
            stop = min(start + chunk, self.size)
            u = rng.random((stop - start, 5))
            p = np.minimum((u[:, 0] * len(heights)).astype(np.int64), len(heights) - 1)
            short = np.minimum(heights[p], widths[p])
            share = self.min_scale + (1.0 - self.min_scale) * u[:, 1]
            side = np.clip(np.rint(share * short), 1, short).astype(np.int64)
            x0 = np.minimum((u[:, 2] * (widths[p] - side + 1)).astype(np.int64), widths[p] - side)
            y0 = np.minimum((u[:, 3] * (heights[p] - side + 1)).astype(np.int64),
                            heights[p] - side)
            self.photo[start:stop] = p
            self.side[start:stop] = side
            self.x0[start:stop] = x0
            self.y0[start:stop] = y0
            self.flip[start:stop] = u[:, 4] < 0.5

    def __len__(self) -> int:
        return self.size

    def crop_box(self, index: int) -> tuple[int, int, int, int, int, bool]:
        """``(photo, left, top, right, bottom, flipped)`` of crop ``index`` (for inspection)."""
        i = int(_as_indices([index], self.size)[0])
        x0, y0, s = int(self.x0[i]), int(self.y0[i]), int(self.side[i])
        return int(self.photo[i]), x0, y0, x0 + s, y0 + s, bool(self.flip[i])

    def get(self, indices: Sequence[int] | np.ndarray) -> Tensor:
        """uint8 ``(n, C, image_size, image_size)`` crops for ``indices``, in that order."""
        from PIL import Image

        idx = _as_indices(indices, self.size)
        pyramids = _pyramids(self.mode)
        s = self.image_size
        out = np.empty((len(idx), s, s, self.channels), dtype=np.uint8)
        view = out[..., 0] if self.channels == 1 else out
        photo, side = self.photo[idx], self.side[idx].astype(np.float64)
        x0, y0 = self.x0[idx].astype(np.float64), self.y0[idx].astype(np.float64)
        level = np.floor(np.log2(np.maximum(side / (_GAP * s), 1.0))).astype(np.int64)
        for j in range(len(idx)):
            levels = pyramids[photo[j]]
            lv = min(int(level[j]), len(levels) - 1)
            f = float(1 << lv)
            box = (x0[j] / f, y0[j] / f, (x0[j] + side[j]) / f, (y0[j] + side[j]) / f)
            view[j] = np.asarray(levels[lv].resize((s, s), Image.Resampling.BILINEAR, box=box))
        flip = self.flip[idx]
        if flip.any():
            out[flip] = out[flip][:, :, ::-1]
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    @property
    def fingerprint(self) -> str:
        return (f"embedded:{SOURCE}:v{_VERSION}:{'+'.join(self.names)}:size={self.size}:"
                f"seed={self.seed}:min_scale={self.min_scale!r}:channels={self.channels}:"
                f"image_size={self.image_size}")
