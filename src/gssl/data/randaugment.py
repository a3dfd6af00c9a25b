"""RandAugment with Cutout as batched tensor operations on the device (FixMatch's strong augmentation).

Every image gets `n` operations drawn at random from OPS, each with its own magnitude drawn
uniformly from the operation's range (FixMatch, Sohn et al. 2020, Table 12), then a Cutout square of
side up to half the image. No PIL, no per-sample Python: each slot computes every operation for the
whole batch and keeps, per image, the one it drew (`torch.where`), so there is no host
synchronisation; the geometric operations share one `grid_sample` per slot.

Images are float in [0, 1], N x C x H x W (greyscale C=1 or RGB C=3); outputs stay in [0, 1].
`apply(x, op, magnitude)` runs one operation at given magnitudes, for tests and for inspection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# name -> (low, high) of the magnitude, FixMatch Table 12
RANGES = {
    "identity": (0.0, 0.0),
    "autocontrast": (0.0, 0.0),
    "equalize": (0.0, 0.0),
    "brightness": (0.05, 0.95),
    "color": (0.05, 0.95),
    "contrast": (0.05, 0.95),
    "sharpness": (0.05, 0.95),
    "posterize": (4.0, 8.0),
    "solarize": (0.0, 1.0),
    "rotate": (-30.0, 30.0),
    "shear_x": (-0.3, 0.3),
    "shear_y": (-0.3, 0.3),
    "translate_x": (-0.3, 0.3),
    "translate_y": (-0.3, 0.3),
}
OPS = tuple(RANGES)
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
FILL = 0.5  # what geometric ops and Cutout leave where there is no image


def _b(m: Tensor) -> Tensor:
    return m.view(-1, 1, 1, 1)


def _grey(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    return 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _blend(a: Tensor, b: Tensor, factor: Tensor) -> Tensor:
    """b + factor (a - b): factor 1 is a, 0 is b (PIL ImageEnhance)."""
    return (b + _b(factor) * (a - b)).clamp(0, 1)


def autocontrast(x: Tensor, m: Tensor | None = None) -> Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(hi > lo, 1.0 / (hi - lo).clamp_min(1e-8), torch.ones_like(hi))
    return torch.where(hi > lo, (x - lo) * scale, x).clamp(0, 1)


def equalize(x: Tensor, m: Tensor | None = None) -> Tensor:
    """Per image and channel histogram equalisation over 256 levels (cdf mapping)."""
    n, c, h, w = x.shape
    levels = (x * 255).round().long().view(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device).scatter_add_(
        1, levels, torch.ones_like(levels, dtype=torch.float)
    )
    cdf = hist.cumsum(1)
    cdf_min = torch.where(hist > 0, cdf, torch.full_like(cdf, float("inf"))).amin(1, keepdim=True)
    denom = (h * w - cdf_min).clamp_min(1)
    lut = ((cdf - cdf_min) / denom).clamp(0, 1)
    out = lut.gather(1, levels).view(n, c, h, w)
    flat = (denom <= 1).view(n, c, 1, 1)  # a single level: leave it
    return torch.where(flat, x, out)


def brightness(x, m):
    return _blend(x, torch.zeros_like(x), m)


def color(x, m):
    return _blend(x, _grey(x).expand_as(x), m)


def contrast(x, m):
    return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), m)


def sharpness(x, m):
    """Blend with PIL's smoothing filter (border pixels kept): factor < 1 blurs."""
    # built on the device with fill_: `k[1, 1] = 5.0` would copy a host scalar, a sync on CUDA
    k = torch.ones(3, 3, device=x.device)
    k[1, 1].fill_(5.0)
    k = k / 13
    c = x.shape[1]
    smooth = F.conv2d(x, k.expand(c, 1, 3, 3), padding=1, groups=c)
    inner = torch.zeros_like(x[:1, :1], dtype=torch.bool)
    inner[..., 1:-1, 1:-1].fill_(True)
    return _blend(x, torch.where(inner, smooth, x), m)


def posterize(x, m):
    bits = m.round().long().clamp(1, 8)
    mask = (255 - (2 ** (8 - bits) - 1)).view(-1, 1, 1, 1)
    return ((x * 255).round().long() & mask).float() / 255


def solarize(x, m):
    return torch.where(x < _b(m), x, 1 - x)


def _affine(op: str, m: Tensor, h: int, w: int) -> Tensor:
    """Per-image 2x3 matrices (normalised coordinates, output -> input) for one geometric op."""
    n = m.shape[0]
    theta = torch.eye(2, 3, device=m.device).repeat(n, 1, 1)  # no host scalar copied in (a CUDA sync)
    if op == "rotate":
        a = m * math.pi / 180
        theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), -torch.sin(a) * h / w
        theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a) * w / h, torch.cos(a)
    elif op == "shear_x":
        theta[:, 0, 1] = m * h / w
    elif op == "shear_y":
        theta[:, 1, 0] = m * w / h
    elif op == "translate_x":
        theta[:, 0, 2] = -2 * m  # a fraction of the width; positive moves the image right
    elif op == "translate_y":
        theta[:, 1, 2] = -2 * m
    return theta


def _warp(x: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # pad with FILL: warp (x - FILL) with zeros, add FILL back
    return (
        F.grid_sample(x - FILL, grid, mode="nearest", padding_mode="zeros", align_corners=False) + FILL
    ).clamp(0, 1)


COLOR_OPS = {
    "identity": lambda x, m: x,
    "autocontrast": autocontrast,
    "equalize": equalize,
    "brightness": brightness,
    "color": color,
    "contrast": contrast,
    "sharpness": sharpness,
    "posterize": posterize,
    "solarize": solarize,
}


def apply(x: Tensor, op: str, magnitude) -> Tensor:
    """One operation on every image of x, at the given magnitude(s) (a number or one per image)."""
    m = torch.as_tensor(magnitude, dtype=torch.float32, device=x.device).expand(x.shape[0]).contiguous()
    if op in GEOMETRIC:
        return _warp(x, _affine(op, m, *x.shape[2:]))
    if op not in COLOR_OPS:
        raise ValueError(f"unknown RandAugment op {op!r}; choose from {list(OPS)}")
    return COLOR_OPS[op](x, m)


def cutout(x: Tensor, size: Tensor, cy: Tensor, cx: Tensor) -> Tensor:
    """A FILL square of side size[i] pixels centred at (cy[i], cx[i]), clipped at the borders."""
    h, w = x.shape[2:]
    top, left, size = (cy - size // 2).view(-1, 1, 1), (cx - size // 2).view(-1, 1, 1), size.view(-1, 1, 1)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return torch.where(inside.unsqueeze(1), torch.full_like(x, FILL), x)


class RandAugment:
    """n random operations per image with random magnitudes, then Cutout of side up to cutout x H."""

    def __init__(self, n: int = 2, ops=OPS, cutout: float = 0.5):
        bad = [o for o in ops if o not in RANGES]
        if bad or n < 0 or not 0 <= cutout <= 1:
            raise ValueError(f"RandAugment: unknown ops {bad} or n {n} < 0 or cutout {cutout} outside [0, 1]")
        self.n, self.ops, self.cutout = n, tuple(ops), cutout

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        b, dev = x.shape[0], x.device
        gd = generator.device
        for _ in range(self.n):
            choice = torch.randint(len(self.ops), (b,), generator=generator, device=gd).to(dev)
            u = torch.rand(b, generator=generator, device=gd).to(dev)
            geo = [i for i, o in enumerate(self.ops) if o in GEOMETRIC]
            out = x
            for i, op in enumerate(self.ops):
                if op in GEOMETRIC:
                    continue
                lo, hi = RANGES[op]
                out = torch.where(_b(choice == i), COLOR_OPS[op](x, lo + u * (hi - lo)), out)
            if geo:  # one warp for every geometric op drawn in this slot
                theta = _affine("rotate", torch.zeros(b, device=dev), *x.shape[2:])
                for i in geo:
                    op = self.ops[i]
                    lo, hi = RANGES[op]
                    theta = torch.where(
                        (choice == i).view(-1, 1, 1), _affine(op, lo + u * (hi - lo), *x.shape[2:]), theta
                    )
                is_geo = torch.zeros(b, dtype=torch.bool, device=dev)
                for i in geo:
                    is_geo |= choice == i
                out = torch.where(_b(is_geo), _warp(x, theta), out)
            x = out
        if self.cutout > 0:
            h, w = x.shape[2:]
            size = (torch.rand(b, generator=generator, device=gd) * self.cutout * h).round().long().to(dev)
            cy = torch.randint(h, (b,), generator=generator, device=gd).to(dev)
            cx = torch.randint(w, (b,), generator=generator, device=gd).to(dev)
            x = cutout(x, size, cy, cx)
        return x
