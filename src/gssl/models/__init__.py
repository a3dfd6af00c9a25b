"""Backbones (pooled feature out, no classifier) and heads.

Every backbone has `.feat_dim`, `forward(x) -> [B, feat_dim]`, `forward_features(x)` (last-stage
map, for Grad-CAM) and named stages `layer1..layer3` (`layer4` for ResNet-18).
"""

from collections.abc import Callable

import torch.nn as nn

from .heads import CosineLinear, build_head
from .resnet import ResNet18, resnet18
from .resnet_cifar import ResNetCifar, resnet8, resnet20, resnet32, resnet44, resnet56, resnet110
from .scattering import ScatNet, Scattering2D, scatnet
from .wideresnet import WideResNet, wrn28_2, wrn40_2

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet8": resnet8,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet18": resnet18,
    "wrn28_2": wrn28_2,
    "wrn40_2": wrn40_2,
    "scatnet": scatnet,  # the fixed scattering transform + a trainable adapter (ScatSimCLR)
}


def build_backbone(name: str, in_channels: int = 3) -> nn.Module:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
    return BACKBONES[name](in_channels=in_channels)


__all__ = [
    "BACKBONES",
    "build_backbone",
    "build_head",
    "CosineLinear",
    "ResNetCifar",
    "ResNet18",
    "WideResNet",
    "ScatNet",
    "Scattering2D",
]
