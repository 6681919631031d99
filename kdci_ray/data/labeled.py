"""The labelled data a teacher was trained on, as uint8 tensors normalised on demand."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def to_device(x: Tensor, device: torch.device) -> Tensor:
    """``x`` on ``device`` without making the host wait: a CPU tensor bound for a GPU is copied
    through pinned memory without blocking (a copy from pageable memory synchronises the
    stream); the copy back to the CPU blocks, as reading a value must."""
    if x.device == device:
        return x
    if x.device.type == "cpu" and device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device, non_blocking=device.type != "cpu")


@functools.lru_cache(maxsize=64)
def _channel_constants(mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype,
                       device: torch.device) -> tuple[Tensor, Tensor]:
    """``(1, C, 1, 1)`` mean and std, made once per device (never copied to it per batch)."""
    mean_t = torch.tensor(mean, dtype=dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=dtype).view(1, -1, 1, 1)
    return to_device(mean_t, device), to_device(std_t, device)


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (or [0, 1] float) ``(B, C, H, W)`` -> ``(x - mean) / std`` per channel, on the
    images' device: the one pixel-to-model-input mapping of teachers, methods and scorers."""
    x = images.float().div(255.0) if images.dtype == torch.uint8 else images
    mean_t, std_t = _channel_constants(tuple(float(m) for m in mean),
                                       tuple(float(s) for s in std), x.dtype, x.device)
    return (x - mean_t) / std_t


@dataclass
class LabeledData:
    """Train and test splits as uint8 ``(N, C, H, W)`` images plus int64 labels.

    Students never see ``x_train``: only the teacher trains on it. Everything is scored on the
    test split. ``mean``/``std`` map ``[0, 1]`` pixels to the models' input range.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 ``(B, C, H, W)`` -> float model input."""
        return normalize(images, self.mean, self.std)

    def test_inputs(self) -> tuple[Tensor, Tensor]:
        return self.normalize(self.x_test), self.y_test
