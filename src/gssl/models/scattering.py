"""A 2-D scattering transform (Mallat 2012; Bruna & Mallat 2013) and ScatNet, its trainable adapter.

ScatSimCLR (seed 001) replaces SimCLR's ResNet with a fixed, hand-crafted scattering network and a
small trainable adapter. Kymatio, the maintained scattering library, does not import with the SciPy
this project installs (kymatio 0.3.0 imports `scipy.special.sph_harm`, removed in SciPy 1.15), so
the transform is written here, with Kymatio's conventions and tested against the filters' known
properties (tests/test_scattering.py):

- Morlet wavelets psi_{j,l} at scales j < J and L orientations theta_l = pi l / L: centre frequency
  xi = 3 pi / 4 / 2^j, envelope width sigma = 0.8 2^j, slant 4 / L (the envelope is L/4 times
  longer along the stripes than across), zero mean; a Gaussian low-pass phi of width 0.8 2^J.
  All are built directly in the Fourier domain (the Fourier transform of a Gabor is a Gaussian
  around its centre frequency), periodised over the neighbouring 2 pi cells, peak 1 and phi_hat(0) = 1.
- Order 2: S0 = x * phi, S1 = |x * psi_{j1,l1}| * phi, S2 = ||x * psi_{j1,l1}| * psi_{j2,l2}| * phi for
  j2 > j1, each subsampled by 2^J: 1 + J L + L^2 J (J - 1) / 2 coefficients per input channel (81 for
  J = 2, L = 8). Reflect padding by 2^J on every side keeps the borders from wrapping around.

Every operation is a differentiable torch op (FFTs, products, modulus), so gradients reach the input
(Grad-CAM, adversarial attacks); the transform has no parameters and runs in float32 under autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..step import float32_region
from .resnet_cifar import BasicBlock


def _gaussian_hat(wx: Tensor, wy: Tensor, sigma: float, theta: float, slant: float) -> Tensor:
    """Fourier transform of a unit-mass Gaussian envelope with widths sigma (across) and sigma / slant
    (along theta + pi/2), periodised over the 3 x 3 neighbouring 2 pi cells."""
    c, s = math.cos(theta), math.sin(theta)
    out = torch.zeros_like(wx)
    for dx in (-2 * math.pi, 0.0, 2 * math.pi):
        for dy in (-2 * math.pi, 0.0, 2 * math.pi):
            u, v = wx + dx, wy + dy
            a, b = c * u + s * v, -s * u + c * v  # along theta, across it
            out += torch.exp(-0.5 * sigma**2 * (a**2 + b**2 / slant**2))
    return out


def frequency_grid(m: int, n: int) -> tuple[Tensor, Tensor]:
    """Angular frequencies (rows: y, columns: x) of an m x n FFT, in [-pi, pi)."""
    wy = 2 * math.pi * torch.fft.fftfreq(m, dtype=torch.float64)
    wx = 2 * math.pi * torch.fft.fftfreq(n, dtype=torch.float64)
    return wx.view(1, n).expand(m, n), wy.view(m, 1).expand(m, n)


def filter_bank(m: int, n: int, J: int = 2, L: int = 8) -> tuple[Tensor, Tensor]:
    """(phi_hat [m, n], psi_hat [J, L, m, n]): real Fourier transforms on an m x n grid (float32)."""
    wx, wy = frequency_grid(m, n)
    phi = _gaussian_hat(wx, wy, 0.8 * 2 ** (J - 1), 0.0, 1.0)  # Kymatio's width
    psi = torch.zeros(J, L, m, n, dtype=torch.float64)
    for j in range(J):
        sigma, xi = 0.8 * 2**j, 3 * math.pi / 4 / 2**j
        for orient in range(L):
            theta = math.pi * orient / L
            cx, cy = xi * math.cos(theta), xi * math.sin(theta)
            gabor = _gaussian_hat(wx - cx, wy - cy, sigma, theta, 4 / L)
            envelope = _gaussian_hat(wx, wy, sigma, theta, 4 / L)
            psi[j, orient] = gabor - gabor[0, 0] / envelope[0, 0] * envelope  # Morlet: the mean removed
    return phi.float(), psi.float()


def n_coefficients(J: int, L: int) -> int:
    return 1 + J * L + L * L * J * (J - 1) // 2


def _lowpass(u_hat: Tensor, phi: Tensor, k: int) -> Tensor:
    """Real part of (u * phi) subsampled by k, computed by folding the spectrum (no full-size inverse)."""
    *lead, m, n = u_hat.shape
    folded = (u_hat * phi).view(*lead, k, m // k, k, n // k).mean(dim=(-4, -2))
    return torch.fft.ifft2(folded).real


class Scattering2D(nn.Module):
    """x [B, C, H, W] -> [B, C * n_coefficients(J, L), H / 2^J, W / 2^J]; H and W divisible by 2^J."""

    def __init__(self, J: int = 2, L: int = 8):
        super().__init__()
        if J < 1 or L < 1 or L % 2:
            raise ValueError(f"Scattering2D: J ({J}) must be >= 1 and L ({L}) a positive even number")
        self.J, self.L = J, L
        self._filters: dict = {}  # (m, n, device) -> filters; rebuilt on demand, never saved

    def filters(self, m: int, n: int, device) -> tuple[Tensor, Tensor]:
        key = (m, n, str(device))
        if key not in self._filters:
            self._filters[key] = tuple(f.to(device) for f in filter_bank(m, n, self.J, self.L))
        return self._filters[key]

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        k = 2**self.J
        if h % k or w % k:
            raise ValueError(f"Scattering2D: image sides {h} x {w} must be divisible by 2^J = {k}")
        with float32_region(x.device.type):
            xp = F.pad(x.float(), (k, k, k, k), mode="reflect")
            phi, psi = self.filters(xp.shape[-2], xp.shape[-1], x.device)
            x_hat = torch.fft.fft2(xp)  # [B, C, M, N]
            s0 = _lowpass(x_hat, phi, k).unsqueeze(2)
            u1 = torch.fft.ifft2(x_hat.unsqueeze(2) * psi.flatten(0, 1)).abs()  # [B, C, J*L, M, N]
            u1_hat = torch.fft.fft2(u1)
            s1 = _lowpass(u1_hat, phi, k)
            s2 = []
            for j1 in range(self.J):
                first = u1_hat[:, :, j1 * self.L : (j1 + 1) * self.L].unsqueeze(3)  # [B, C, L, 1, M, N]
                for j2 in range(j1 + 1, self.J):
                    u2 = torch.fft.ifft2(first * psi[j2]).abs()  # [B, C, L, L, M, N]
                    s2.append(_lowpass(torch.fft.fft2(u2), phi, k).flatten(2, 3))
            s = torch.cat([s0, s1, *s2], 2)[..., 1:-1, 1:-1]  # drop the padding's border
        return s.flatten(1, 2)


class ScatNet(nn.Module):
    """Scattering (fixed) -> BatchNorm -> trainable adapter: a 3x3 conv to `width` channels and `blocks`
    residual blocks at the scattering's resolution (H/4 for J=2), then global average pooling."""

    def __init__(self, in_channels: int = 3, J: int = 2, L: int = 8, width: int = 128, blocks: int = 2):
        super().__init__()
        if blocks < 1:
            raise ValueError(f"ScatNet needs at least one residual block, got {blocks}")
        self.feat_dim = width
        self.scattering = Scattering2D(J, L)
        k = in_channels * n_coefficients(J, L)
        self.bn = nn.BatchNorm2d(k)
        self.layer1 = nn.Sequential(
            nn.Conv2d(k, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.layer2 = BasicBlock(width, width)
        self.layer3 = (
            nn.Sequential(*[BasicBlock(width, width) for _ in range(blocks - 1)])
            if blocks > 1
            else nn.Identity()
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """The adapter's last map [B, width, H/2^J, W/2^J] (the Grad-CAM target layer, layer3)."""
        return self.layer3(self.layer2(self.layer1(self.bn(self.scattering(x)))))

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.forward_features(x), 1), 1)


def scatnet(in_channels: int = 3) -> ScatNet:
    return ScatNet(in_channels)
