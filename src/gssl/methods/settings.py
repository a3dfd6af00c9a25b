"""The config sections each method owns, by name: the registry `gssl.config.Config` is assembled from,
and the switches derived from it. Torch-free: it imports each method's settings.py and nothing else."""

from __future__ import annotations

from .adversarial import settings as adversarial
from .dino import settings as dino
from .fixmatch import settings as fixmatch
from .simclr import settings as simclr
from .sla_sd import settings as sla_sd
from .ssp import settings as ssp

# in the order a config.yaml lists them (after `loss`)
SETTINGS: dict[str, type] = {
    **sla_sd.SECTIONS,
    **ssp.SECTIONS,
    **adversarial.SECTIONS,
    **fixmatch.SECTIONS,
    **simclr.SECTIONS,
    **dino.SECTIONS,
}


def _switch_test(section: str):
    return lambda cfg: getattr(cfg, section).on()


# The settings that switch on another way of training ("semi.labels_per_class"), each with its test: a
# section whose settings declare a `switch` field and an `on()` test. A scenario that cannot take some of
# them names them in its check (base.settings_on) and refuses the ones that are on.
SWITCHES = {
    f"{section}.{settings.switch}": _switch_test(section)
    for section, settings in SETTINGS.items()
    if getattr(settings, "switch", None)
}
