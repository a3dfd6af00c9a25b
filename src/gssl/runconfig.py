"""A configuration as a run uses it: parsed by gssl.config (the pure schema), its method named and
checked by the methods' registry, and reduced to the sections that method reads, which is what a run
directory's config.yaml keeps and what tells two runs apart. Everything that loads a configuration for
a run (train, eval, sweep, table, campaign) loads it through here."""

from __future__ import annotations

from pathlib import Path

import yaml

from . import rundir
from .config import EXECUTION_KEYS, LOCATION_KEYS, Config, flatten, parse
from .methods.registry import check, method_of, used_sections


def resolved(cfg: Config) -> Config:
    """cfg with its `method` named (inferred from the sections for older config files), once every
    refusal of the method and its wrappers has passed (ConfigError names the fix)."""
    cfg.method = method_of(cfg)
    check(cfg)
    return cfg


def from_dict(values: dict) -> Config:
    """A checked Config a run can use (config.parse, then resolved)."""
    return resolved(parse(values))


def used_dict(cfg: Config) -> dict:
    """The configuration without the sections its method does not read (a FixMatch run has no `adv`)."""
    sections = used_sections(cfg)
    return {
        key: value for key, value in cfg.to_dict().items() if not isinstance(value, dict) or key in sections
    }


def to_yaml(cfg: Config) -> str:
    """What a run directory's config.yaml holds: the sections the run uses, every key of each."""
    return yaml.safe_dump(used_dict(cfg), sort_keys=False)


def diff(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configurations, over the sections they use."""
    fa, fb = flatten(used_dict(a)), flatten(used_dict(b))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


def setting_changes(a: Config, b: Config) -> list[str]:
    """diff(a, b) without the LOCATION_KEYS: the changes that would make another run."""
    return [key for key in diff(a, b) if key not in LOCATION_KEYS]


def run_changes(saved: Config, asked: Config, run_dir: Path) -> list[str]:
    """The changes that would make another run of the one in run_dir (`saved`, its config.yaml): neither
    where things lie nor how it executes (EXECUTION_KEYS) do, nor a precision written differently that
    trains the same (`fp32` asked of a CPU run whose `null` trained in fp32, or `null` on a CPU asked of
    an fp32 run), so a GPU window may finish a CPU grid and the CPU go on with its records."""
    trained = saved.precision or rundir.trained_precision(run_dir)
    return [
        key
        for key in setting_changes(saved, asked)
        if key not in EXECUTION_KEYS and not (key == "precision" and _would_train_in(asked) == trained)
    ]


def _would_train_in(cfg: Config) -> str:
    """The precision cfg trains in on this machine (gssl.step.resolve_precision, without raising for a
    missing CUDA device: that is the run's own error to give)."""
    import torch

    from .step import resolve_precision

    on_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    return resolve_precision(cfg.precision, torch.device("cuda" if on_cuda else "cpu"))
