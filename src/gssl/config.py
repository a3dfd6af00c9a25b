"""Typed run configuration: dataclasses, YAML in and out, dotted overrides, validation.

Every key has a type and, where it matters, a check; a bad key or value raises ConfigError whose
message names the key and what is allowed, so the CLI can print it and exit with code 2.
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


class ConfigError(ValueError):
    """A configuration key or value that gssl cannot use; the message says how to fix it."""


def _choice(*allowed):
    return {"choices": allowed}


def _check(pred, what):
    return {"check": (pred, what)}


@dataclass
class DataConfig:
    name: str = field(
        default="cifar10", metadata=_choice("cifar10", "cifar100", "tiny-imagenet", "fashion-mnist", "folder")
    )
    root: str | None = None  # None: $GSSL_DATA or the dataset's default location
    imbalance: float = field(
        default=0.01, metadata=_check(lambda v: 0 < v <= 1, "a ratio in (0, 1]; 1 means balanced")
    )
    profile: str = field(default="exp", metadata=_choice("exp", "step"))
    max_per_class: int | None = field(
        default=None, metadata=_check(lambda v: v is None or v >= 1, "an integer >= 1 or null")
    )
    # at most this many test images, taken evenly from every class (quick runs); null: the whole test set
    test_limit: int | None = field(
        default=None, metadata=_check(lambda v: v is None or v >= 1, "an integer >= 1 or null")
    )
    crop_padding: int = field(default=4, metadata=_check(lambda v: v >= 0, "an integer >= 0"))
    hflip: bool = True
    # "dataset": the dataset's mean/std; "symmetric": inputs in [0, 1] fed as 2x - 1 (the adversarial
    # protocol)
    normalize: str = field(default="dataset", metadata=_choice("dataset", "symmetric"))
    to_rgb: bool = True  # replicate greyscale to 3 channels so every pretext task applies (SPEC 10)


@dataclass
class ModelConfig:
    backbone: str = field(
        default="resnet32",
        metadata=_choice(
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
        ),
    )
    head: str = field(default="cosine", metadata=_choice("linear", "cosine"))


@dataclass
class ViTConfig:
    """The ViT backbone's size (model.backbone=vit; gssl.models.vit): ViT-Tiny by default. Patch 4 on
    32 px images, patch 8 on 64 px ones: an 8 x 8 grid either way."""

    patch: int = field(
        default=4, metadata=_check(lambda v: v >= 1, "an integer >= 1 dividing the image side")
    )
    width: int = field(
        default=192, metadata=_check(lambda v: v >= 1, "an integer >= 1 divisible by vit.heads")
    )
    depth: int = field(default=12, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    heads: int = field(default=3, metadata=_check(lambda v: v >= 1, "an integer >= 1 dividing vit.width"))
    mlp_ratio: float = field(
        default=4.0, metadata=_check(lambda v: v > 0 and math.isfinite(v), "a finite number > 0")
    )
    # the side of the training images, for which the positional embeddings are learned
    image_size: int = field(default=32, metadata=_check(lambda v: v >= 1, "an integer >= 1"))


# pretext tasks that can share a run: they transform the same region of the image (pretext.TASKS[t].region;
# written out here so that parsing a config needs no torch, and kept equal by tests/test_pretext.py)
TASK_GROUPS = ({"lorot", "flip", "channel"}, {"lorot_i"}, {"rotation", "jigsaw"})


@dataclass
class SSLConfig:
    tasks: list[str] = field(
        default_factory=list,
        metadata=_check(
            lambda v: len(set(v)) == len(v) and any(set(v) <= group for group in TASK_GROUPS),
            "a list of distinct tasks from [lorot, flip, channel, lorot_i, rotation, jigsaw], "
            "all acting on one region: quadrant tasks (lorot, flip, channel), lorot_i, "
            "or whole-image tasks (rotation, jigsaw)",
        ),
    )
    # reference, learned, uniform (gssl.gating); the established loss weightings of docs/gates.md:
    # uncertainty, gradnorm, gcs, dwa; none: no pretext tasks
    gate: str = field(
        default="reference",
        metadata=_choice("reference", "learned", "uniform", "uncertainty", "gradnorm", "gcs", "dwa", "none"),
    )
    ratio: float = field(
        default=0.1, metadata=_check(lambda v: v >= 0 and math.isfinite(v), "a finite number >= 0")
    )
    flip_axis: str = field(default="H", metadata=_choice("H", "W"))
    gate_tau: float = field(
        default=0.5, metadata=_check(lambda v: v > 0 and math.isfinite(v), "a finite number > 0")
    )
    # gate=gradnorm: the asymmetry alpha of GradNorm (Chen et al. 2018; their default 1.5)
    gradnorm_alpha: float = field(
        default=1.5,
        metadata=_check(lambda v: v >= 0 and math.isfinite(v), "a finite number >= 0 (paper: 1.5)"),
    )
    # gate=gcs: false, a task is used iff cos > 0 (Du et al. 2018, unweighted); true, weighted by max(0, cos)
    gcs_weighted: bool = False
    # gate=dwa: the softmax temperature T of dynamic weight average (Liu et al. 2019; their default 2)
    dwa_temperature: float = field(
        default=2.0, metadata=_check(lambda v: v > 0 and math.isfinite(v), "a finite number > 0 (paper: 2)")
    )
    # A DEVIATION from the reference when != 1: multiplies a cosine pretext head's logits before the
    # cross-entropy. The reference feeds raw cosines in [-1, 1] (loss >= 1.1 for 16 classes), and on a
    # CPU budget its heads stay near chance (docs/results.md); s = 30 is LDAM's own classifier scale.
    pretext_scale: float = field(
        default=1.0,
        metadata=_check(lambda v: v > 0 and math.isfinite(v), "a finite number > 0 (1 = the reference)"),
    )
    # A DEVIATION when true: each pretext head's scale is learned (a log-scale per head, initialised at
    # log pretext_scale), a temperature beside the fixed scale above (docs/results.md, issue 47).
    pretext_scale_learned: bool = False
    # A DEVIATION when true: the class loss on the clean image (a second backbone forward per step), the
    # pretext losses on the transformed one; the reference computes both on the transformed image.
    clean_class_loss: bool = False


@dataclass
class LossConfig:
    name: str = field(default="ldam", metadata=_choice("ce", "ldam", "focal"))
    max_margin: float = field(default=0.5, metadata=_check(lambda v: v > 0, "a number > 0"))
    scale: float = field(default=30.0, metadata=_check(lambda v: v > 0, "a number > 0"))
    focal_gamma: float = field(default=1.0, metadata=_check(lambda v: v >= 0, "a number >= 0"))
    drw_epoch: int | None = field(
        default=160, metadata=_check(lambda v: v is None or v >= 0, "an epoch >= 0 or null (never)")
    )
    drw_beta: float = field(default=0.9999, metadata=_check(lambda v: 0 <= v < 1, "a number in [0, 1)"))


@dataclass
class SLAConfig:
    """SLA-SD baseline (Lee et al. 2020): joint class x transformation labels, self-distilled single head."""

    transform: str = field(default="none", metadata=_choice("none", "rotation", "channel"))
    temperature: float = field(
        default=1.0, metadata=_check(lambda v: v > 0 and math.isfinite(v), "a finite number > 0")
    )


@dataclass
class PretrainConfig:
    """SSP baseline (Yang & Xu 2020): whole-image rotation pre-training on the training images, no labels."""

    epochs: int = field(default=0, metadata=_check(lambda v: v >= 0, "an integer >= 0 (0: no pre-training)"))
    lr: float = field(
        default=0.1, metadata=_check(lambda v: v > 0 and math.isfinite(v), "a finite number > 0")
    )


@dataclass
class AdvConfig:
    """PGD/FGSM adversarial training (SPEC section 6); pixel-space L-inf, eps etc. accept fractions
    (8/255)."""

    attack: str = field(default="none", metadata=_choice("none", "fgsm", "pgd"))
    eps: float = field(
        default=8 / 255, metadata=_check(lambda v: 0 <= v <= 1, "a number in [0, 1], e.g. 8/255")
    )
    step_size: float = field(
        default=2 / 255, metadata=_check(lambda v: 0 <= v <= 1, "a number in [0, 1], e.g. 2/255")
    )
    steps: int = field(default=10, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    random_start: bool = True
    # what the training attack maximises: "pretext" = classification + gated pretext loss on the
    # transformed image (the paper), "cls" = classification loss on the untransformed image
    objective: str = field(default="pretext", metadata=_choice("pretext", "cls"))
    bn_train: bool = False  # attack in train mode, BN statistics updated (the reference)
    eval_steps: int = field(
        default=20, metadata=_check(lambda v: v >= 0, "an integer >= 0 (0: no robust evaluation)")
    )
    eval_step_size: float = field(
        default=2 / 255, metadata=_check(lambda v: 0 <= v <= 1, "a number in [0, 1], e.g. 2/255")
    )


@dataclass
class SemiConfig:
    """FixMatch (SPEC section 7): off unless labels_per_class is set."""

    labels_per_class: int | None = field(
        default=None,
        metadata=_check(lambda v: v is None or v >= 1, "an integer >= 1, or null (supervised only)"),
    )
    mu: int = field(
        default=7, metadata=_check(lambda v: v >= 1, "an integer >= 1 (unlabelled per labelled image)")
    )
    threshold: float = field(default=0.95, metadata=_check(lambda v: 0 <= v <= 1, "a confidence in [0, 1]"))
    lambda_u: float = field(
        default=1.0, metadata=_check(lambda v: v >= 0 and math.isfinite(v), "a finite number >= 0")
    )
    ema: float = field(default=0.999, metadata=_check(lambda v: 0 <= v < 1, "a decay in [0, 1); 0: no EMA"))
    steps_per_epoch: int = field(default=1024, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    split_seed: int = field(default=0, metadata=_check(lambda v: v >= 0, "an integer >= 0"))


@dataclass
class ContrastiveConfig:
    """SimCLR pre-training with pretext regularisation (docs/contrastive.md): off unless views >= 2.
    The pretext tasks and their gate come from ssl.*; the test accuracy per epoch is k-NN, the final one
    a linear probe on the frozen backbone."""

    views: int = field(
        default=0, metadata=_check(lambda v: v == 0 or v >= 2, "0 (off) or a number of views >= 2")
    )
    temperature: float = field(
        default=0.5, metadata=_check(lambda v: v > 0 and math.isfinite(v), "a finite number > 0")
    )
    proj_dim: int = field(default=128, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    proj_hidden: int = field(default=512, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    crop_min_scale: float = field(default=0.2, metadata=_check(lambda v: 0 < v <= 1, "a fraction in (0, 1]"))
    knn_k: int = field(default=200, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    knn_temperature: float = field(
        default=0.1, metadata=_check(lambda v: v > 0 and math.isfinite(v), "a finite number > 0")
    )
    linear_epochs: int = field(
        default=100, metadata=_check(lambda v: v >= 0, "an integer >= 0 (0: k-NN only)")
    )
    linear_lr: float = field(
        default=0.1, metadata=_check(lambda v: v > 0 and math.isfinite(v), "a finite number > 0")
    )


def _scale_range(v) -> bool:
    return len(v) == 2 and 0 < v[0] <= v[1] <= 1


@dataclass
class DINOConfig:
    """DINO self-distillation on a ViT (method=dino; gssl.dino, docs/selfpatch.md): the defaults are DINO's
    and SelfPatch's (`main_selfpatch.py`) but for the sizes made for 32 px images. No labels are read in
    training; per-epoch test accuracy is k-NN on the teacher's frozen image representation, the final one
    a linear probe (and both also on its averaged patch tokens)."""

    out_dim: int = field(default=4096, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    hidden_dim: int = field(default=2048, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    bottleneck_dim: int = field(default=256, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    norm_last_layer: bool = True  # the last layer's weight norm fixed at 1
    local_crops: int = field(
        default=6, metadata=_check(lambda v: v >= 0, "an integer >= 0 (0: no local views)")
    )
    local_size: int = field(
        default=16, metadata=_check(lambda v: v >= 1, "an integer >= 1 (a multiple of vit.patch)")
    )
    global_crop_scale: list[float] = field(
        default_factory=lambda: [0.25, 1.0],
        metadata=_check(_scale_range, "[low, high] with 0 < low <= high <= 1"),
    )
    local_crop_scale: list[float] = field(
        default_factory=lambda: [0.05, 0.25],
        metadata=_check(_scale_range, "[low, high] with 0 < low <= high <= 1"),
    )
    student_temp: float = field(
        default=0.1, metadata=_check(lambda v: v > 0 and math.isfinite(v), "a number > 0")
    )
    teacher_temp: float = field(
        default=0.04, metadata=_check(lambda v: v > 0 and math.isfinite(v), "a number > 0")
    )
    warmup_teacher_temp: float = field(
        default=0.04, metadata=_check(lambda v: v > 0 and math.isfinite(v), "a number > 0")
    )
    warmup_teacher_temp_epochs: int = field(default=0, metadata=_check(lambda v: v >= 0, "an integer >= 0"))
    center_momentum: float = field(default=0.9, metadata=_check(lambda v: 0 <= v < 1, "a number in [0, 1)"))
    momentum_teacher: float = field(
        default=0.996, metadata=_check(lambda v: 0 <= v < 1, "a number in [0, 1)")
    )
    freeze_last_layer: int = field(default=1, metadata=_check(lambda v: v >= 0, "epochs >= 0"))
    knn_k: int = field(default=20, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    knn_temperature: float = field(
        default=0.07, metadata=_check(lambda v: v > 0 and math.isfinite(v), "a finite number > 0")
    )
    linear_epochs: int = field(
        default=100, metadata=_check(lambda v: v >= 0, "an integer >= 0 (0: k-NN only)")
    )
    linear_lr: float = field(
        default=0.1, metadata=_check(lambda v: v > 0 and math.isfinite(v), "a finite number > 0")
    )


@dataclass
class SelfPatchConfig:
    """SelfPatch's patch-level loss on top of DINO (gssl.selfpatch): off unless enabled."""

    enabled: bool = False
    k: int = field(
        default=4, metadata=_check(lambda v: 1 <= v <= 8, "an integer in 1..8 (of the 8 neighbours)")
    )
    # lambda; with a gate (ssl.gate != none) the gate and ssl.ratio weigh the loss instead
    weight: float = field(
        default=0.1, metadata=_check(lambda v: v >= 0 and math.isfinite(v), "a number >= 0")
    )
    out_dim: int = field(default=4096, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    blocks: int = field(default=2, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    # wrap: neighbours taken modulo the grid (the authors' code); mask: only patches on the grid
    border: str = field(default="wrap", metadata=_choice("wrap", "mask"))


@dataclass
class FusionConfig:
    """Adaptive batch fusion ahead of the backbone in contrastive pre-training (gssl.fusion)."""

    enabled: bool = False
    patch: int = field(
        default=8, metadata=_check(lambda v: v >= 1, "an integer >= 1 dividing the image side")
    )
    dim: int = field(default=64, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    heads: int = field(default=4, metadata=_check(lambda v: v >= 1, "an integer >= 1 dividing fusion.dim"))
    layers: int = field(default=1, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    strength: float = field(
        default=1.0, metadata=_check(lambda v: v >= 0 and math.isfinite(v), "a finite number >= 0")
    )


@dataclass
class DistributedConfig:
    """Used only under torchrun (docs/distributed.md)."""

    sync_bn: bool = False  # SyncBatchNorm: batch statistics over the global batch
    scale_lr: bool = False  # lr x world size (linear scaling with the global batch)
    timeout_s: int = field(default=600, metadata=_check(lambda v: v >= 10, "seconds >= 10"))


@dataclass
class OptimConfig:
    epochs: int = field(default=200, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    base_epochs: int = field(default=200, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    batch_size: int = field(default=128, metadata=_check(lambda v: v >= 1, "an integer >= 1"))
    # sgd: momentum (and nesterov); adamw: DINO's recipe for ViTs (betas 0.9, 0.999), momentum unused
    optimizer: str = field(default="sgd", metadata=_choice("sgd", "adamw"))
    lr: float = field(
        default=0.1, metadata=_check(lambda v: v > 0 and math.isfinite(v), "a finite number > 0")
    )
    momentum: float = field(default=0.9, metadata=_check(lambda v: 0 <= v < 1, "a number in [0, 1)"))
    nesterov: bool = False
    weight_decay: float = field(default=2e-4, metadata=_check(lambda v: v >= 0, "a number >= 0"))
    # a cosine from weight_decay (first epoch) towards this (DINO: 0.04 -> 0.4); null: constant
    weight_decay_end: float | None = field(
        default=None, metadata=_check(lambda v: v is None or v >= 0, "a number >= 0, or null")
    )
    # each parameter's gradient scaled down to this norm on its own (DINO's clip_gradients); null: none
    clip_grad: float | None = field(
        default=None, metadata=_check(lambda v: v is None or v > 0, "a number > 0, or null")
    )
    schedule: str = field(default="step", metadata=_choice("step", "cosine"))
    warmup_epochs: int = field(default=5, metadata=_check(lambda v: v >= 0, "an integer >= 0"))
    milestones: list[int] = field(
        default_factory=lambda: [160, 180],
        metadata=_check(
            lambda v: all(m >= 0 for m in v) and list(v) == sorted(v), "a sorted list of epochs >= 0"
        ),
    )
    gamma: float = field(default=0.01, metadata=_check(lambda v: 0 < v <= 1, "a factor in (0, 1]"))
    decay_norm_and_bias: bool = True  # false: no weight decay on batch-norm weights and biases (FixMatch)


@dataclass
class Config:
    # the way of training: supervised, sla-sd, fixmatch, simclr, dino (gssl.scenarios); null in config files
    # written before it existed, where the sections say which (from_dict fills it in)
    method: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    vit: ViTConfig = field(default_factory=ViTConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sla: SLAConfig = field(default_factory=SLAConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    adv: AdvConfig = field(default_factory=AdvConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    dino: DINOConfig = field(default_factory=DINOConfig)
    selfpatch: SelfPatchConfig = field(default_factory=SelfPatchConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = field(default=0, metadata=_check(lambda v: v >= 0, "an integer >= 0"))
    device: str = field(default="auto", metadata=_choice("auto", "cpu", "cuda"))
    compile: bool | None = None  # torch.compile the step and evaluation; null: CUDA, or a long CPU run
    precision: str | None = field(
        default=None,
        metadata=_choice(  # null: bf16 on CUDA, fp32 on CPU
            None, "bf16", "fp16", "fp32"
        ),
    )
    channels_last: bool | None = None  # NHWC activations; null: on (faster on CPU too, docs/performance.md)
    compile_mode: str = field(
        default="reduce-overhead",
        metadata=_choice("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    )
    tensorboard: bool = False
    # the gradient diagnostic (gssl.diagnostics) after every this many epochs and after the last; 0: never.
    # Eager passes of their own: about 5% of a CPU epoch, more of a short compiled GPU epoch
    diagnose_every: int = field(default=1, metadata=_check(lambda v: v >= 0, "an integer >= 0 (0: never)"))
    preset: str | None = None  # where it came from (informational)

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


def all_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every dotted key a configuration accepts, e.g. 'optim.lr'."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if _is_dataclass_type(hints[f.name]):
            keys += all_keys(hints[f.name], prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


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


def from_dict(values: dict) -> Config:
    """A checked Config, its `method` named (inferred from the sections for older config files)."""
    from .scenarios import check, method_of  # the registry imports this module

    cfg = _build(Config, values)
    cfg.method = method_of(cfg)
    check(cfg)
    return cfg


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


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file to --config")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None
    except _YAML_ERRORS as e:
        raise ConfigError(
            f"config file {path} is not valid YAML for gssl: {e}. Only plain YAML is read "
            "(safe loader: no python/object tags)"
        ) from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(values).__name__}")
    return values


def used_dict(cfg: Config) -> dict:
    """The configuration without the sections its method does not read (an FixMatch run has no `adv`)."""
    from .scenarios import used_sections

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


# Where things lie on this machine, not what a run does: a run resumed, continued by a sweep or evaluated
# with the data somewhere else is the same run.
LOCATION_KEYS = frozenset({"data.root"})


def setting_changes(a: Config, b: Config) -> list[str]:
    """diff(a, b) without the LOCATION_KEYS: the changes that would make another run."""
    return [key for key in diff(a, b) if key not in LOCATION_KEYS]


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
