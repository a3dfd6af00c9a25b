"""What every settings dataclass is made of: ConfigError and the field metadata (choices, checks, the
`help` line of `gssl presets --keys`). The lowest layer of the configuration, torch-free: config.py and
each method's settings.py build on it."""

from __future__ import annotations

import math


class ConfigError(ValueError):
    """A configuration key or value that gssl cannot use; the message says how to fix it."""


def choice(*allowed, help: str):
    return {"choices": allowed, "help": help}


def checked(pred, what, help: str):
    return {"check": (pred, what), "help": help}


def positive(help: str):
    return checked(lambda v: v >= 1, "an integer >= 1", help=help)


def non_negative(help: str):
    return checked(lambda v: v >= 0, "an integer >= 0", help=help)


def finite_positive(help: str):
    return checked(lambda v: v > 0 and math.isfinite(v), "a finite number > 0", help=help)


def finite_non_negative(help: str):
    return checked(lambda v: v >= 0 and math.isfinite(v), "a finite number >= 0", help=help)


def below_one(help: str):
    return checked(lambda v: 0 <= v < 1, "a number in [0, 1)", help=help)


def described(text: str):
    """A key's one-line meaning (`gssl presets --keys`), kept beside the key it describes."""
    return {"help": text}
