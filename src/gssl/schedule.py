"""The training schedule: learning rate per epoch and the epoch DRW switches on, scaled from the
protocol's base length (a 45-epoch run of a 200-epoch protocol keeps its shape)."""

from __future__ import annotations

import math

from .config import Config, OptimConfig


def scaled_schedule(optim: OptimConfig, drw_epoch: int | None) -> tuple[int, list[int], int | None]:
    """Warm-up, milestones and DRW start scaled from base_epochs to epochs (shortened protocols)."""
    scale = optim.epochs / optim.base_epochs
    warmup = int(round(optim.warmup_epochs * scale))
    milestones = [int(round(m * scale)) for m in optim.milestones]
    drw = None if drw_epoch is None else int(round(drw_epoch * scale))
    return warmup, milestones, drw


def lr_at(cfg: Config, epoch: int) -> float:
    """Linear warm-up per epoch, then step decays (gamma**i after the i-th milestone) or cosine."""
    optim = cfg.optim
    warmup, milestones, _ = scaled_schedule(optim, None)
    if epoch < warmup:
        return optim.lr * (epoch + 1) / warmup
    if optim.schedule == "cosine":
        progress = (epoch - warmup) / max(1, optim.epochs - warmup)
        return optim.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return optim.lr * optim.gamma ** sum(epoch >= m for m in milestones)


def drw_on(cfg: Config, epoch: int) -> bool:
    """Whether the class-balanced DRW weights apply in this epoch (from the scaled drw_epoch on)."""
    _, _, drw_epoch = scaled_schedule(cfg.optim, cfg.loss.drw_epoch)
    return drw_epoch is not None and epoch >= drw_epoch


def weight_decay_at(cfg: Config, epoch: int) -> float:
    """optim.weight_decay, or with weight_decay_end a cosine from it (epoch 0) towards weight_decay_end:
    DINO's `cosine_scheduler` for the weight decay, taken per epoch as gssl's learning rate is."""
    optim = cfg.optim
    if optim.weight_decay_end is None:
        return optim.weight_decay
    progress = epoch / optim.epochs
    return optim.weight_decay_end + 0.5 * (optim.weight_decay - optim.weight_decay_end) * (
        1 + math.cos(math.pi * progress)
    )
