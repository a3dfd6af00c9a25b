"""The adversarial method's settings: torch-free, so that parsing a configuration loads no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...fields import checked, choice, described, positive


@dataclass
class AdvConfig:
    """PGD/FGSM adversarial training (SPEC section 6); pixel-space L-inf, eps etc. accept fractions
    (8/255)."""

    switch: ClassVar[str] = "attack"  # turns the method on (methods.settings.SWITCHES)

    attack: str = field(
        default="none",
        metadata=choice("none", "fgsm", "pgd", help="attack on each training batch; none: off"),
    )
    eps: float = field(
        default=8 / 255,
        metadata=checked(
            lambda v: 0 <= v <= 1,
            "a number in [0, 1], e.g. 8/255",
            help="L-inf radius, pixel values in [0, 1]",
        ),
    )
    step_size: float = field(
        default=2 / 255,
        metadata=checked(
            lambda v: 0 <= v <= 1, "a number in [0, 1], e.g. 2/255", help="training attack's step"
        ),
    )
    steps: int = field(default=10, metadata=positive("training attack's PGD steps"))
    random_start: bool = field(default=True, metadata=described("PGD starts from a random point in the ball"))
    objective: str = field(
        default="pretext",
        metadata=choice(
            "pretext",
            "cls",
            help="what the attack maximises: classification + gated pretext loss (the paper), or cls alone",
        ),
    )
    bn_train: bool = field(
        default=False,
        metadata=described("attack in train mode, batch-norm statistics updated (the reference)"),
    )
    eval_steps: int = field(
        default=20,
        metadata=checked(
            lambda v: v >= 0,
            "an integer >= 0 (0: no robust evaluation)",
            help="PGD steps of the final robust evaluation (0: none)",
        ),
    )
    eval_step_size: float = field(
        default=2 / 255,
        metadata=checked(
            lambda v: 0 <= v <= 1, "a number in [0, 1], e.g. 2/255", help="the robust evaluation's step"
        ),
    )

    def on(self) -> bool:
        return self.attack != "none"


# the config sections this method owns, in the order a config.yaml lists them
SECTIONS = {"adv": AdvConfig}
