"""Wide ResNets WRN-d-k (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

Pre-activation BN-ReLU-conv blocks, three groups of (d - 4) / 6 blocks with 16k/32k/64k
channels and strides 1/2/2 after a 3x3 stem of 16 channels, then BN-ReLU, global average
pool and a linear classifier. This follows the zju-vipa ``datafree`` model zoo (CMI,
Fast-Datafree, MosaicKD; originally from ZeroShotKnowledgeTransfer / Wei Yang), including
its module names (``conv1``, ``blockG.layer.i.{bn1,conv1,bn2,conv2,convShortcut}``, ``bn1``,
``fc``), its init and its quirk that a block whose width changes feeds the *pre-activated*
input to the 1x1 ``convShortcut``, so that published CIFAR teachers load unchanged.

Deviations from the reference: ``forward`` returns :class:`Outputs`; ``in_channels``
changes the stem's input channels; ReLUs are not in-place (safer for BN forward hooks);
dropout is kept but defaults to 0 as in the reference factories.
"""

from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .outputs import Outputs


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 with identity or 1x1 conv shortcut."""

    def __init__(
        self, in_planes: int, out_planes: int, stride: int, dropout_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout_rate)
        self.equalInOut = in_planes == out_planes
        # Attribute name kept from the reference: it is a state-dict key.
        self.convShortcut = (
            None
            if self.equalInOut
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(pre)))
        out = self.conv2(self.dropout(out))
        if self.convShortcut is None:
            return x + out
        return self.convShortcut(pre) + out


class NetworkBlock(nn.Module):
    """One group of ``nb_layers`` BasicBlocks (the first one may stride / widen)."""

    def __init__(
        self,
        nb_layers: int,
        in_planes: int,
        out_planes: int,
        stride: int,
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                BasicBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    dropout_rate,
                )
                for i in range(nb_layers)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32x32 inputs; ``depth`` must be 6n + 4."""

    def __init__(
        self,
        depth: int,
        num_classes: int,
        widen_factor: int = 1,
        dropout_rate: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, dropout_rate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, dropout_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, dropout_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(ch[3], num_classes)
        self.nChannels = ch[3]
        # Same init as the reference: He-normal (fan-out) convs, unit BN, zero fc bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Outputs:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        feat = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return Outputs(self.fc(feat), feat)


def wrn_16_1(num_classes: int, in_channels: int = 3) -> WideResNet:
    """WRN-16-1 (widths 16/32/64)."""
    return WideResNet(16, num_classes, 1, in_channels=in_channels)


def wrn_16_2(num_classes: int, in_channels: int = 3) -> WideResNet:
    """WRN-16-2 (widths 32/64/128)."""
    return WideResNet(16, num_classes, 2, in_channels=in_channels)


def wrn_40_1(num_classes: int, in_channels: int = 3) -> WideResNet:
    """WRN-40-1 (widths 16/32/64)."""
    return WideResNet(40, num_classes, 1, in_channels=in_channels)


def wrn_40_2(num_classes: int, in_channels: int = 3) -> WideResNet:
    """WRN-40-2 (widths 32/64/128)."""
    return WideResNet(40, num_classes, 2, in_channels=in_channels)
