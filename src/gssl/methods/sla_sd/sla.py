"""SLA-SD, a Table 1 baseline: self-supervised label augmentation with self-distillation (Lee et al., 2020).

Every image enters the batch under all M transformations (whole-image rotation by 0/90/180/270
degrees, or the 6 channel permutations); a joint head classifies (class, transformation) pairs,
N*M labels. Aggregated inference averages, over m, the joint logit of (c, m) on the m-th
transformed image. A single N-way head on the untransformed image learns from the labels and is
distilled from the aggregated prediction, so test time needs one forward pass:

    L = CE(joint(t_m x), (y, m)) + L_cls(single(x), y) + T^2 KL(softmax(agg / T) || softmax(single / T))

`L_cls` is the run's classification loss (LDAM with DRW in the long-tailed protocol); the joint
head uses plain cross-entropy, with its cosines scaled by the LDAM scale when the heads are cosine
(raw cosines cannot reach a low CE over N*M classes).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ...models import build_backbone, build_head
from ...pretext import PERMUTATIONS

TRANSFORMS = {"rotation": 4, "channel": len(PERMUTATIONS)}


def expand(x: Tensor, transform: str) -> Tensor:
    """[B, C, H, W] -> [M*B, C, H, W]: block m holds every image under the m-th transformation
    (m = 0 is the identity)."""
    if transform == "rotation":
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"sla.transform=rotation needs square images, got {tuple(x.shape[-2:])}")
        return torch.cat([torch.rot90(x, k, (2, 3)) for k in range(4)])
    if transform == "channel":
        if x.shape[1] != 3:
            raise ValueError(f"sla.transform=channel needs 3-channel images, got {x.shape[1]}")
        # channels picked one by one: an index list would become a host-side constant tensor in the graph
        return torch.cat([torch.stack([x[:, c] for c in p], dim=1) for p in PERMUTATIONS])
    raise ValueError(f"unknown SLA transform {transform!r}; choose one of {sorted(TRANSFORMS)}")


def aggregate(joint: Tensor, batch: int, num_classes: int) -> Tensor:
    """Aggregated class logits [B, N] from joint logits [M*B, N*M] laid out as `expand` and
    `joint_labels` lay them out: mean over m of joint[m-th block, c*M + m]."""
    m = joint.shape[0] // batch
    j = joint.view(m, batch, num_classes, m)
    own = torch.arange(m, device=joint.device)
    return j[own, :, :, own].mean(0)  # [M, B, N] -> [B, N]


def joint_labels(y: Tensor, m: int) -> Tensor:
    """Label of image b under transformation t: y_b * M + t, in `expand`'s block order."""
    return torch.cat([y * m + t for t in range(m)])


class SLASD(nn.Module):
    """Same interface as GatedSSL: forward(x) gives class logits, training_loss(x, y, cls_loss, gen)."""

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        *,
        transform: str = "rotation",
        head: str = "linear",
        in_channels: int = 3,
        temperature: float = 1.0,
        joint_scale: float = 30.0,
        backbone_options: dict | None = None,
    ):
        super().__init__()
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown SLA transform {transform!r}; choose one of {sorted(TRANSFORMS)}")
        self.backbone = build_backbone(backbone, in_channels, backbone_options)
        dim = self.backbone.feat_dim
        self.classifier = build_head(head, dim, num_classes)  # the single, distilled head
        self.joint = build_head(head, dim, num_classes * TRANSFORMS[transform])
        self.transform, self.num_classes, self.temperature = transform, num_classes, temperature
        self.joint_scale = joint_scale if head == "cosine" else 1.0

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.backbone(x))

    def joint_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(joint logits of the expanded batch, single-head logits of the untransformed images)."""
        feat = self.backbone(expand(x, self.transform))
        return self.joint(feat) * self.joint_scale, self.classifier(feat[: x.shape[0]])

    @torch.no_grad()
    def aggregated_logits(self, x: Tensor) -> Tensor:
        joint, _ = self.joint_logits(x)
        return aggregate(joint, x.shape[0], self.num_classes)

    def sample_params(self, x: Tensor, generator=None) -> dict:
        return {}  # every transformation of every image: nothing random

    def training_loss(self, x: Tensor, y: Tensor, cls_loss: nn.Module, generator=None):
        return self.loss_from_params(x, y, cls_loss, {})

    def loss_from_params(self, x: Tensor, y: Tensor, cls_loss: nn.Module, params: dict):
        m, T = TRANSFORMS[self.transform], self.temperature
        joint, single = self.joint_logits(x)
        joint, single = joint.float(), single.float()
        loss_joint = F.cross_entropy(joint, joint_labels(y, m))
        loss_cls = cls_loss(single, y)
        agg = aggregate(joint, x.shape[0], self.num_classes).detach()
        # distil into the logits the single head is judged by (LDAM scales cosines by s)
        student = single * getattr(cls_loss, "s", 1.0)
        loss_sd = (
            F.kl_div(F.log_softmax(student / T, 1), F.softmax(agg / T, 1), reduction="batchmean") * T * T
        )
        total = loss_joint + loss_cls + loss_sd
        stats = {
            "cls_loss": loss_cls.detach(),
            "correct": (single.argmax(1) == y).sum(),
            "sla_joint": loss_joint.detach(),
            "sla_distill": loss_sd.detach(),
            "sla_agg_correct": (agg.argmax(1) == y).sum(),
            "aux": total.new_zeros(()),
            "loss": total.detach(),
        }
        return total, stats
