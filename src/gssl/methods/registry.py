"""Scenarios as plug-ins: the ways gssl trains, by the config's `method`, and the wrappers that go
around them (adversarial training, SSP pre-training). A new way of training is one folder (its
settings, its Scenario subclass) and a line here and in settings.py; `gssl.engine.fit` never changes
for it (docs/design.md walks through one)."""

from __future__ import annotations

import torch.nn as nn

from .. import build as build_parts
from ..build import Data
from ..config import Config, ConfigError, SSLConfig
from ..gating import ALL_GATES, gate_setting_readers, pretext_on
from .adversarial.scenario import Adversarial
from .base import PRETEXT_OPTIONS, Context, Scenario, Wrapper
from .dino.scenario import DINOScenario
from .fixmatch.scenario import FixMatch
from .simclr.scenario import SimCLRScenario
from .sla_sd.scenario import SLASDScenario
from .ssp.scenario import SSPPretraining
from .supervised.scenario import Supervised

SCENARIOS: dict[str, type[Scenario]] = {
    "supervised": Supervised,
    "sla-sd": SLASDScenario,
    "fixmatch": FixMatch,
    "simclr": SimCLRScenario,
    "dino": DINOScenario,
}
WRAPPERS: dict[str, type[Wrapper]] = {"adversarial": Adversarial, "ssp": SSPPretraining}  # inner to outer
COMMON_SECTIONS = ("data", "model", "ssl", "optim", "distributed")

__all__ = [
    "COMMON_SECTIONS",
    "Context",
    "SCENARIOS",
    "Scenario",
    "WRAPPERS",
    "Wrapper",
    "build",
    "build_data",
    "check_shapes",
    "build_model",
    "check_given",
    "method_of",
    "scenario_class",
    "used_sections",
]


def method_of(cfg: Config) -> str:
    """The config's `method`, or, for config files written before it existed, the one its sections ask
    for. Settings that ask for two methods, or for another method than the one named, are refused."""
    claimed = [name for name, scenario in SCENARIOS.items() if scenario.claims(cfg)]
    if cfg.method is None:
        if len(claimed) > 1:
            asked = " and ".join(f"{SCENARIOS[name].trigger} ({name})" for name in claimed)
            raise ConfigError(
                f"{asked} ask for two methods at once; choose one `method` and turn the other's settings off"
            )
        return claimed[0] if claimed else "supervised"
    if cfg.method not in SCENARIOS:
        raise ConfigError(f"method: {cfg.method!r} is not a gssl method; choose one of {list(SCENARIOS)}")
    others = [name for name in claimed if name != cfg.method]
    if others:
        raise ConfigError(
            f"method={cfg.method}, but {SCENARIOS[others[0]].trigger} is set, which is {others[0]}'s; "
            f"set method={others[0]} or turn {SCENARIOS[others[0]].trigger} off"
        )
    return cfg.method


def scenario_class(cfg: Config) -> type[Scenario]:
    return SCENARIOS[method_of(cfg)]


def wrappers_of(cfg: Config) -> list[type[Wrapper]]:
    return [wrapper for wrapper in WRAPPERS.values() if wrapper.applies(cfg)]


def check(cfg: Config) -> None:
    """Every refusal of the method and its wrappers, before any data is read."""
    scenario_class(cfg).check(cfg)
    for wrapper in wrappers_of(cfg):
        wrapper.check(cfg)
    check_pretext_options(cfg)
    check_gate_settings(cfg)
    if cfg.diagnose_every != 1 and scenario_class(cfg).loss_terms is None:
        raise ConfigError(
            f"diagnose_every={cfg.diagnose_every}: method {method_of(cfg)} logs no gradient diagnostic (only "
            f"{', '.join(m for m, scenario in SCENARIOS.items() if scenario.loss_terms)} do); remove it"
        )
    if cfg.fusion.enabled and "fusion" not in used_sections(cfg):
        raise ConfigError(
            "fusion.enabled=true is a plug-in for contrastive pre-training; set contrastive.views=2 "
            "(or more), or fusion.enabled=false"
        )
    if cfg.selfpatch.enabled and "selfpatch" not in used_sections(cfg):
        raise ConfigError(
            "selfpatch.enabled=true is a patch-level loss on top of DINO; set method=dino "
            "(and model.backbone=vit), or selfpatch.enabled=false"
        )


def check_pretext_options(cfg: Config) -> None:
    """Refuse a PRETEXT_OPTIONS setting that nothing in this run would read."""
    method, ssl = method_of(cfg), cfg.ssl
    for name, is_set in PRETEXT_OPTIONS.items():
        if not is_set(cfg):
            continue
        default = getattr(type(ssl)(), name.split(".")[1])
        value = str(getattr(ssl, name.split(".")[1])).lower()
        if name not in SCENARIOS[method].pretext_options:
            readers = [m for m, scenario in SCENARIOS.items() if name in scenario.pretext_options]
            raise ConfigError(
                f"{name}={value} is not read by method {method} (only by {', '.join(readers)}); "
                f"remove it (default {str(default).lower()}) or choose one of those methods"
            )
        if not pretext_on(ssl.tasks, ssl.gate):
            raise ConfigError(
                f"{name}={value} is a setting of the pretext tasks, but this run has none (ssl.tasks="
                f"{ssl.tasks}, ssl.gate={ssl.gate}); set ssl.tasks (e.g. [lorot]) or remove {name} "
                f"(default {str(default).lower()})"
            )


def _pretext_term(cfg: Config) -> bool:
    """Whether the run has a gated pretext term: tasks, or SelfPatch's loss beside them, and a gate."""
    return pretext_on(cfg.ssl.tasks, cfg.ssl.gate, ["selfpatch"] if cfg.selfpatch.enabled else [])


def check_gate_settings(cfg: Config) -> None:
    """Refuse a gate's own setting (gating.Gate.settings: ssl.gate_tau, ...) set where that gate does not
    weigh this run's pretext tasks."""
    ssl, default = cfg.ssl, SSLConfig()
    keys = dict.fromkeys(key for gate in ALL_GATES.values() for key in gate.settings)
    for key in keys:
        value = getattr(ssl, key)
        if value == getattr(default, key):
            continue
        readers = gate_setting_readers(key)
        if ssl.gate not in readers or not _pretext_term(cfg):
            raise ConfigError(
                f"ssl.{key}={str(value).lower()} is read only by ssl.gate={' or '.join(readers)} weighing "
                f"pretext tasks, but this run has ssl.gate={ssl.gate}, ssl.tasks={ssl.tasks}; remove it "
                f"(default {str(getattr(default, key)).lower()}) or set ssl.gate={readers[0]} with tasks"
            )


# Settings that only a part of some runs reads, with the test that the part is there and its name. A
# protocol file states some of them for all its rows (the axis its flip task flips, its pretext weight),
# so they are not refused by value; a value the user gives where nothing reads it is (check_given).
READ_ONLY_WITH = {
    "ssl.ratio": (_pretext_term, "a pretext term (ssl.tasks, or selfpatch, with a gate)"),
    "ssl.flip_axis": (lambda cfg: "flip" in cfg.ssl.tasks and _pretext_term(cfg), "the flip task"),
    "model.head": (
        lambda cfg: scenario_class(cfg).has_classifier or (bool(cfg.ssl.tasks) and _pretext_term(cfg)),
        "a classifier or pretext heads",
    ),
}


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_given(cfg: Config, before: Config) -> None:
    """Refuse a READ_ONLY_WITH setting the user changed from `before` (the preset, or the defaults) in a
    run where nothing reads it: the run would be the same without it."""
    for key, (reads, reader) in READ_ONLY_WITH.items():
        section, name = key.split(".")
        value, was = getattr(getattr(cfg, section), name), getattr(getattr(before, section), name)
        if value != was and not reads(cfg):
            raise ConfigError(
                f"{key}={_text(value)} changes nothing in this run: only {reader} reads it, and this "
                f"{method_of(cfg)} run (ssl.tasks={cfg.ssl.tasks}, ssl.gate={cfg.ssl.gate}) has none; remove "
                f"it (here {_text(was)}) or add what reads it"
            )


def used_sections(cfg: Config) -> tuple[str, ...]:
    """The config sections this run reads: what its config.yaml keeps."""
    extra = [s for cls in (scenario_class(cfg), *wrappers_of(cfg)) for s in cls.sections]
    backbone = ["vit"] if cfg.model.backbone == "vit" else []  # the ViT's size, only where it is read
    return COMMON_SECTIONS + tuple(dict.fromkeys(backbone + extra))


def check_shapes(cfg: Config, channels: int, height: int, width: int) -> None:
    """What the run's backbone, pretext tasks and method need of the images (ConfigError with the fix)."""
    build_parts.check_shapes(cfg, channels, height, width)
    scenario_class(cfg).check_images(cfg, channels, height, width)


def build_data(cfg: Config) -> Data:
    """The run's data, with its method's own part (Scenario.own_data: FixMatch's unlabelled images)."""
    return build_parts.build_data(cfg, scenario_class(cfg).own_data)


def build_model(cfg: Config, num_classes: int, in_channels: int) -> nn.Module:
    """The network of the config's method, initialised from the global torch seed."""
    return scenario_class(cfg).build_model(cfg, num_classes, in_channels)


def build(ctx: Context) -> Scenario:
    scenario = scenario_class(ctx.cfg)(ctx)
    for wrapper in wrappers_of(ctx.cfg):
        scenario = wrapper(scenario)
    return scenario
