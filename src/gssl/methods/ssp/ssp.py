"""SSP, a Table 1 baseline (Yang & Xu, 2020): self-supervised pre-training, then supervised training.

The backbone first learns whole-image rotation (4 classes, RotNet) on the same long-tailed training
images with their labels unused; the supervised run then starts from those backbone weights (the
heads start fresh). One rotation per image per step, drawn at random, rather than all four: the
step costs what a supervised step costs.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...pretext import rotation_transform
from ...step import Compiled, autocast


def pretrain_rotation(
    backbone: nn.Module,
    loader,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    seed: int = 0,
    log=print,
    compile: bool = False,
    precision: str = "fp32",
) -> list[dict]:
    """Train `backbone` in place on rotation prediction; returns per-epoch {epoch, lr, loss, acc}.
    SGD with a cosine schedule; `loader` yields (images, labels) and the labels are ignored. The step
    is compiled like the supervised one when `compile` (full batches; the last partial one eagerly)."""
    device = next(backbone.parameters()).device
    head = nn.Linear(backbone.feat_dim, 4).to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)

    def rotation_step(x: torch.Tensor, k: torch.Tensor):
        logits = head(backbone(rotation_transform(x, k))).float()
        return F.cross_entropy(logits, k), {"correct": (logits.argmax(1) == k).sum()}

    step = Compiled(rotation_step, enabled=compile, batch=loader.batch_size, what="step")
    backbone.train()
    history = []
    for epoch in range(epochs):
        lr_e = lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        for g in opt.param_groups:
            g["lr"] = lr_e
        loader.set_epoch(epoch)
        gen = torch.Generator(device=device).manual_seed(seed * 7_777 + epoch)  # drawn where used: no copy
        loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
        for x, _ in loader:
            k = torch.randint(4, (x.shape[0],), generator=gen, device=device)
            with autocast(device.type, precision):
                loss, stats = step(x, k)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * x.shape[0]
            correct += stats["correct"]
            seen += x.shape[0]
        row = {
            "epoch": epoch + 1,  # counted from 1, as in metrics.jsonl
            "lr": lr_e,
            "loss": loss_sum.item() / seen,
            "acc": 100.0 * correct.item() / seen,
        }
        history.append(row)
        log(f"ssp pre-training {epoch + 1}/{epochs}: rotation loss {row['loss']:.4f}, acc {row['acc']:.2f}%")
    return history
