"""An open-world pool over the image files of a directory tree (ImageNet, Places365, ...).

Every file with an image extension at any depth under ``root`` is one unlabeled image; paths are
sorted so index ``i`` is stable. Files are decoded lazily in ``get`` with PIL: converted to L
(ITU-R 601-2 luma) or RGB, center-cropped to a square and resized (bilinear, antialiased) to
``image_size``. Class subdirectories are ignored: the pool is unlabeled.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdci_ray.data.pool_format import check_format

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")


def _scan(root: Path) -> list[str]:
    """Relative POSIX paths of every image file under ``root``, sorted."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if os.path.splitext(name)[1].lower() in EXTENSIONS:
                rel = name if rel_dir == "." else os.path.join(rel_dir, name)
                found.append(rel.replace(os.sep, "/"))
    found.sort()
    return found


def load_image(path: str | Path, mode: str, image_size: int) -> np.ndarray:
    """One image file as ``(S, S)`` (mode L) or ``(S, S, 3)`` (RGB) uint8, center-cropped square.

    Raises ``ValueError`` naming the file when PIL cannot read it.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.draft(None, (image_size, image_size))  # JPEG: decode at a reduced scale
            img = img.convert(mode)
            w, h = img.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            box = (left, top, left + side, top + side)
            if side == image_size:
                img = img.crop(box)
            else:
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box,
                                 reducing_gap=3.0)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image file {path}: {exc}") from None


class ImageFolderPool:
    """Every image file under ``root`` (extensions in ``EXTENSIONS``, any case, any depth).

    ``size`` keeps the first ``size`` files of the sorted list. Nothing is decoded before
    ``get``; the fingerprint (relative paths, byte sizes, mtimes, format) is computed from
    ``os.stat`` on first use.
    """

    def __init__(self, root: str | Path, channels: int, image_size: int,
                 size: int | None = None) -> None:
        check_format(channels, image_size)
        self.root = Path(root).expanduser()
        accepted = ", ".join(EXTENSIONS)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"image folder {self.root} does not exist (or is not a directory): expected "
                f"image files ({accepted}, any case, any depth) under it; set pool.path"
            )
        files = _scan(self.root)
        if not files:
            raise FileNotFoundError(
                f"no image files under {self.root}: expected files ending in {accepted} "
                f"(any case, any depth)"
            )
        if size is not None:
            if int(size) < 1:
                raise ValueError(f"pool size must be at least 1, got {size}")
            files = files[: int(size)]
        self.files = files
        self.channels = int(channels)
        self.image_size = int(image_size)
        self.mode = "L" if self.channels == 1 else "RGB"
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> Path:
        return self.root / self.files[index]

    def get(self, indices: Sequence[int] | np.ndarray) -> Tensor:
        """uint8 ``(n, C, image_size, image_size)`` images for ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n, s = len(self.files), self.image_size
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            bad = idx[(idx < 0) | (idx >= n)][0]
            raise IndexError(f"index {bad} out of range for a pool of {n} images")
        out = np.empty((len(idx), s, s, self.channels), dtype=np.uint8)
        view = out[..., 0] if self.channels == 1 else out
        for j, i in enumerate(idx):
            view[j] = load_image(self.root / self.files[i], self.mode, s)
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha1(f"folder:c{self.channels}:s{self.image_size}".encode())
            for rel in self.files:
                st = os.stat(self.root / rel)
                h.update(f"\0{rel}\0{st.st_size}\0{st.st_mtime_ns}".encode())
            self._fingerprint = (f"folder:{len(self.files)}:channels={self.channels}:"
                                 f"image_size={self.image_size}:{h.hexdigest()[:20]}")
        return self._fingerprint
