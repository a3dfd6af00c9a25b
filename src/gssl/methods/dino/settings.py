"""The dino method's settings: torch-free, so that parsing a configuration loads no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...fields import below_one, checked, choice, described, non_negative, positive
from .. import probe_settings as probe


def _scale_range(v) -> bool:
    return len(v) == 2 and 0 < v[0] <= v[1] <= 1


@dataclass
class DINOConfig:
    """DINO self-distillation on a ViT (method=dino; dino.py, docs/selfpatch.md): the defaults are DINO's
    and SelfPatch's (`main_selfpatch.py`) but for the sizes made for 32 px images. No labels are read in
    training; per-epoch test accuracy is k-NN on the teacher's frozen image representation, the final one
    a linear probe (and both also on its averaged patch tokens)."""

    out_dim: int = field(default=4096, metadata=positive("prototypes K of the DINO head"))
    hidden_dim: int = field(default=2048, metadata=positive("the DINO head's hidden width"))
    bottleneck_dim: int = field(default=256, metadata=positive("the DINO head's bottleneck width"))
    norm_last_layer: bool = field(
        default=True, metadata=described("the head's last layer's weight norm fixed at 1")
    )
    local_crops: int = field(
        default=6,
        metadata=checked(
            lambda v: v >= 0,
            "an integer >= 0 (0: no local views)",
            help="small local views per image (multi-crop)",
        ),
    )
    local_size: int = field(
        default=16,
        metadata=checked(
            lambda v: v >= 1,
            "an integer >= 1 (a multiple of vit.patch)",
            help="side of the local views in pixels",
        ),
    )
    global_crop_scale: list[float] = field(
        default_factory=lambda: [0.25, 1.0],
        metadata=checked(
            _scale_range, "[low, high] with 0 < low <= high <= 1", help="area range of the two global crops"
        ),
    )
    local_crop_scale: list[float] = field(
        default_factory=lambda: [0.05, 0.25],
        metadata=checked(
            _scale_range, "[low, high] with 0 < low <= high <= 1", help="area range of the local crops"
        ),
    )
    student_temp: float = field(
        default=0.1,
        metadata=checked(
            lambda v: v > 0 and math.isfinite(v), "a number > 0", help="student softmax temperature"
        ),
    )
    teacher_temp: float = field(
        default=0.04,
        metadata=checked(
            lambda v: v > 0 and math.isfinite(v),
            "a number > 0",
            help="teacher softmax temperature after warm-up",
        ),
    )
    warmup_teacher_temp: float = field(
        default=0.04,
        metadata=checked(
            lambda v: v > 0 and math.isfinite(v),
            "a number > 0",
            help="teacher temperature at the first epoch",
        ),
    )
    warmup_teacher_temp_epochs: int = field(
        default=0, metadata=non_negative("epochs of the teacher temperature's warm-up")
    )
    center_momentum: float = field(default=0.9, metadata=below_one("momentum of the teacher's centre"))
    momentum_teacher: float = field(
        default=0.996, metadata=below_one("EMA momentum of the teacher's weights")
    )
    freeze_last_layer: int = field(
        default=1,
        metadata=checked(
            lambda v: v >= 0, "epochs >= 0", help="epochs the head's last layer gets no gradient"
        ),
    )
    knn_k: int = probe.knn_k(20)
    knn_temperature: float = probe.knn_temperature(0.07)
    linear_epochs: int = probe.linear_epochs()
    linear_lr: float = probe.linear_lr()


@dataclass
class SelfPatchConfig:
    """SelfPatch's patch-level loss on top of DINO (selfpatch.py): off unless enabled."""

    enabled: bool = field(default=False, metadata=described("add SelfPatch's patch-level loss to DINO"))
    k: int = field(
        default=4,
        metadata=checked(
            lambda v: 1 <= v <= 8,
            "an integer in 1..8 (of the 8 neighbours)",
            help="positives: the k most similar of a patch's 8 neighbours",
        ),
    )
    weight: float = field(
        default=0.1,
        metadata=checked(
            lambda v: v >= 0 and math.isfinite(v),
            "a number >= 0",
            help="lambda of the patch loss; with a gate (ssl.gate != none) the gate and ssl.ratio weigh it",
        ),
    )
    out_dim: int = field(default=4096, metadata=positive("prototypes of the patch head"))
    blocks: int = field(default=2, metadata=positive("blocks of the aggregation module"))
    border: str = field(
        default="wrap",
        metadata=choice(
            "wrap",
            "mask",
            help="neighbours at the edge: wrap modulo the grid (the authors'), or mask them out",
        ),
    )


# the config sections this method owns, in the order a config.yaml lists them
SECTIONS = {"dino": DINOConfig, "selfpatch": SelfPatchConfig}
