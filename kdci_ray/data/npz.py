"""An open-world pool over downsampled-ImageNet npz batches (Imagenet32/64, Chrabaszcz et al. 2017).

The distributed files are ``train_data_batch_1.npz`` ... ``train_data_batch_10.npz`` (and
``val_data.npz``), each holding ``data``: uint8 ``(N, 3*S*S)`` rows in CIFAR's planar CHW order,
and ``labels`` (ignored: the pool is unlabeled). 1.28M images never need to fit in memory:

- at construction only each file's ``data`` header is read (shape and dtype, via ``zipfile`` and
  ``numpy.lib.format``), never the pixels;
- a ``data`` member stored uncompressed (``np.savez``) is memory-mapped in place inside the zip;
- a compressed one (``np.savez_compressed``) is decompressed on demand, keeping at most one file in
  memory (an LRU cache of size 1). ``get`` serves requested indices grouped by file, so a batch
  decompresses each file it touches once; random access across files is slow on compressed
  batches: read them in index order (as ``selection.select`` does).
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib import format as npy_format
from torch import Tensor

from kdci_ray.data.pool_format import check_format

PATTERN = "*.npz"
EXPECTED = ("files matching *.npz (e.g. train_data_batch_1.npz ... train_data_batch_10.npz, "
            "val_data.npz), each with a 'data' array of uint8 (N, 3*S*S) rows in planar CHW "
            "order (S = 32 or 64) and 'labels'")
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header (30 bytes)


@dataclass(frozen=True)
class _Member:
    """Where a file's ``data`` array lives: its shape and, when stored raw, its byte offset."""

    path: Path
    rows: int
    row_len: int
    offset: int | None  # byte offset of the raw array in the zip (None: compressed)


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _inspect(path: Path) -> _Member:
    """Read only the header of ``path``'s ``data`` member: shape, dtype, storage."""
    bad = f"{path} is not a downsampled-ImageNet batch: expected {EXPECTED}"
    try:
        with zipfile.ZipFile(path) as zf:
            try:
                info = zf.getinfo("data.npy")
            except KeyError:
                raise ValueError(f"{bad}; it has no 'data' array (keys: "
                                 f"{[n.removesuffix('.npy') for n in zf.namelist()]})") from None
            with zf.open(info) as fh:
                version = npy_format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = npy_format.read_array_header_1_0(fh)
                else:
                    shape, fortran, dtype = npy_format.read_array_header_2_0(fh)
                header_len = fh.tell()
        offset = None
        if info.compress_type == zipfile.ZIP_STORED and not fortran:
            with open(path, "rb") as raw:
                raw.seek(info.header_offset)
                fields = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
            if fields[0] == b"PK\x03\x04":
                offset = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]
                offset += header_len
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{bad}: {exc}") from None
    if dtype != np.uint8 or len(shape) != 2:
        raise ValueError(f"{bad}; its 'data' is {dtype} {tuple(shape)}")
    side = int(round((shape[1] / 3) ** 0.5))
    if 3 * side * side != shape[1]:
        raise ValueError(f"{bad}; rows of {shape[1]} values are not 3*S*S")
    return _Member(path, int(shape[0]), int(shape[1]), offset)


def _load_data(path: Path) -> np.ndarray:
    """Decompress the whole ``data`` array of one batch file (the costly step)."""
    with np.load(path) as npz:
        return np.asarray(npz["data"], dtype=np.uint8)


def to_channels(images: Tensor, channels: int) -> Tensor:
    """uint8 ``(n, 3, H, W)`` -> ``channels`` (1: ITU-R 601-2 luma, rounded as PIL's "L")."""
    if channels == 3:
        return images
    r, g, b = (images[:, i : i + 1].to(torch.int32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8)


def resize_uint8(images: Tensor, size: int) -> Tensor:
    """uint8 ``(n, C, H, W)`` -> ``(n, C, size, size)``, bilinear with antialiasing."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                      antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)


class NpzBatchPool:
    """The images of every ``*.npz`` batch in ``root`` (natural name order), read lazily.

    ``size`` keeps the first ``size`` images. Images are converted to ``channels`` and resized
    to ``image_size`` when the files' ``S`` differs.
    """

    def __init__(self, root: str | Path, channels: int, image_size: int,
                 size: int | None = None) -> None:
        check_format(channels, image_size)
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"npz batch directory {self.root} does not exist: expected "
                                    f"{EXPECTED}; set pool.path")
        paths = sorted(self.root.glob(PATTERN), key=lambda p: _natural_key(p.name))
        if not paths:
            raise FileNotFoundError(f"no npz batches in {self.root}: expected {EXPECTED}")
        self.members = [_inspect(p) for p in paths]
        lengths = {m.row_len for m in self.members}
        if len(lengths) != 1:
            raise ValueError(f"npz batches in {self.root} mix image sizes (row lengths "
                             f"{sorted(lengths)})")
        self.source_size = int(round((lengths.pop() / 3) ** 0.5))
        self.offsets = np.cumsum([0] + [m.rows for m in self.members]).astype(np.int64)
        total = int(self.offsets[-1])
        if size is not None and int(size) < 1:
            raise ValueError(f"pool size must be at least 1, got {size}")
        self.size = total if size is None else min(total, int(size))
        if self.size < 1:
            raise FileNotFoundError(f"the npz batches in {self.root} hold no images")
        self.channels = int(channels)
        self.image_size = int(image_size)
        self._cache: tuple[int, np.ndarray] | None = None  # (file index, its rows): LRU of one
        stats = [os.stat(m.path) for m in self.members]
        h = hashlib.sha1(f"npz:c{self.channels}:s{self.image_size}:n{self.size}".encode())
        for m, st in zip(self.members, stats, strict=True):
            h.update(f"\0{m.path.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        self._fingerprint = (f"npz:{self.size}:channels={self.channels}:"
                             f"image_size={self.image_size}:{h.hexdigest()[:20]}")

    def __len__(self) -> int:
        return self.size

    def _rows(self, file: int) -> np.ndarray:
        """The ``(N, 3*S*S)`` rows of batch ``file``: a memmap, or the one decompressed file."""
        m = self.members[file]
        if m.offset is not None:
            return np.memmap(m.path, dtype=np.uint8, mode="r", offset=m.offset,
                             shape=(m.rows, m.row_len))
        if self._cache is None or self._cache[0] != file:
            self._cache = None  # drop the previous file before decompressing the next
            data = _load_data(m.path)
            if data.shape != (m.rows, m.row_len):
                raise ValueError(f"{m.path} changed since the pool was built: 'data' is "
                                 f"{data.shape}, header said {(m.rows, m.row_len)}")
            self._cache = (file, data)
        return self._cache[1]

    def get(self, indices: Sequence[int] | np.ndarray) -> Tensor:
        """uint8 ``(n, C, image_size, image_size)`` images for ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.size):
            bad = idx[(idx < 0) | (idx >= self.size)][0]
            raise IndexError(f"index {bad} out of range for a pool of {self.size} images")
        s = self.source_size
        rows = np.empty((len(idx), 3 * s * s), dtype=np.uint8)
        file_of = np.searchsorted(self.offsets, idx, side="right") - 1
        order = np.argsort(file_of, kind="stable")
        # Serve the file already in memory first, so a batch never reloads it.
        files = np.unique(file_of)
        if self._cache is not None and self._cache[0] in files:
            files = np.concatenate([[self._cache[0]], files[files != self._cache[0]]])
        for f in files:
            sel = order[file_of[order] == f]
            rows[sel] = self._rows(int(f))[idx[sel] - self.offsets[f]]
        images = torch.from_numpy(rows).view(len(idx), 3, s, s)
        return resize_uint8(to_channels(images, self.channels), self.image_size).contiguous()

    @property
    def fingerprint(self) -> str:
        return self._fingerprint
