"""ResNet-18 for small images (32 or 64 pixels): the Tiny-ImageNet backbone of the paper (Table 2).

Same blocks as the ImageNet ResNet-18 but a 3x3 stride-1 stem and no max-pool, so a 64x64 input
reaches the last stage at 8x8 (4x4 for 32x32). 1x1-conv + BN projection shortcuts. Pooled feature
is 512-d; about 11.17M parameters (the backbone alone, without a classifier).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .resnet_cifar import BasicBlock


class ResNet18(nn.Module):
    """Backbone only: forward(x) -> pooled [B, 512]; stages layer1..layer4 (64/128/256/512)."""

    feat_dim = 512

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, planes, stages = (64, 128, 256, 512), 64, []
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(planes, w, stride, "B"), BasicBlock(w, w, 1, "B")))
            planes = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        """Last-stage feature map [B, 512, H/8, W/8]."""
        out = F.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(out))))

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.forward_features(x), 1), 1)


def resnet18(in_channels: int = 3) -> ResNet18:
    return ResNet18(in_channels)
