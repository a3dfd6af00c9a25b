"""DINO (Caron et al., ICCV 2021, "Emerging Properties in Self-Supervised Vision Transformers") as the
image-level objective, with SelfPatch (gssl.methods.dino.selfpatch) on top and the gated pretext term
beside them.

Followed: facebookresearch/dino `main_dino.py` (DINOLoss, the schedules) and `vision_transformer.py`
(DINOHead), and the SelfPatch authors' `main_selfpatch.py`, which extends them:

- Head: an MLP in_dim -> 2048 -> 2048 -> 256 with GELUs, L2-normalised, then a weight-normalised
  linear layer to K prototypes with no bias, its norm g fixed at 1 (`norm_last_layer`). The weight
  normalisation is written out (w = g v / ||v||, per prototype): the same function as
  nn.utils.weight_norm, without its hooks, so it compiles.
- Teacher: an exponential moving average of the student (backbone and heads), started as its copy,
  momentum rising from 0.996 to 1 on a cosine over every step of training (`teacher_momentum`).
- Loss: the teacher's outputs on the 2 global views, centred and sharpened, softmax((t - c) / tau_t),
  against the student's log_softmax(s / 0.1) on every view, over all pairs of different views; tau_t
  warms up linearly (np.linspace) from `warmup_teacher_temp` to `teacher_temp`, then stays. The centre c
  is an EMA (0.9) of the teacher's batch-mean output over the global batch, updated after the loss reads
  it.
- The last layer's gradient is cancelled during the first `freeze_last_layer` epochs.

Kept apart for determinism and compilation: the teacher's pass, its targets and the centre's update
run in the scenario's `prepare` (no gradient, eager); `loss_from_params` is the pure student step.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ...distributed import mean_over_ranks
from ...ema import EMA
from ...method import PretextSettings
from ...models import build_backbone
from ...models.vit import init_vit_weights
from .selfpatch import Aggregation, neighbour_index, select_positives, selfpatch_loss


class DINOHead(nn.Module):
    """MLP (GELU) to a bottleneck, L2 normalisation, a weight-normalised linear layer to `out_dim`."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        hidden: int = 2048,
        bottleneck: int = 256,
        layers: int = 3,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        dims = [in_dim] + [hidden] * (layers - 1) + [bottleneck]
        mlp: list[nn.Module] = []
        for i in range(layers):
            mlp += [nn.Linear(dims[i], dims[i + 1])] + ([nn.GELU()] if i < layers - 1 else [])
        self.mlp = nn.Sequential(*mlp)
        self.mlp.apply(init_vit_weights)
        last = nn.Linear(bottleneck, out_dim, bias=False)  # PyTorch's default init, as DINO's last layer
        self.last_layer_v = nn.Parameter(last.weight.detach().clone())
        self.last_layer_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not norm_last_layer)

    def forward(self, x: Tensor, last_layer_grad: Tensor | None = None) -> Tensor:
        """`last_layer_grad` (0 or 1) scales the last layer's gradient: 0 freezes it (the first epoch)."""
        v = self.last_layer_v
        if last_layer_grad is not None:
            v = v.detach() + last_layer_grad * (v - v.detach())
        weight = self.last_layer_g * v / v.norm(dim=1, keepdim=True)
        return F.linear(F.normalize(self.mlp(x), dim=-1), weight)


def teacher_probs(teacher_logits: Tensor, center: Tensor, temperature: float) -> Tensor:
    """Centring and sharpening: softmax((t - c) / tau_t)."""
    return F.softmax((teacher_logits.float() - center) / temperature, dim=-1)


def dino_loss(student_logits: Tensor, targets: Tensor, student_temp: float = 0.1) -> Tensor:
    """student_logits [V, N, K] (the 2 global views first), targets [2, N, K] (the teacher's): the mean
    over pairs (t, v), v != t, of the batch-mean cross-entropy H(targets[t], softmax(student[v] / T))."""
    log_p = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    pair = -(targets[:, None] * log_p[None]).sum(-1).mean(-1)  # [2, V]
    views = student_logits.shape[0]
    same = torch.eye(2, views, dtype=torch.bool, device=pair.device)
    return pair.masked_fill(same, 0.0).sum() / (2 * views - 2)


def updated_center(center: Tensor, teacher_logits: Tensor, momentum: float = 0.9) -> Tensor:
    """c <- m c + (1 - m) mean(teacher outputs), the mean over the global batch (every rank's rows)."""
    return center * momentum + mean_over_ranks(teacher_logits.float().mean(0)) * (1 - momentum)


def teacher_temperature(epoch: int, warmup_temp: float, temp: float, warmup_epochs: int) -> float:
    """DINO's schedule: np.linspace(warmup_temp, temp, warmup_epochs)[epoch], then temp."""
    if epoch >= warmup_epochs:
        return temp
    return warmup_temp + (temp - warmup_temp) * epoch / max(1, warmup_epochs - 1)


def teacher_momentum(step: int, total_steps: int, base: float = 0.996) -> float:
    """DINO's cosine schedule from `base` towards 1 over the run's steps (cosine_scheduler(base, 1))."""
    return 1 - (1 - base) * 0.5 * (1 + math.cos(math.pi * step / total_steps))


class Student(nn.Module):
    """What the teacher copies: backbone, image head, and with SelfPatch the aggregation module and the
    patch head. The image representation is the class token (DINO) or, with SelfPatch, the aggregation
    of the patch tokens (its code's design)."""

    def __init__(self, backbone: nn.Module, head: DINOHead, aggregation=None, patch_head=None):
        super().__init__()
        self.backbone, self.head, self.aggregation, self.patch_head = backbone, head, aggregation, patch_head

    def image_and_patches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(image representation [B, D], patch tokens [B, P, D])."""
        tokens = self.backbone.tokens(x)
        patches = tokens[:, 1:]
        image = tokens[:, 0] if self.aggregation is None else self.aggregation(patches)
        return image, patches

    def forward(self, x: Tensor) -> Tensor:
        return self.image_and_patches(x)[0]

    def patch_logits(self, patches: Tensor, last_layer_grad: Tensor | None = None) -> Tensor:
        """The student's own patch tokens through the aggregation's final norm and the patch head."""
        return self.patch_head(self.aggregation.norm(patches), last_layer_grad)


class PatchFeatures(nn.Module):
    """A network's averaged patch tokens (a representation to judge beside the image one)."""

    def __init__(self, net: Student):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.image_and_patches(x)[1].mean(1)


class DINO(nn.Module):
    """Student + EMA teacher (`teacher.module`) + centres, SelfPatch if `selfpatch`, and the gated pretext
    term (`pretext`) when a gate is set: the pretext tasks' heads read the student's image representation
    of the global views, and with SelfPatch its per-image loss is one more column the gate weighs (then
    ssl_ratio, not `patch_weight`, scales it). `forward` is the teacher's image representation: what is
    judged, as DINO evaluates its teacher."""

    def __init__(
        self,
        backbone: str,
        *,
        options: dict,
        in_channels: int = 3,
        selfpatch: dict | None = None,
        pretext: PretextSettings | None = None,
    ):
        super().__init__()
        d, sp = options, selfpatch
        net = build_backbone(backbone, in_channels, d["backbone_options"])
        width, head_kw = net.feat_dim, {"hidden": d["hidden_dim"], "bottleneck": d["bottleneck_dim"]}
        head = DINOHead(width, d["out_dim"], norm_last_layer=d["norm_last_layer"], **head_kw)
        aggregation = Aggregation(width, net.heads, sp["blocks"]) if sp else None
        patch_head = (
            DINOHead(width, sp["out_dim"], norm_last_layer=d["norm_last_layer"], **head_kw) if sp else None
        )
        self.student = Student(net, head, aggregation, patch_head)
        self.teacher = EMA(self.student, d["momentum_teacher"])
        self.register_buffer("center", torch.zeros(d["out_dim"]))
        self.register_buffer("patch_center", torch.zeros(sp["out_dim"] if sp else 0))
        self.selfpatch, self.student_temp, self.center_momentum = sp, d["student_temp"], d["center_momentum"]
        extra = ["selfpatch"] if sp else []
        pretext = pretext or PretextSettings(gate="none")
        self.pretext = pretext.build(width, extra, [sp["out_dim"]] if sp else [])

    @property
    def backbone(self) -> nn.Module:
        return self.student.backbone

    def forward(self, x: Tensor) -> Tensor:
        return self.teacher.module(x)

    def sample_params(self, x: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        return {} if self.pretext is None else self.pretext.sample(x, generator)

    @torch.no_grad()
    def teacher_targets(self, global_views: Tensor, local_views: Tensor | None, temperature: float) -> dict:
        """The teacher's centred, sharpened targets: "image" [2, N, K] on the global views and, with
        SelfPatch, "patch_global" [2, N, P, K'] and "patch_local" [L, N, p, K'] (the summaries of every
        patch's positives). Then the centres move (DINO updates them after the loss has read them)."""
        teacher, out = self.teacher.module, {}
        image, patches = teacher.image_and_patches(global_views)
        logits = teacher.head(image)
        out["image"] = teacher_probs(logits, self.center, temperature).view(2, -1, logits.shape[-1])
        if self.selfpatch:
            patch_logits = [self.positive_summaries(patches, global_views)]
            if local_views is not None:
                local_patches = teacher.image_and_patches(local_views)[1]
                patch_logits.append(self.positive_summaries(local_patches, local_views))
            probs = [teacher_probs(p, self.patch_center, temperature) for p in patch_logits]
            out["patch_global"] = probs[0].view(2, -1, *probs[0].shape[1:])
            if local_views is not None:
                out["patch_local"] = probs[1].view(-1, len(image) // 2, *probs[1].shape[1:])
            every = torch.cat([p.flatten(0, 1) for p in patch_logits])
            self.patch_center.copy_(updated_center(self.patch_center, every, self.center_momentum))
        self.center.copy_(updated_center(self.center, logits, self.center_momentum))
        return out

    def positive_summaries(self, patches: Tensor, views: Tensor) -> Tensor:
        """The teacher's patch-head logits [B, P, K'] of each patch's aggregated top-k neighbours."""
        teacher, sp = self.teacher.module, self.selfpatch
        rows, cols = views.shape[-2] // teacher.backbone.patch, views.shape[-1] // teacher.backbone.patch
        index, valid = neighbour_index(rows, cols, sp["border"], patches.device)
        positives, real = select_positives(patches, index, valid, sp["k"])
        return teacher.patch_head(teacher.aggregation.summarise_positives(patches, positives, real))

    def loss_from_params(
        self,
        global_views: Tensor,
        local_views: Tensor | None,
        targets: dict[str, Tensor],
        labels: dict[str, Tensor],
        last_layer_grad: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The pure step: global views [2N] (pretext-transformed, as the teacher saw them), local views
        [L N] or None, the teacher's targets, the pretext labels, the last layers' gradient scale."""
        student, n = self.student, len(global_views) // 2
        image, patches = student.image_and_patches(global_views)
        views = [(image, patches)]
        if local_views is not None:
            views.append(student.image_and_patches(local_views))
        logits = student.head(torch.cat([v[0] for v in views]), last_layer_grad).float()
        logits = logits.view(-1, n, logits.shape[-1])
        main = dino_loss(logits, targets["image"], self.student_temp)
        agree = logits[0].argmax(-1) == targets["image"][1].argmax(-1)  # view 1's prototype, from view 2
        stats = {"dino_loss": main.detach(), "correct": agree.sum()}
        per_image = self.patch_loss(views, targets, last_layer_grad) if self.selfpatch else None
        if per_image is not None:
            stats["selfpatch_loss"] = per_image.mean().detach()
        if self.pretext is None:
            total = main if per_image is None else main + self.selfpatch["weight"] * per_image.mean()
        else:
            extra = {} if per_image is None else {"selfpatch": per_image.repeat(2)}  # rows: view-major
            shared = ()
            if self.pretext.gate.needs_main_loss:
                upstream = (student.backbone, *([student.aggregation] if self.selfpatch else []))
                shared = tuple(p for module in upstream for p in module.parameters())
            term, pretext_stats = self.pretext(image, labels, shared, extra)
            stats.update(pretext_stats)
            total = term.added_to(main, stats)
        stats["loss"] = total.detach()
        return total, stats

    def patch_loss(self, views: list, targets: dict[str, Tensor], last_layer_grad: Tensor) -> Tensor:
        """SelfPatch's loss per image [N]: the mean over its views (global, then local) of the mean over
        patches of H(teacher's summary of the positives, student's patch)."""
        keys = ("patch_global", "patch_local")
        per_view = []
        for (_, patches), key in zip(views, keys):
            target = targets[key]
            student = self.student.patch_logits(patches, last_layer_grad).view(target.shape)
            per_view.append(selfpatch_loss(student, target, self.student_temp))
        return torch.cat(per_view).mean(0)
