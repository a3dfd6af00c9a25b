"""WideResNet-d-k (Zagoruyko & Komodakis 2016) in the FixMatch variant (longer paper: SSL and
adversarial experiments).

Pre-activation blocks, widths 16/16k/32k/64k, (d-4)/6 blocks per stage. FixMatch's choices, kept
because the semi-supervised protocol was tuned with them: BatchNorm momentum 0.001 (PyTorch
convention, i.e. a slow running average), LeakyReLU(0.1), the first block of stage 1 activates before
its shortcut (block semantics of the original TF code), Kaiming-normal (fan_out, leaky_relu) conv
init. No dropout.
WRN-28-2: about 1.47M parameters, WRN-40-2: about 2.24M (backbone, 128-d pooled feature).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

BN_MOMENTUM = 0.001
SLOPE = 0.1


class Block(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, activate_before_residual: bool):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, momentum=BN_MOMENTUM)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.equal = in_planes == planes
        self.shortcut = None if self.equal else nn.Conv2d(in_planes, planes, 1, stride, bias=False)
        self.activate_before_residual = activate_before_residual

    def forward(self, x: Tensor) -> Tensor:
        # As the original FixMatch (TF) `residual`: the conv branch always sees the activated input;
        # the shortcut sees the raw input except in the flagged first block.
        act = F.leaky_relu(self.bn1(x), SLOPE)
        if self.activate_before_residual:
            x = act
        out = self.conv1(act)
        out = self.conv2(F.leaky_relu(self.bn2(out), SLOPE))
        return out + (x if self.shortcut is None else self.shortcut(x))


class WideResNet(nn.Module):
    """Backbone only: forward(x) -> pooled [B, 64*widen]; stages layer1..layer3."""

    def __init__(self, depth: int = 28, widen: int = 2, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        w = [16, 16 * widen, 32 * widen, 64 * widen]
        self.feat_dim = w[3]
        self.conv1 = nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False)
        self.layer1 = self._stage(w[0], w[1], n, 1, activate_before_residual=True)
        self.layer2 = self._stage(w[1], w[2], n, 2)
        self.layer3 = self._stage(w[2], w[3], n, 2)
        self.bn = nn.BatchNorm2d(w[3], momentum=BN_MOMENTUM)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    @staticmethod
    def _stage(in_planes, planes, n, stride, activate_before_residual=False) -> nn.Sequential:
        blocks = [Block(in_planes, planes, stride, activate_before_residual)]
        blocks += [Block(planes, planes, 1, False) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward_features(self, x: Tensor) -> Tensor:
        """Last-stage feature map after the final BN + activation [B, 64*widen, H/4, W/4]."""
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return F.leaky_relu(self.bn(out), SLOPE)

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.forward_features(x), 1), 1)


def wrn28_2(in_channels: int = 3) -> WideResNet:
    return WideResNet(28, 2, in_channels)


def wrn40_2(in_channels: int = 3) -> WideResNet:
    return WideResNet(40, 2, in_channels)
