"""SimCLR's view augmentation as batched tensor operations on the device.

Each view of each image gets a random resized crop (area share in `crop_scale`, aspect ratio in
[3/4, 4/3], resized back to H x W bilinearly) with a horizontal flip, colour jitter with probability
`jitter_p` (brightness, contrast, saturation, hue, in that fixed order), and greyscale with
probability `grey_p`: the CIFAR recipe of SimCLR (Chen et al. 2020, appendix B.9) that torchvision's
RandomResizedCrop + RandomHorizontalFlip + RandomApply(ColorJitter) + RandomGrayscale spell per
sample. Two deliberate differences: a crop whose side would exceed the image is clipped to it rather
than redrawn up to ten times, and the jitter order is fixed rather than shuffled per image; both
keep the whole batch in a handful of kernels with no host synchronisation. (Sampling the crop from
the whole image also lets its outermost output pixels blend in the half pixel just outside it.)

`sample` draws the parameters (from the generator's device, then moved, so CPU and CUDA runs draw
alike); `apply` is pure, for tests and inspection; `views` makes V views of a normalised batch. A `size`
resizes the crops to size x size instead of the image's own size: DINO's multi-crop draws its small
local views so, from a second ViewAugment with a smaller crop scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attacks import PixelSpace
from .randaugment import _b, _grey, brightness, color, contrast


def rgb_to_hsv(x: Tensor) -> Tensor:
    """[0, 1] RGB -> HSV with hue in [0, 1) (the colorsys convention, batched)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    h = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = torch.where(delta > 0, (h / 6) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6)
    f = h * 6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    # for sector i: (r, g, b) picks from (v, q, p, t) as colorsys does
    table = torch.stack(
        [torch.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 1
    )
    return table.gather(1, i[:, None, None].expand(-1, 1, 3, *i.shape[1:])).squeeze(1)


def hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate every pixel's hue by shift[i] turns (torchvision's adjust_hue); greyscale images pass."""
    if x.shape[1] == 1:
        return x
    hsv = rgb_to_hsv(x)
    hsv = torch.cat([(hsv[:, :1] + _b(shift)) % 1.0, hsv[:, 1:]], 1)
    return hsv_to_rgb(hsv).clamp(0, 1)


def crop_theta(scale: Tensor, log_ratio: Tensor, u: Tensor, flip: Tensor) -> Tensor:
    """2x3 affine matrices (output -> input, normalised coordinates) for a crop of area share `scale`,
    aspect ratio exp(log_ratio), placed at u in [0, 1]^2 of the free room, mirrored where `flip`."""
    ratio = log_ratio.exp()
    w = (scale * ratio).sqrt().clamp(max=1.0)  # side lengths as shares of the image's sides
    h = (scale / ratio).sqrt().clamp(max=1.0)
    cx = (u[:, 0] * (1 - w) + w / 2) * 2 - 1  # crop centre in [-1, 1]
    cy = (u[:, 1] * (1 - h) + h / 2) * 2 - 1
    theta = torch.zeros(scale.shape[0], 2, 3, device=scale.device)
    theta[:, 0, 0] = torch.where(flip, -w, w)
    theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = cx, h, cy
    return theta


class ViewAugment:
    """V random views per image: resized crop + flip, colour jitter, greyscale."""

    def __init__(
        self,
        mean,
        std,
        device=None,
        *,
        crop_scale=(0.2, 1.0),
        jitter=(0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        grey_p: float = 0.2,
        hflip: bool = True,
    ):
        lo, hi = crop_scale
        if not 0 < lo <= hi <= 1 or len(jitter) != 4 or not (0 <= jitter_p <= 1 and 0 <= grey_p <= 1):
            raise ValueError(
                f"ViewAugment: crop_scale {crop_scale} must satisfy 0 < low <= high <= 1, jitter "
                f"{jitter} needs 4 strengths, probabilities {jitter_p}, {grey_p} must lie in [0, 1]"
            )
        self.space = PixelSpace(mean, std, device)
        self.crop_scale, self.jitter, self.jitter_p, self.grey_p, self.hflip = (
            (lo, hi),
            tuple(jitter),
            jitter_p,
            grey_p,
            hflip,
        )

    def sample(self, n: int, generator: torch.Generator, device) -> dict[str, Tensor]:
        gd = generator.device
        r = torch.rand(n, 10, generator=generator, device=gd).to(device)
        lo, hi = self.crop_scale
        bri, con, sat, hu = self.jitter
        return {
            "crop": crop_theta(
                lo + r[:, 0] * (hi - lo),
                (r[:, 1] * 2 - 1) * math.log(4 / 3),
                r[:, 2:4],
                (r[:, 4] < 0.5) & self.hflip,
            ),
            "jitter": r[:, 5] < self.jitter_p,
            # factors uniform in [1 - s, 1 + s] (clamped at 0), hue shift in [-s, s] turns
            "factors": torch.stack(
                [1 + (r[:, 6 + k] * 2 - 1) * s for k, s in enumerate((bri, con, sat))], 1
            ).clamp_min(0),
            "hue": (r[:, 9] * 2 - 1) * hu,
            "grey": torch.rand(n, generator=generator, device=gd).to(device) < self.grey_p,
        }

    @staticmethod
    def apply(x: Tensor, p: dict[str, Tensor], size: int | None = None) -> Tensor:
        """Views of [0, 1] images for drawn parameters `p` (no randomness here), size x size if given."""
        shape = list(x.shape) if size is None else [*x.shape[:2], size, size]
        grid = F.affine_grid(p["crop"], shape, align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        f = p["factors"]
        jittered = hue(color(contrast(brightness(x, f[:, 0]), f[:, 1]), f[:, 2]), p["hue"])
        x = torch.where(_b(p["jitter"]), jittered, x)
        return torch.where(_b(p["grey"]), _grey(x).expand_as(x), x)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """One view of a normalised batch, normalised."""
        return self.space.to_model(
            self.apply(self.space.to_pixels(x), self.sample(x.shape[0], generator, x.device))
        )

    def views(self, x: Tensor, generator: torch.Generator, v: int, size: int | None = None) -> Tensor:
        """[v, N, C, H, W]: v independent views of every image of a normalised batch (H = W = size if
        given)."""
        pixels = self.space.to_pixels(x)
        return torch.stack(
            [
                self.space.to_model(self.apply(pixels, self.sample(x.shape[0], generator, x.device), size))
                for _ in range(v)
            ]
        )
