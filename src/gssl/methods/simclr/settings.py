"""The simclr method's settings: torch-free, so that parsing a configuration loads no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...fields import checked, described, finite_non_negative, finite_positive, positive
from .. import probe_settings as probe


@dataclass
class ContrastiveConfig:
    """SimCLR pre-training with pretext regularisation (docs/contrastive.md): off unless views >= 2.
    The pretext tasks and their gate come from ssl.*; the test accuracy per epoch is k-NN, the final one
    a linear probe on the frozen backbone."""

    switch: ClassVar[str] = "views"  # turns the method on (methods.settings.SWITCHES)

    views: int = field(
        default=0,
        metadata=checked(
            lambda v: v == 0 or v >= 2,
            "0 (off) or a number of views >= 2",
            help="SimCLR: augmented views per image (0: off)",
        ),
    )
    temperature: float = field(default=0.5, metadata=finite_positive("NT-Xent temperature"))
    proj_dim: int = field(default=128, metadata=positive("projection head's output size"))
    proj_hidden: int = field(default=512, metadata=positive("projection head's hidden size"))
    crop_min_scale: float = field(
        default=0.2,
        metadata=checked(
            lambda v: 0 < v <= 1,
            "a fraction in (0, 1]",
            help="smallest area fraction of a random resized crop",
        ),
    )
    knn_k: int = probe.knn_k(200)
    knn_temperature: float = probe.knn_temperature(0.1)
    linear_epochs: int = probe.linear_epochs()
    linear_lr: float = probe.linear_lr()

    def on(self) -> bool:
        return self.views > 0


@dataclass
class FusionConfig:
    """Adaptive batch fusion ahead of the backbone in contrastive pre-training (fusion.py)."""

    switch: ClassVar[str] = "enabled"  # turns the plug-in on (methods.settings.SWITCHES)

    enabled: bool = field(default=False, metadata=described("batch fusion ahead of the backbone (SimCLR)"))
    patch: int = field(
        default=8,
        metadata=checked(
            lambda v: v >= 1, "an integer >= 1 dividing the image side", help="patch side in pixels"
        ),
    )
    dim: int = field(default=64, metadata=positive("embedding width of the fusion attention"))
    heads: int = field(
        default=4,
        metadata=checked(lambda v: v >= 1, "an integer >= 1 dividing fusion.dim", help="attention heads"),
    )
    layers: int = field(default=1, metadata=positive("attention layers"))
    strength: float = field(
        default=1.0,
        metadata=finite_non_negative(
            "the fused batch's weight at the end of training (it grows with progress)"
        ),
    )

    def on(self) -> bool:
        return self.enabled


# the config sections this method owns, in the order a config.yaml lists them
SECTIONS = {"contrastive": ContrastiveConfig, "fusion": FusionConfig}
