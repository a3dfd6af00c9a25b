"""The fixmatch method's settings: torch-free, so that parsing a configuration loads no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...fields import checked, finite_non_negative, non_negative, positive


@dataclass
class SemiConfig:
    """FixMatch (SPEC section 7): off unless labels_per_class is set."""

    switch: ClassVar[str] = "labels_per_class"  # turns the method on (methods.settings.SWITCHES)

    labels_per_class: int | None = field(
        default=None,
        metadata=checked(
            lambda v: v is None or v >= 1,
            "an integer >= 1, or null (supervised only)",
            help="FixMatch: labelled images per class, the rest unlabelled; null: off",
        ),
    )
    mu: int = field(
        default=7,
        metadata=checked(
            lambda v: v >= 1,
            "an integer >= 1 (unlabelled per labelled image)",
            help="unlabelled per labelled image",
        ),
    )
    threshold: float = field(
        default=0.95,
        metadata=checked(
            lambda v: 0 <= v <= 1, "a confidence in [0, 1]", help="confidence a pseudo-label needs to count"
        ),
    )
    lambda_u: float = field(default=1.0, metadata=finite_non_negative("weight of the unlabelled loss"))
    ema: float = field(
        default=0.999,
        metadata=checked(
            lambda v: 0 <= v < 1,
            "a decay in [0, 1); 0: no EMA",
            help="decay of the evaluated EMA weights (0: none)",
        ),
    )
    steps_per_epoch: int = field(default=1024, metadata=positive("training steps per epoch"))
    split_seed: int = field(default=0, metadata=non_negative("seed of the labelled/unlabelled split"))

    def on(self) -> bool:
        return self.labels_per_class is not None


# the config sections this method owns, in the order a config.yaml lists them
SECTIONS = {"semi": SemiConfig}
