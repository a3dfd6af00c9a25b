"""Grad-CAM (Selvaraju et al. 2017) on our own backbones, with a forward hook on a named stage.

For a class score y_c and the stage's activations A [B, K, h, w]:

    alpha_k = mean over (i, j) of d y_c / d A_k(i, j)          (one weight per channel)
    cam     = ReLU(sum_k alpha_k A_k)                          ([B, h, w], then upsampled)

The score is the classifier's output for the class (a logit for a linear head, a cosine for a
cosine head). The gradient is taken with torch.autograd.grad on the activations only, so the
model's parameter gradients are left untouched, and the model's train/eval mode is restored.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def stage_names(model: nn.Module) -> list[str]:
    """The named stages of the model's backbone (layer1..layer3, or ..layer4 for ResNet-18)."""
    backbone = getattr(model, "backbone", model)
    return [
        n
        for n in ("layer1", "layer2", "layer3", "layer4")
        if isinstance(getattr(backbone, n, None), nn.Module)
    ]


def default_layer(model: nn.Module) -> str:
    """The last stage, as in the authors' analysis (ResNet-32: layer3; ResNet-18: layer4)."""
    names = stage_names(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no layer1..layer4 stages to take Grad-CAM on")
    return names[-1]


def _stage(model: nn.Module, layer: str) -> nn.Module:
    names = stage_names(model)
    if layer not in names:
        raise ValueError(f"no stage {layer!r} in this backbone; valid: {', '.join(names)}")
    return getattr(getattr(model, "backbone", model), layer)


def grad_cam(
    model: nn.Module,
    x: Tensor,
    classes: Tensor | None = None,
    layer: str | None = None,
    size: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Heatmaps for `classes` (default: the predicted class) of the normalised images x [B, C, H, W].

    model(x) must return class scores (GatedSSL's forward does). Returns (cams [B, H, W] in [0, 1],
    each image scaled by its own maximum, a map with no positive evidence is all zeros; logits [B,
    num_classes]). `size` defaults to the input's H, W (bilinear upsampling)."""
    layer = layer or default_layer(model)
    captured: list[Tensor] = []
    handle = _stage(model, layer).register_forward_hook(lambda _m, _i, out: captured.append(out))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(x)
            acts = captured[-1]
            target = logits.argmax(1) if classes is None else torch.as_tensor(classes, device=logits.device)
            scores = logits.gather(1, target.view(-1, 1).long()).sum()  # samples are independent in eval mode
            (grads,) = torch.autograd.grad(scores, acts)
    finally:
        handle.remove()
        model.train(was_training)
    weights = grads.float().mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts.detach().float()).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=size or tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).view(-1, 1, 1)
    cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
    return cam.cpu(), logits.detach().float().cpu()


def peak_quadrant(cam: Tensor) -> Tensor:
    """Quadrant (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right, as in pretext.py) of each
    heatmap's maximum. cam: [B, H, W]."""
    B, H, W = cam.shape
    idx = cam.reshape(B, -1).argmax(1)
    row, col = idx // W, idx % W
    return (row >= H // 2).long() * 2 + (col >= W // 2).long()


def quadrant_mass(cam: Tensor) -> Tensor:
    """Share of each heatmap's total in each quadrant: [B, 4], rows sum to 1 (0 for empty maps)."""
    B, H, W = cam.shape
    q = cam.reshape(B, 2, H // 2, 2, W // 2).sum(dim=(2, 4)).reshape(B, 4)
    return q / q.sum(1, keepdim=True).clamp_min(1e-12)
