"""GatedSSL: backbone + classifier head + one head per pretext task + gate (SPEC section 1).

Training step, as the authors' code: transform the batch (one shared quadrant per sample), ONE
backbone forward on the transformed batch, classifier loss on it too, a per-sample cross-entropy
per pretext head, the gate weights the pretext losses:

    total = L_cls + ssl_ratio * sum_n G_n L_n + aux      (aux: the learned gate's own objective)

At test time (`forward`) the image is not transformed and only the classifier head is used.

The random draw (`sample_params`) is kept apart from the pure, compile-friendly part
(`loss_from_params`), so `torch.compile` can be applied to the latter alone if generator use
ever breaks its graph.
"""

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .gating import build_gate
from .models import build_backbone, build_head
from .pretext import build_pretext


class GatedSSL(nn.Module):
    def __init__(
        self,
        backbone: str,
        num_classes: int,
        *,
        tasks: Sequence[str] = (),
        gate: str = "reference",
        head: str = "linear",
        ssl_ratio: float = 0.1,
        flip_axis: str = "H",
        in_channels: int = 3,
        gate_kw: Optional[dict] = None,
    ):
        super().__init__()
        self.backbone = build_backbone(backbone, in_channels)
        dim = self.backbone.feat_dim
        self.classifier = build_head(head, dim, num_classes)
        self.tasks = [] if gate == "none" else list(tasks)
        self.pretext = build_pretext(self.tasks, flip_axis) if self.tasks else None
        self.heads = nn.ModuleDict()
        self.gate = None
        if self.pretext is not None:
            classes = self.pretext.num_classes
            for t in self.tasks:
                self.heads[t] = build_head(head, dim, classes[t])
            kw = {"num_classes": [classes[t] for t in self.tasks], **(gate_kw or {})}
            self.gate = build_gate(gate, dim, len(self.tasks), **kw)
        self.ssl_ratio = ssl_ratio
        self.gate_mode = gate
        self.fusion: Optional[nn.Module] = None  # contrastive pre-training's batch fusion (gssl.fusion), if any

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (cosines for a cosine head) of the untransformed image."""
        return self.classifier(self.backbone(x))

    def sample_params(self, x: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """The random part of a training step: pretext parameters for this batch ({} if none)."""
        return {} if self.pretext is None else self.pretext.sample(x, generator)

    def loss_from_params(
        self, x: Tensor, y: Tensor, cls_loss: nn.Module, params: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Pure part of the training step. Returns (total loss, detached stats tensors)."""
        logits, ssl_total, stats = self.train_forward(x, params)
        loss_cls = cls_loss(logits, y)
        total = loss_cls + ssl_total
        stats.update({"cls_loss": loss_cls.detach(), "correct": (logits.argmax(1) == y).sum(), "loss": total.detach()})
        return total, stats

    def train_forward(self, x: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The transformed batch through the backbone once: (class logits, ssl_ratio x gated pretext loss
        + the gate's own term, stats). FixMatch calls this on its labelled, weak and strong views at once."""
        labels = {}
        if self.pretext is not None:
            x, labels = self.pretext.apply(x, params)
        if self.fusion is not None:
            x = self.fusion(x)
        feat = self.backbone(x)
        logits = self.classifier(feat)
        ssl_total = logits.new_zeros((), dtype=torch.float32)
        stats: dict[str, Tensor] = {"aux": ssl_total.detach()}
        if self.pretext is not None:
            # Per-sample CE on each head; raw cosines when the heads are cosine (SPEC section 4).
            head_logits = {t: self.heads[t](feat).float() for t in self.tasks}
            losses = torch.stack(
                [F.cross_entropy(head_logits[t], labels[t], reduction="none") for t in self.tasks], dim=1
            )
            gated = self.gate(feat, losses)
            ssl_total = self.ssl_ratio * gated.pretext_loss + gated.aux_loss
            stats["aux"] = gated.aux_loss.detach()
            per_task = losses.detach().mean(0)
            for i, t in enumerate(self.tasks):
                stats[f"ssl_{t}"] = per_task[i]
                stats[f"gate_{t}"] = gated.weights[i]
                # the pretext head's training accuracy, percent: has the head learned anything yet?
                stats[f"pretext_acc_{t}"] = 100.0 * (head_logits[t].argmax(1) == labels[t]).float().mean()
        return logits, ssl_total, stats

    def training_loss(
        self, x: Tensor, y: Tensor, cls_loss: nn.Module, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return self.loss_from_params(x, y, cls_loss, self.sample_params(x, generator))
