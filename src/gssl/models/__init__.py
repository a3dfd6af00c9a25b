"""Backbones (pooled feature out, no classifier) and heads.

Every backbone has `.feat_dim`, `forward(x) -> [B, feat_dim]`, `forward_features(x)` (last-stage
map, for Grad-CAM) and, the convolutional ones, named stages `layer1..layer3` (`layer4` for ResNet-18).
The ViT's size comes from keyword options (the `vit` config section); the others take none.
"""

from collections.abc import Callable

import torch.nn as nn

from .heads import CosineLinear, build_head
from .resnet import ResNet18, resnet18
from .resnet_cifar import ResNetCifar, resnet8, resnet20, resnet32, resnet44, resnet56, resnet110
from .scattering import ScatNet, Scattering2D, scatnet
from .vit import ViT, vit
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
    "vit": vit,  # ViT-Tiny by default; patch, width, depth, heads from the `vit` section (SelfPatch, DINO)
}


def build_backbone(name: str, in_channels: int = 3, options: dict | None = None) -> nn.Module:
    """`options`: the backbone's own settings (the ViT's size); None or {} for the defaults."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
    return BACKBONES[name](in_channels=in_channels, **(options or {}))


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
    "ViT",
]
