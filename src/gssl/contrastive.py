"""Contrastive pre-training with pretext regularisation (ScatSimCLR, Kinakh et al. 2021), and how a
frozen representation is judged.

`SimCLR`: SimCLR (Chen et al. 2020) on V views of every image, the NT-Xent loss on a projection head,
plus the pretext tasks (whole-image rotation, LoRot-E, 2x2 jigsaw, ...) predicted from the same forward
pass and weighted by any gate mode, exactly as GatedSSL weights them beside the classifier; optionally
with batch fusion (gssl.methods.simclr.fusion) ahead of the backbone. `knn_predict`, `linear_probe` and
`frozen_eval`: k-NN and linear evaluation of the backbone's pooled features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import metrics
from .method import LEGACY_PRETEXT_KEYS, PretextSettings, pretext_forward, rename_legacy_keys
from .models import build_backbone


def nt_xent(views: Tensor, temperature: float = 0.5, *, with_correct: bool = False):
    """views: [V, N, D] projections of N images under V augmentations. Every embedding's positives
    are the other V - 1 views of its image, its negatives every view of the other images; the loss
    is the mean over anchors and positives of -log softmax over all other embeddings.
    with_correct: also the number of anchors whose most similar other embedding is one of its
    positives, divided by V (so it counts images, like a classifier's correct count)."""
    v, n, _ = views.shape
    if v < 2:
        raise ValueError(f"NT-Xent needs at least 2 views, got {v}")
    z = F.normalize(views.reshape(v * n, -1).float(), dim=1)
    sim = z @ z.T / temperature
    eye = torch.eye(v * n, dtype=torch.bool, device=z.device)
    logits = sim.masked_fill(eye, float("-inf"))
    image = torch.arange(v * n, device=z.device) % n
    positive = (image[:, None] == image[None, :]) & ~eye
    # a masked sum over a known count, not boolean indexing: that needs nonzero (a host sync and graph break)
    log_prob = torch.where(positive, logits.log_softmax(dim=1), 0.0)
    loss = -log_prob.sum() / (v * n * (v - 1))
    if not with_correct:
        return loss
    nearest = logits.argmax(1)
    return loss, (image[nearest] == image).float().sum().detach() / v


def gather_views(z: Tensor) -> tuple[Tensor, int]:
    """[V, n, D] projections of this rank's n images -> ([V, world * n, D] of every rank's, world).

    PyTorch's differentiable all-gather sends each rank's share of the gradient back to it, summed
    over ranks; every rank computes the same global loss, so a rank's gradient is world x its part
    of the one-process gradient, and DDP's average over ranks makes it exactly the one-process
    gradient. Without torchrun it returns z as it is."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return z, 1
    world = torch.distributed.get_world_size()
    if world == 1:
        return z, 1
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(z.contiguous()), dim=1), world


class SimCLR(nn.Module):
    """The step gets the V views of each image stacked as [V*N] (view-major); the pretext transforms, the
    batch fusion and ONE backbone pass (gssl.method.pretext_forward) feed the projection head
    (Linear-ReLU-Linear, SimCLR v1) and the gated pretext term. `forward` is the representation (pooled
    backbone feature): a contrastive model has no classifier; it is judged by k-NN or a linear probe.
    `pretext` (PretextSettings.from_config, as the scenario builds it) replaces `tasks`, `gate`,
    `ssl_ratio` and `gate_kw`, kept for building one by hand (linear heads, the flip task's axis W)."""

    def __init__(
        self,
        backbone: str,
        *,
        views: int = 2,
        temperature: float = 0.5,
        proj_dim: int = 128,
        proj_hidden: int = 512,
        tasks: Sequence[str] = (),
        gate: str = "uniform",
        ssl_ratio: float = 1.0,
        in_channels: int = 3,
        gate_kw: dict | None = None,
        fusion: nn.Module | None = None,
        backbone_options: dict | None = None,
        pretext: PretextSettings | None = None,
    ):
        super().__init__()
        self.backbone = build_backbone(backbone, in_channels, backbone_options)
        dim = self.backbone.feat_dim
        if pretext is None:  # by hand: linear heads, the flip task's axis W
            pretext = PretextSettings(tuple(tasks), gate, "linear", ssl_ratio, "W", gate_kw)
        self.pretext = pretext.build(dim)
        self.projection = nn.Sequential(
            nn.Linear(dim, proj_hidden), nn.ReLU(inplace=True), nn.Linear(proj_hidden, proj_dim)
        )
        self.views, self.temperature = views, temperature
        self.fusion = fusion
        if fusion is not None:
            fusion.groups = views  # samples communicate within a view, never with their own positive
        self.register_load_state_dict_pre_hook(
            rename_legacy_keys({**LEGACY_PRETEXT_KEYS, "classifier.": "projection."})
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def sample_params(self, x: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        return {} if self.pretext is None else self.pretext.sample(x, generator)

    def loss_from_params(self, x: Tensor, y: Tensor, cls_loss: nn.Module, params: dict[str, Tensor]):
        """x: [V*N] views; y and cls_loss are not used (no labels in pre-training). Under torchrun the
        negatives are every rank's views (gather_views), as one process with the global batch has."""
        z, pretext_term, stats = pretext_forward(
            self.backbone, self.projection, self.pretext, x, params, self.fusion
        )
        zs, world = gather_views(z.float().view(self.views, -1, z.shape[1]))
        loss_c, correct = nt_xent(zs, self.temperature, with_correct=True)
        correct = correct / world  # every rank counts the global batch; the epoch sums over ranks
        total = pretext_term.added_to(loss_c, stats)
        stats.update({"contrastive_loss": loss_c.detach(), "correct": correct, "loss": total.detach()})
        return total, stats


@torch.no_grad()
def knn_predict(
    train_feat: Tensor,
    train_labels: Tensor,
    feat: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> Tensor:
    """Class scores [M, C] by weighted k-nearest-neighbour voting on cosine similarity
    (weights exp(sim / temperature), as in Wu et al. 2018)."""
    bank = F.normalize(train_feat.float(), dim=1)
    out = []
    for q in F.normalize(feat.float(), dim=1).split(chunk):
        sim, idx = (q @ bank.T).topk(min(k, len(bank)), dim=1)
        w = (sim / temperature).exp()
        scores = torch.zeros(len(q), num_classes, device=q.device)
        out.append(scores.scatter_add_(1, train_labels[idx], w))
    return torch.cat(out)


def linear_probe(
    train_feat: Tensor,
    train_labels: Tensor,
    num_classes: int,
    *,
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    batch_size: int = 1024,
    seed: int = 0,
) -> torch.nn.Linear:
    """A linear classifier on frozen (standardised by the caller, if wanted) features: SGD with
    momentum and a cosine schedule, full passes over shuffled features. Zero-initialised (the problem is
    convex) and shuffled by its own seeded generator, so the same features give the same probe anywhere."""
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(train_feat.shape[1], num_classes).to(train_feat.device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    x, y = train_feat.detach().float(), train_labels
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).to(x.device).split(batch_size):
            loss = F.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return head


def frozen_eval(
    backbone: nn.Module,
    train_loader,
    test_loader,
    num_classes: int,
    *,
    device_type: str = "cpu",
    precision: str = "fp32",
    knn_k: int = 200,
    knn_temperature: float = 0.1,
    linear_epochs: int = 0,
    linear_lr: float = 0.1,
    seed: int = 0,
) -> dict:
    """k-NN accuracy (percent) and class scores of the test features against the (un-augmented) training
    features and, if linear_epochs, the linear probe's test logits, on features standardised by the training
    mean and std. "logits" are what judges the representation: the probe's if it was trained, else k-NN's."""
    train_feat, train_y = metrics.predict(backbone, train_loader, device_type, precision)
    test_feat, test_y = metrics.predict(backbone, test_loader, device_type, precision)
    scores = knn_predict(train_feat, train_y, test_feat, num_classes, knn_k, knn_temperature)
    out = {"knn_acc": metrics.top1(scores, test_y), "knn_scores": scores, "labels": test_y}
    if linear_epochs:
        mean, std = train_feat.mean(0), train_feat.std(0).clamp_min(1e-6)
        with torch.enable_grad():
            head = linear_probe(
                (train_feat - mean) / std, train_y, num_classes, epochs=linear_epochs, lr=linear_lr, seed=seed
            )
        with torch.no_grad():
            out["linear_logits"] = head((test_feat - mean) / std)
    out["logits"] = out.get("linear_logits", scores)
    return out
