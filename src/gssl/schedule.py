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


def resolved_schedule(cfg: Config) -> dict:
    """The schedule as applied, under the configuration's own key names (so it reads beside config.yaml):
    a shortened protocol's warm-up, milestones and DRW epoch after scaling. An epoch key counts epochs
    done: drw_epoch 160 switches DRW on from the 161st epoch."""
    optim = cfg.optim
    warmup, milestones, drw = scaled_schedule(optim, cfg.loss.drw_epoch)
    return {
        "epochs": optim.epochs,
        "base_epochs": optim.base_epochs,
        "warmup_epochs": warmup,
        "schedule": optim.schedule,
        "milestones": milestones if optim.schedule == "step" else [],
        "drw_epoch": drw,
        "first_lr": lr_at(cfg, 0),
        "last_lr": lr_at(cfg, optim.epochs - 1),
    }


def describe(schedule: dict) -> str:
    """One line for a person: what happens from which epoch (counted from 1)."""
    epochs = schedule["epochs"]
    parts = [f"{epochs} epochs, warm-up {schedule['warmup_epochs']}"]
    if schedule["schedule"] == "cosine":
        parts.append("cosine decay")
    if schedule["milestones"]:
        parts.append(_starts("lr decays", schedule["milestones"], epochs))
    if schedule["drw_epoch"] is not None:
        parts.append(_starts("DRW", [schedule["drw_epoch"]], epochs))
    return ", ".join(parts) + f"; lr {schedule['first_lr']:.4g} -> {schedule['last_lr']:.4g}"


def _starts(what: str, epochs_done: list[int], epochs: int) -> str:
    numbers = ", ".join(str(e + 1) for e in epochs_done)
    if all(e >= epochs for e in epochs_done):
        return f"{what}: none within the run (epoch {numbers})"
    return f"{what} from epoch {numbers}"


def scaling_notice(cfg: Config) -> str | None:
    """A line when scaling the protocol to optim.epochs moved its warm-up, decays or DRW; else None."""
    optim = cfg.optim
    warmup, milestones, drw = scaled_schedule(optim, cfg.loss.drw_epoch)
    moved = []
    if warmup != optim.warmup_epochs:
        moved.append(f"warm-up {optim.warmup_epochs} -> {warmup} epochs")
    if optim.schedule == "step" and milestones != list(optim.milestones):
        before, after = (", ".join(str(m + 1) for m in ms) for ms in (optim.milestones, milestones))
        moved.append(f"lr decays from epochs {before} -> {after}")
    if drw != cfg.loss.drw_epoch:
        moved.append(f"DRW from epoch {cfg.loss.drw_epoch + 1} -> {drw + 1}")
    if not moved:
        return None
    return (
        f"notice: optim.epochs={optim.epochs} scales the {optim.base_epochs}-epoch protocol "
        f"(optim.base_epochs) by {optim.epochs / optim.base_epochs:.3g}: {'; '.join(moved)}. "
        f"To keep them unscaled, set optim.base_epochs={optim.epochs}"
    )
