"""Typed run configuration: dataclasses, YAML in and out, dotted overrides, validation. A pure schema:
no torch, and nothing about which method reads what (gssl.runconfig adds that, one layer up).

Every key has a type and, where it matters, a check; a bad key or value raises ConfigError whose
message names the key and what is allowed, so the CLI can print it and exit with code 2. The sections a
method owns are its settings (gssl/methods/<name>/settings.py), inserted from the registry
gssl.methods.settings.SETTINGS.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .fields import (
    ConfigError,
    below_one,
    checked,
    choice,
    described,
    finite_non_negative,
    finite_positive,
    non_negative,
    positive,
)
from .methods.settings import SETTINGS


@dataclass
class DataConfig:
    name: str = field(
        default="cifar10",
        metadata=choice(
            "cifar10", "cifar100", "tiny-imagenet", "fashion-mnist", "folder", help="the dataset to train on"
        ),
    )
    root: str | None = field(
        default=None,
        metadata=described(
            "dataset folder, a folder holding it, or its archive; null: $GSSL_DATA, then ./data"
        ),
    )
    imbalance: float = field(
        default=0.01,
        metadata=checked(
            lambda v: 0 < v <= 1,
            "a ratio in (0, 1]; 1 means balanced",
            help="long-tail ratio: rarest class's training images / commonest class's (1: balanced)",
        ),
    )
    profile: str = field(
        default="exp",
        metadata=choice(
            "exp", "step", help="long-tail shape: exponential decay, or a step (half the classes rare)"
        ),
    )
    max_per_class: int | None = field(
        default=None,
        metadata=checked(
            lambda v: v is None or v >= 1,
            "an integer >= 1 or null",
            help="keep at most this many training images a class before the long tail; null: all",
        ),
    )
    test_limit: int | None = field(
        default=None,
        metadata=checked(
            lambda v: v is None or v >= 1,
            "an integer >= 1 or null",
            help="at most this many test images, evenly from every class; null: the whole test set",
        ),
    )
    crop_padding: int = field(default=4, metadata=non_negative("random-crop padding in pixels (0: no crop)"))
    hflip: bool = field(default=True, metadata=described("random horizontal flip of training images"))
    normalize: str = field(
        default="dataset",
        metadata=choice(
            "dataset",
            "symmetric",
            help="dataset: the dataset's mean/std; symmetric: inputs in [0, 1] fed as 2x - 1 (adversarial)",
        ),
    )
    to_rgb: bool = field(
        default=True,
        metadata=described("replicate greyscale to 3 channels so every pretext task applies (SPEC 10)"),
    )


@dataclass
class ModelConfig:
    backbone: str = field(
        default="resnet32",
        metadata=choice(
            "resnet8",
            "resnet20",
            "resnet32",
            "resnet44",
            "resnet56",
            "resnet110",
            "resnet18",
            "wrn28_2",
            "wrn40_2",
            "scatnet",
            "vit",
            help="the network (CIFAR ResNets, ResNet-18, WideResNets, scattering + adapter, ViT)",
        ),
    )
    head: str = field(
        default="cosine",
        metadata=choice("linear", "cosine", help="classifier and pretext heads: linear, or cosine (LDAM's)"),
    )


@dataclass
class ViTConfig:
    """The ViT backbone's size (model.backbone=vit; gssl.models.vit): ViT-Tiny by default. Patch 4 on
    32 px images, patch 8 on 64 px ones: an 8 x 8 grid either way."""

    patch: int = field(
        default=4,
        metadata=checked(
            lambda v: v >= 1, "an integer >= 1 dividing the image side", help="patch side in pixels"
        ),
    )
    width: int = field(
        default=192,
        metadata=checked(lambda v: v >= 1, "an integer >= 1 divisible by vit.heads", help="token dimension"),
    )
    depth: int = field(default=12, metadata=positive("number of transformer blocks"))
    heads: int = field(
        default=3,
        metadata=checked(
            lambda v: v >= 1, "an integer >= 1 dividing vit.width", help="attention heads per block"
        ),
    )
    mlp_ratio: float = field(default=4.0, metadata=finite_positive("MLP hidden width / token width"))
    image_size: int = field(
        default=32,
        metadata=positive("side of the training images, for which the positional embeddings are learned"),
    )


# pretext tasks that can share a run: they transform the same region of the image (pretext.TASKS[t].region;
# written out here so that parsing a config needs no torch, and kept equal by tests/test_pretext.py)
TASK_GROUPS = ({"lorot", "flip", "channel"}, {"lorot_i"}, {"rotation", "jigsaw"})


@dataclass
class SSLConfig:
    tasks: list[str] = field(
        default_factory=list,
        metadata=checked(
            lambda v: len(set(v)) == len(v) and any(set(v) <= group for group in TASK_GROUPS),
            "a list of distinct tasks from [lorot, flip, channel, lorot_i, rotation, jigsaw], "
            "all acting on one region: quadrant tasks (lorot, flip, channel), lorot_i, "
            "or whole-image tasks (rotation, jigsaw)",
            help="the pretext tasks trained beside the classifier ([]: none)",
        ),
    )
    gate: str = field(
        default="reference",
        metadata=choice(
            "reference",
            "learned",
            "uniform",
            "uncertainty",
            "gradnorm",
            "gcs",
            "dwa",
            "none",
            help="how the pretext losses are weighed (gssl.gating, docs/gates.md); none: no pretext tasks",
        ),
    )
    ratio: float = field(
        default=0.1,
        metadata=finite_non_negative(
            "lambda: the weight of the gated pretext loss beside the classification loss"
        ),
    )
    flip_axis: str = field(
        default="H",
        metadata=choice(
            "H", "W", help="the flip task's axis: H as the long-tailed reference, W as the others"
        ),
    )
    gate_tau: float = field(
        default=0.5,
        metadata=finite_positive("gate=learned: entropy temperature that keeps the gate from collapsing"),
    )
    gradnorm_alpha: float = field(
        default=1.5,
        metadata=checked(
            lambda v: v >= 0 and math.isfinite(v),
            "a finite number >= 0 (paper: 1.5)",
            help="gate=gradnorm: the asymmetry alpha of GradNorm (Chen et al. 2018)",
        ),
    )
    gcs_weighted: bool = field(
        default=False,
        metadata=described(
            "gate=gcs: false, a task is used iff cos > 0 (Du et al. 2018); true, weighted by max(0, cos)"
        ),
    )
    dwa_temperature: float = field(
        default=2.0,
        metadata=checked(
            lambda v: v > 0 and math.isfinite(v),
            "a finite number > 0 (paper: 2)",
            help="gate=dwa: softmax temperature T of dynamic weight average (Liu et al. 2019)",
        ),
    )
    # A DEVIATION from the reference when != 1: the reference feeds raw cosines in [-1, 1] (loss >= 1.1 for
    # 16 classes), and on a CPU budget its heads stay near chance (docs/results.md); s = 30 is LDAM's own.
    pretext_scale: float = field(
        default=1.0,
        metadata=checked(
            lambda v: v > 0 and math.isfinite(v),
            "a finite number > 0 (1 = the reference)",
            help="multiplies a cosine pretext head's logits before the cross-entropy (1: the reference)",
        ),
    )
    # A DEVIATION when true (docs/results.md, issue 47): a temperature beside the fixed scale above
    pretext_scale_learned: bool = field(
        default=False,
        metadata=described("learn each pretext head's scale (a log-scale per head from log pretext_scale)"),
    )
    # A DEVIATION when true: the reference computes both losses on the transformed image
    clean_class_loss: bool = field(
        default=False,
        metadata=described(
            "the class loss on the clean image (a second forward), the pretext losses transformed"
        ),
    )


@dataclass
class LossConfig:
    name: str = field(
        default="ldam",
        metadata=choice("ce", "ldam", "focal", help="classification loss (class weights: DRW)"),
    )
    max_margin: float = field(
        default=0.5, metadata=checked(lambda v: v > 0, "a number > 0", help="LDAM: the rarest class's margin")
    )
    scale: float = field(
        default=30.0, metadata=checked(lambda v: v > 0, "a number > 0", help="LDAM: logit scale s")
    )
    focal_gamma: float = field(
        default=1.0,
        metadata=checked(lambda v: v >= 0, "a number >= 0", help="focal loss: the exponent gamma"),
    )
    drw_epoch: int | None = field(
        default=160,
        metadata=checked(
            lambda v: v is None or v >= 0,
            "an epoch >= 0 or null (never)",
            help="epoch DRW's class weights switch on (scaled with optim.epochs); null: never",
        ),
    )
    drw_beta: float = field(
        default=0.9999, metadata=below_one("DRW: beta of the effective number of samples")
    )


@dataclass
class DistributedConfig:
    """Used only under torchrun (docs/distributed.md)."""

    sync_bn: bool = field(
        default=False, metadata=described("SyncBatchNorm: batch statistics over the global batch")
    )
    scale_lr: bool = field(
        default=False, metadata=described("lr x world size (linear scaling with the global batch)")
    )
    timeout_s: int = field(
        default=600,
        metadata=checked(lambda v: v >= 10, "seconds >= 10", help="seconds a rank waits for the others"),
    )


@dataclass
class OptimConfig:
    epochs: int = field(default=200, metadata=positive("training epochs"))
    base_epochs: int = field(
        default=200,
        metadata=positive("the protocol's epochs: warm-up, milestones, DRW scale by epochs/this"),
    )
    batch_size: int = field(default=128, metadata=positive("images per step (over all ranks)"))
    optimizer: str = field(
        default="sgd",
        metadata=choice(
            "sgd",
            "adamw",
            help="sgd: momentum (and nesterov); adamw: DINO's recipe for ViTs (betas 0.9, 0.999)",
        ),
    )
    lr: float = field(default=0.1, metadata=finite_positive("peak learning rate"))
    momentum: float = field(default=0.9, metadata=below_one("SGD momentum (unused by adamw)"))
    nesterov: bool = field(default=False, metadata=described("Nesterov momentum (sgd)"))
    weight_decay: float = field(
        default=2e-4,
        metadata=checked(lambda v: v >= 0, "a number >= 0", help="weight decay (at the first epoch)"),
    )
    weight_decay_end: float | None = field(
        default=None,
        metadata=checked(
            lambda v: v is None or v >= 0,
            "a number >= 0, or null",
            help="a cosine from weight_decay towards this (DINO: 0.04 -> 0.4); null: constant",
        ),
    )
    clip_grad: float | None = field(
        default=None,
        metadata=checked(
            lambda v: v is None or v > 0,
            "a number > 0, or null",
            help="each parameter's gradient scaled down to this norm on its own (DINO's); null: none",
        ),
    )
    schedule: str = field(
        default="step",
        metadata=choice("step", "cosine", help="learning rate after warm-up: steps at milestones, or cosine"),
    )
    warmup_epochs: int = field(default=5, metadata=non_negative("epochs of linear learning-rate warm-up"))
    milestones: list[int] = field(
        default_factory=lambda: [160, 180],
        metadata=checked(
            lambda v: all(m >= 0 for m in v) and list(v) == sorted(v),
            "a sorted list of epochs >= 0",
            help="schedule=step: epochs at which the learning rate is multiplied by gamma",
        ),
    )
    gamma: float = field(
        default=0.01,
        metadata=checked(
            lambda v: 0 < v <= 1, "a factor in (0, 1]", help="schedule=step: factor at each milestone"
        ),
    )
    decay_norm_and_bias: bool = field(
        default=True,
        metadata=described("weight decay on batch-norm weights and biases too (false: FixMatch's)"),
    )


def _with_method_sections(cls):
    """Insert the methods' sections (SETTINGS, in its order) after `loss`: a method owns its settings
    dataclass, and a config.yaml lists the sections as it always has."""
    annotations = {}
    for name, hint in cls.__annotations__.items():
        annotations[name] = hint
        if name == "loss":
            for section, settings in SETTINGS.items():
                annotations[section] = settings
                setattr(cls, section, field(default_factory=settings))
    cls.__annotations__ = annotations
    return cls


@dataclass
@_with_method_sections
class Config:
    method: str | None = field(
        default=None,
        metadata=described(
            "the way of training: supervised, sla-sd, fixmatch, simclr, dino; null: read from the sections"
        ),
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    vit: ViTConfig = field(default_factory=ViTConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    # here: each method's own sections, from gssl.methods.settings.SETTINGS (_with_method_sections)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = field(default=0, metadata=non_negative("seed of every random draw"))
    device: str = field(
        default="auto", metadata=choice("auto", "cpu", "cuda", help="auto: CUDA when available, else CPU")
    )
    compile: bool | None = field(
        default=None,
        metadata=described("torch.compile the step and evaluation; null: on CUDA, or a long CPU run"),
    )
    precision: str | None = field(
        default=None,
        metadata=choice(
            None, "bf16", "fp16", "fp32", help="autocast precision; null: bf16 on CUDA, fp32 on CPU"
        ),
    )
    channels_last: bool | None = field(
        default=None,
        metadata=described("NHWC activations; null: on (faster on CPU too, docs/performance.md)"),
    )
    compile_mode: str = field(
        default="reduce-overhead",
        metadata=choice(
            "default",
            "reduce-overhead",
            "max-autotune",
            "max-autotune-no-cudagraphs",
            help="torch.compile's mode",
        ),
    )
    tensorboard: bool = field(
        default=False, metadata=described("also write TensorBoard events to RUN_DIR/tensorboard/")
    )
    preset: str | None = field(
        default=None, metadata=described("the preset the configuration came from (informational)")
    )
    # Eager passes of their own: about 5% of a CPU epoch, more of a short compiled GPU epoch
    diagnose_every: int = field(
        default=1,
        metadata=non_negative(
            "the gradient diagnostic (gssl.diagnostics) after every this many epochs and the last; 0: never"
        ),
    )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Building a Config from nested dicts, with types coerced and every value checked.


def _is_dataclass_type(t) -> bool:
    return isinstance(t, type) and dataclasses.is_dataclass(t)


def _coerce(key: str, value, hint):
    """Coerce a YAML value to the field's type, or raise ConfigError naming the key."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and item is str:
            value = [value]  # `--set ssl.tasks=lorot` means a list of one
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        # 64-bit: seeds go to torch, and epochs are scaled as floats (scaled_schedule)
        whole = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
        if not whole or abs(value) >= 2**63:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, str):
            value = parse_number(key, value)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**1023:
            value = math.inf  # math.isfinite would overflow converting it
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover - a bug in this module


def parse_number(key: str, text: str) -> float:
    """Accept '1e-4' and fractions such as '8/255'."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{key}: expected a number, got {text!r}") from None


def _build(cls, values: dict, prefix: str = ""):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = prefix + str(name)
        if name not in fields:
            raise ConfigError(_unknown_key_message(_first_leaf(key, value)))
        hint = hints[name]
        if _is_dataclass_type(hint):
            kwargs[name] = _build(hint, value, key + ".")
            continue
        value = _coerce(key, value, hint)
        meta = fields[name].metadata
        if "choices" in meta and value not in meta["choices"]:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {list(meta['choices'])}")
        if "check" in meta:
            pred, what = meta["check"]
            if not pred(value):
                raise ConfigError(f"{key}: {value!r} is not allowed; expected {what}")
        kwargs[name] = value
    return cls(**kwargs)


def _leaves(cls=Config, prefix: str = ""):
    """(dotted key, field, type hint) of every settable value, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if _is_dataclass_type(hints[f.name]):
            yield from _leaves(hints[f.name], prefix + f.name + ".")
        else:
            yield prefix + f.name, f, hints[f.name]


def all_keys(cls=Config) -> list[str]:
    """Every dotted key a configuration accepts, e.g. 'optim.lr'."""
    return [key for key, _, _ in _leaves(cls)]


def _type_text(hint) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) < len(typing.get_args(hint)):  # Optional
        return " or ".join(map(_type_text, args)) + " or null"
    if typing.get_origin(hint) is list:
        return f"list[{_type_text(args[0])}]"
    return hint.__name__


def _value_text(v) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(map(_value_text, v)) + "]"
    if isinstance(v, float):  # 0.1 and 4.0 as written, 8/255 to six digits
        return repr(v) if len(repr(v)) <= 8 else f"{v:.6g}"
    return yaml.safe_dump(v, default_flow_style=True).removesuffix("\n...\n").strip()


def describe_keys() -> list[str]:
    """`gssl presets --keys`: each key's type, default and meaning (the field's `help`), choices last."""
    rows = [("KEY", "TYPE", "DEFAULT", "MEANING")]
    for key, f, hint in _leaves():
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        meaning = f.metadata["help"]
        if "choices" in f.metadata:
            meaning += " (" + "|".join(map(_value_text, f.metadata["choices"])) + ")"
        rows.append((key, _type_text(hint), _value_text(default), meaning))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[3]]) for r in rows]


def _first_leaf(key: str, value) -> str:
    """An unknown section's first full key ('optimizer' holding {'lr': 0.1} -> 'optimizer.lr'): the
    closest valid key is then found for what was typed, optim.lr, not for the section name alone."""
    while isinstance(value, dict) and value:
        name, value = next(iter(value.items()))
        key = f"{key}.{name}"
    return key


def _unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    if not close:  # a misspelt last part under a known section: compare the last parts only
        last = key.rsplit(".", 1)[-1]
        by_last = {k.rsplit(".", 1)[-1]: k for k in all_keys()}
        close = [by_last[m] for m in difflib.get_close_matches(last, list(by_last), n=1, cutoff=0.6)]
    hint = f"; did you mean '{close[0]}'?" if close else "; run `gssl presets --keys` for the list"
    return f"unknown configuration key '{key}'{hint}"


def parse(values: dict) -> Config:
    """A Config from nested dicts, every key known and every value typed and checked; its `method` as
    given (None for older config files). A run's configuration: gssl.runconfig.from_dict."""
    return _build(Config, values)


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge: override wins, nested mappings merge."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# yaml.safe_load refuses python tags with a YAMLError, but a value it cannot build (a date such as
# 2020-13-45, say) surfaces as the plain Python error, and a deep document as RecursionError.
_YAML_ERRORS = (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError, UnicodeDecodeError)


def parse_set(item: str) -> dict:
    """'optim.lr=0.05' -> {'optim': {'lr': 0.05}}; the value is read as YAML ('[a,b]' is a list)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=0.05")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: the key is empty; expected key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except _YAML_ERRORS:
        value = text
    if isinstance(value, str) and key.split(".")[-1] not in {
        "name",
        "root",
        "backbone",
        "head",
        "gate",
        "profile",
        "flip_axis",
        "schedule",
        "device",
        "preset",
        "transform",
        "compile_mode",
        "precision",
        "attack",
        "objective",
        "normalize",
        "border",
    }:
        try:  # '8/255' and similar fractions for numeric keys
            value = parse_number(key, value)
        except ConfigError:
            pass
    out: dict = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def load_yaml(
    path: str | Path, what: str = "config file", fix: str = "pass an existing YAML file to --config"
) -> dict:
    """A YAML mapping; `what` names the file in the errors, `fix` says what to do when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist; {fix}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{what} {path} cannot be read: {e.strerror or e}") from None
    except _YAML_ERRORS as e:
        raise ConfigError(
            f"{what} {path} is not valid YAML for gssl: {e}. Only plain YAML is read "
            "(safe loader: no python/object tags)"
        ) from None
    if not isinstance(values, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of keys, not {type(values).__name__}")
    return values


# Where things lie on this machine, not what a run does: a run resumed, continued by a sweep or evaluated
# with the data somewhere else is the same run.
LOCATION_KEYS = frozenset({"data.root"})
# How a run executes, not what it computes: a run counted as done, or continued, on another device, compiled
# or not, in another memory layout, diagnosed more or less often (the diagnostic changes no training
# number) is the same run. Precision is not among them: bf16 changes the numbers (gssl.runconfig.run_changes).
EXECUTION_KEYS = frozenset(
    {"device", "compile", "compile_mode", "channels_last", "tensorboard", "diagnose_every"}
)
# What a machine chooses for a run: how it executes, and the precision, which a table shows as one row while
# the run trained in fp32 and a resume accepts while it trains the same (gssl.runconfig.run_changes).
MACHINE_KEYS = EXECUTION_KEYS | {"precision"}


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
