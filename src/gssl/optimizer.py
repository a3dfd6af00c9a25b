"""The optimiser every scenario trains with: SGD (the papers' ResNet protocols) or AdamW (DINO's recipe
for ViTs), its weight-decay groups, the per-epoch learning rate and weight decay, and per-parameter
gradient clipping."""

from __future__ import annotations

import torch

from .config import Config


def build_optimizer(
    cfg: Config, model: torch.nn.Module, device: torch.device, *, stacked: list[torch.Tensor] | None = None
) -> torch.optim.Optimizer:
    """SGD or AdamW; without weight decay on norm weights and biases when optim.decay_norm_and_bias is
    false. The first group is the decayed one, the group whose decay a schedule changes. `stacked`: a
    pack's parameters (gssl.packed), in `model`'s order with a first dimension of members: grouped by
    the member's own shape, so each member's slice is treated as its single run's parameter."""
    optim = cfg.optim
    member = list(model.parameters())
    params = member if stacked is None else stacked
    decays = [p.dim() > 1 or optim.decay_norm_and_bias for p in member]
    decayed = [p for p, decay in zip(params, decays) if decay]
    undecayed = [p for p, decay in zip(params, decays) if not decay]
    groups = [{"params": decayed}, {"params": undecayed, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    kernel = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if optim.optimizer == "adamw":  # DINO's ViT recipe: torch's default betas and eps, as DINO's code
        return torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay, **kernel)
    return torch.optim.SGD(
        groups,
        lr=optim.lr,
        momentum=optim.momentum,
        nesterov=optim.nesterov,
        weight_decay=optim.weight_decay,
        **kernel,
    )


def set_epoch_hyperparameters(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """This epoch's learning rate in every group and weight decay in the decayed one, the first (a
    model always has weights of 2 or more dimensions); checkpoints keep only the groups' order."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.param_groups[0]["weight_decay"] = weight_decay


def clip_each_gradient(parameters, max_norm: float) -> None:
    """DINO's clip_gradients: each parameter's gradient scaled down to norm max_norm on its own (not one
    norm over all of them, as torch.nn.utils.clip_grad_norm_ does); no host sync."""
    for param in parameters:
        if param.grad is not None:
            norm = torch.linalg.vector_norm(param.grad.detach().float())
            param.grad.mul_((max_norm / (norm + 1e-6)).clamp(max=1.0).to(param.grad.dtype))
