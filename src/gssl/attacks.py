"""L-infinity attacks in pixel space (FGSM, PGD), whatever the model's input normalisation.

Batches arrive normalised, as the loaders give them; the attack maps them back to [0, 1] with the
run's mean and std, perturbs there (every perturbation within eps and every pixel within [0, 1]),
and maps back. The objective is a function of the normalised adversarial batch: the classification
loss alone (evaluation), or the classification plus the gated pretext loss on the pretext-transformed
image (the longer paper's training attack; `GatedSSL.loss_from_params` with fixed pretext parameters).

Only the input receives gradients (torch.autograd.grad): model gradients are untouched, and the
model is put in eval mode while attacking unless `train_mode` asks for the reference's behaviour
(batch-norm running statistics updated by every attack step).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .step import autocast


@dataclass(frozen=True)
class Attack:
    kind: str = "pgd"  # "fgsm" or "pgd"
    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    random_start: bool = True

    def __post_init__(self):
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack {self.kind!r}; choose one of {sorted(ATTACKS)}")
        if not (0 <= self.eps <= 1) or self.step_size < 0 or self.steps < 1:
            raise ValueError(
                f"attack settings out of range: eps {self.eps} (expected [0, 1]), "
                f"step size {self.step_size} (>= 0), steps {self.steps} (>= 1)"
            )


class PixelSpace:
    """Normalised <-> [0, 1] pixels for a (mean, std) per channel."""

    def __init__(self, mean, std, device=None):
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def to_pixels(self, x: Tensor) -> Tensor:
        return (x.float() * self.std.to(x.device) + self.mean.to(x.device)).clamp(0, 1)

    def to_model(self, p: Tensor) -> Tensor:
        return (p - self.mean.to(p.device)) / self.std.to(p.device)


def classification_objective(model, loss_fn=None):
    """Cross-entropy (or `loss_fn`) of the model's class logits: the evaluation attack."""

    def objective(x: Tensor, y: Tensor) -> Tensor:
        logits = model(x).float()
        return loss_fn(logits, y) if loss_fn is not None else F.cross_entropy(logits, y)

    return objective


def training_objective(model, cls_loss, params: dict):
    """Classification + gated pretext loss on the pretext-transformed image, parameters held fixed:
    the same total the training step minimises."""

    def objective(x: Tensor, y: Tensor) -> Tensor:
        return model.loss_from_params(x, y, cls_loss, params)[0]

    return objective


@contextlib.contextmanager
def attack_mode(model: torch.nn.Module, train_mode: bool = False):
    was = model.training
    model.train(train_mode)
    try:
        yield
    finally:
        model.train(was)


def perturb(
    objective,
    x: Tensor,
    y: Tensor,
    space: PixelSpace,
    attack: Attack,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The adversarial version of the normalised batch x (detached)."""
    clean = space.to_pixels(x.detach())
    if attack.kind == "fgsm":
        steps, step, start = 1, attack.eps, False
    else:
        steps, step, start = attack.steps, attack.step_size, attack.random_start
    delta = torch.zeros_like(clean)
    if start and attack.eps > 0:
        u = torch.rand(
            clean.shape, generator=generator, device=generator.device if generator else clean.device
        )
        delta = (u.to(clean.device) * 2 - 1) * attack.eps
        delta = (clean + delta).clamp(0, 1) - clean
    with torch.enable_grad():
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = objective(space.to_model(clean + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + step * grad.sign()).clamp(-attack.eps, attack.eps)
            delta = (clean + delta).clamp(0, 1) - clean
    return space.to_model(clean + delta.detach()).detach()


ATTACKS = {"fgsm", "pgd"}


@torch.no_grad()
def robust_accuracy(
    model, loader, space: PixelSpace, attack: Attack, *, precision: str = "fp32", seed: int = 0
) -> tuple[float, float]:
    """(clean, robust) top-1 in percent over a loader, the model in eval mode throughout; weights
    and batch-norm statistics are left exactly as they were."""
    objective = classification_objective(model)
    device_type = next(model.parameters()).device.type
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    clean = robust = n = 0
    with attack_mode(model, train_mode=False):
        for x, y in loader:
            with autocast(device_type, precision):
                clean += (model(x).argmax(1) == y).sum().item()
                x_adv = perturb(objective, x, y, space, attack, gen)
                robust += (model(x_adv).argmax(1) == y).sum().item()
            n += y.shape[0]
    return 100.0 * clean / n, 100.0 * robust / n
