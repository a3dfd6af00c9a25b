"""The ssp method's settings: torch-free, so that parsing a configuration loads no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...fields import checked, finite_positive


@dataclass
class PretrainConfig:
    """SSP baseline (Yang & Xu 2020): whole-image rotation pre-training on the training images, no labels."""

    switch: ClassVar[str] = "epochs"  # turns the method on (methods.settings.SWITCHES)

    epochs: int = field(
        default=0,
        metadata=checked(
            lambda v: v >= 0,
            "an integer >= 0 (0: no pre-training)",
            help="SSP: epochs of rotation pre-training before training (0: none)",
        ),
    )
    lr: float = field(default=0.1, metadata=finite_positive("SSP: pre-training learning rate"))

    def on(self) -> bool:
        return self.epochs > 0


# the config sections this method owns, in the order a config.yaml lists them
SECTIONS = {"pretrain": PretrainConfig}
