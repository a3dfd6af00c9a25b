"""The sla_sd method's settings: torch-free, so that parsing a configuration loads no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...fields import choice, finite_positive


@dataclass
class SLAConfig:
    """SLA-SD baseline (Lee et al. 2020): joint class x transformation labels, self-distilled single head."""

    switch: ClassVar[str] = "transform"  # turns the method on (methods.settings.SWITCHES)

    transform: str = field(
        default="none",
        metadata=choice("none", "rotation", "channel", help="SLA-SD's transformations; none: SLA-SD off"),
    )
    temperature: float = field(default=1.0, metadata=finite_positive("self-distillation temperature"))

    def on(self) -> bool:
        return self.transform != "none"


# the config sections this method owns, in the order a config.yaml lists them
SECTIONS = {"sla": SLAConfig}
