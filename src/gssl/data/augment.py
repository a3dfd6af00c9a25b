"""Batched augmentation on the device: random crop with zero padding, horizontal flip, normalise.

Semantics match torchvision's RandomCrop(size, padding=p) + RandomHorizontalFlip + ToTensor +
Normalize, but for a whole batch at once with no per-sample Python loop. All randomness is drawn
from a CPU generator and then moved to the data's device, so CPU and CUDA runs draw identical
offsets and flips from the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def crop_at(x: torch.Tensor, padding: int, offsets: torch.Tensor) -> torch.Tensor:
    """Crop each zero-padded image at its (top, left) offset in [0, 2 * padding].

    Output pixel (r, c) of sample b is x[b, :, r + top_b - padding, c + left_b - padding], or 0
    where that falls outside the image. The padded batch is viewed (no copy) as every H x W window
    at every offset, and one advanced-indexing gather picks each sample's window.
    """
    if padding == 0:
        return x
    b, _, h, w = x.shape
    offsets = offsets.to(device=x.device, dtype=torch.int64)
    windows = (
        F.pad(x, (padding, padding, padding, padding)).unfold(2, h, 1).unfold(3, w, 1)
    )  # b,c,2p+1,2p+1,h,w
    return windows[torch.arange(b, device=x.device), :, offsets[:, 0], offsets[:, 1]]


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pad by `padding` zeros on every side, crop back to H x W at a random place per sample."""
    if padding == 0:
        return x
    offsets = torch.randint(0, 2 * padding + 1, (x.shape[0], 2), generator=generator)
    return crop_at(x, padding, offsets)


def flip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror (along W) the samples where `mask` is True."""
    return torch.where(mask.to(x.device)[:, None, None, None], x.flip(3), x)


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each sample along W with probability 1/2."""
    return flip_where(x, torch.rand(x.shape[0], generator=generator) < 0.5)


def normalize(
    x_uint8: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """uint8 N x C x H x W -> float32 (x / 255 - mean) / std, the same operations as ToTensor + Normalize.
    `mean`/`std` may be sequences or float32 tensors already on the device (saves a copy per call)."""
    c = x_uint8.shape[1]
    n_mean, n_std = (v.numel() if torch.is_tensor(v) else len(v) for v in (mean, std))
    if n_mean != c or n_std != c:
        raise ValueError(f"mean/std have {n_mean}/{n_std} entries for {c}-channel images")
    m = torch.as_tensor(mean, dtype=torch.float32, device=x_uint8.device).view(1, c, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x_uint8.device).view(1, c, 1, 1)
    return x_uint8.to(torch.float32).div_(255).sub_(m).div_(s)
