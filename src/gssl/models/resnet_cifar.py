"""CIFAR ResNets (He et al. 2016, section 4.2) as used by LDAM-DRW and the G-SSL code.

3x3 conv 3->16, three stages of n basic blocks (16/32/64 channels, strides 1/2/2),
option-A shortcuts (subsample + zero channel padding: no parameters), global average pool.
Depth = 6n + 2: ResNet-20/32/44/56/110 have n = 3/5/7/9/18 and about 0.27/0.46/0.66/0.85/1.7M
parameters with a 10-way linear classifier (the backbone alone has 650 fewer).
Kaiming-normal init of every conv, as in LDAM-DRW's resnet32.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class ZeroPadShortcut(nn.Module):
    """Option A: subsample and zero-pad the new channels (no parameters)."""

    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.pad, self.stride = extra_channels // 2, stride

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 convs and a residual. Where the shape changes, shortcut "A" zero-pads (the CIFAR
    ResNets) and "B" projects with a 1x1 conv + BN (ResNet-18)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = (
                ZeroPadShortcut(planes - in_planes, stride)
                if shortcut == "A"
                else nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """Backbone only: forward(x) -> pooled [B, 64] feature; heads live in gssl.models.heads."""

    feat_dim = 64

    def __init__(self, depth: int, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes, 1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward_features(self, x: Tensor) -> Tensor:
        """Last-stage feature map [B, 64, H/4, W/4] (the Grad-CAM target layer, layer3)."""
        out = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(out)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.forward_features(x), 1), 1)


def resnet8(in_channels: int = 3) -> ResNetCifar:
    """One block per stage: the smallest of the family, for quick trials and the compiler's tests."""
    return ResNetCifar(8, in_channels)


def resnet20(in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(20, in_channels)


def resnet32(in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(32, in_channels)


def resnet44(in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(44, in_channels)


def resnet56(in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(56, in_channels)


def resnet110(in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(110, in_channels)
