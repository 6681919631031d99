"""Small BatchNorm CNNs for the embedded digits data (16x16; any input side >= 8).

Each model is a stack of conv-BN-ReLU stages separated by 2x2 max pooling, followed by
global (adaptive) average pooling and one linear layer. Every conv is followed by a
BatchNorm layer because DeepInversion (Yin et al., CVPR 2020) matches the BN running
statistics of the teacher. These are our own designs, not taken from a reference zoo.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
from torch import Tensor

from .outputs import Outputs


def _conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),
    ]


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stages -> global average pool -> linear.

    Args:
        stages: conv widths per stage, e.g. ``[[32, 32], [64, 64], [128]]``; a 2x2 max
            pool sits between consecutive stages (none after the last).
        num_classes: number of output classes.
        in_channels: channels of the input images.
    """

    def __init__(
        self, stages: Sequence[Sequence[int]], num_classes: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for i, widths in enumerate(stages):
            if i > 0:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            for w in widths:
                layers += _conv_bn_relu(ch, w)
                ch = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Outputs:
        feat = self.pool(self.features(x)).flatten(1)
        return Outputs(self.fc(feat), feat)


def digits_cnn(num_classes: int, in_channels: int = 3) -> SmallCNN:
    """Teacher for the digits data: 5 convs, widths 32-32 / 64-64 / 128 (~0.14 M params)."""
    return SmallCNN([[32, 32], [64, 64], [128]], num_classes, in_channels)


def digits_cnn_small(num_classes: int, in_channels: int = 3) -> SmallCNN:
    """Student for the digits data: 3 convs, widths 16 / 32 / 64 (~6x fewer params)."""
    return SmallCNN([[16], [32], [64]], num_classes, in_channels)


def tiny_cnn(num_classes: int, in_channels: int = 3) -> SmallCNN:
    """A few thousand parameters (widths 8 / 16 / 16), for fast tests."""
    return SmallCNN([[8], [16], [16]], num_classes, in_channels)
