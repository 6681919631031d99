"""CIFAR ResNet-18/34 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

This is the 32x32 variant used by the zju-vipa ``datafree`` model zoo (CMI, Fast-Datafree,
MosaicKD; itself from DAFL / kuangliu's pytorch-cifar): a 3x3 stride-1 stem with no max
pool, four stages of 64/128/256/512 channels with strides 1/2/2/2, global average pool and
a linear classifier. Module names (``conv1``, ``bn1``, ``layerN.i.{conv,bn}{1,2}``,
``layerN.i.shortcut.{0,1}``, ``linear``) are kept identical to the reference so that the
community's published CIFAR teacher checkpoints load unchanged.

Deviations from the reference: ``forward`` returns :class:`Outputs` instead of a tensor
(or a tuple when ``return_features=True``); ``in_channels`` changes the stem's input
channels; the Bottleneck variants (ResNet-50 and deeper) are not provided.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .outputs import Outputs


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 conv-BN projection shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # An empty Sequential is the identity and contributes no state-dict keys.
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet with BasicBlocks; ``num_blocks`` gives the blocks per stage."""

    def __init__(self, num_blocks: list[int], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.linear = nn.Linear(512 * BasicBlock.expansion, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes * BasicBlock.expansion
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Outputs:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        feat = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return Outputs(self.linear(feat), feat)


def resnet18(num_classes: int, in_channels: int = 3) -> ResNet:
    """ResNet-18 for 32x32 inputs (blocks 2-2-2-2)."""
    return ResNet([2, 2, 2, 2], num_classes, in_channels)


def resnet34(num_classes: int, in_channels: int = 3) -> ResNet:
    """ResNet-34 for 32x32 inputs (blocks 3-4-6-3)."""
    return ResNet([3, 4, 6, 3], num_classes, in_channels)
