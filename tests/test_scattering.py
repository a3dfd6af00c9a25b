"""The scattering transform against the known properties of its filters and of the transform."""

import math

import pytest
import torch

from gssl.models import BACKBONES, build_backbone
from gssl.models.scattering import Scattering2D, filter_bank, frequency_grid, n_coefficients

M = 40  # the padded grid of a 32 x 32 image at J = 2


def test_lowpass_is_a_unit_gaussian_and_wavelets_have_zero_mean():
    phi, psi = filter_bank(M, M, J=2, L=8)
    assert phi[0, 0] == pytest.approx(1.0, abs=1e-4) and phi.argmax() == 0 and (phi >= 0).all()
    assert psi[:, :, 0, 0].abs().max() < 1e-6  # zero mean: nothing at frequency 0
    spatial = torch.fft.ifft2(phi)
    assert spatial.imag.abs().max() < 1e-6 and spatial.real.sum() == pytest.approx(1.0, abs=1e-4)


def test_each_wavelet_peaks_at_its_centre_frequency():
    J, L = 2, 8
    _, psi = filter_bank(M, M, J, L)
    wx, wy = frequency_grid(M, M)
    step = 2 * math.pi / M
    for j in range(J):
        for orient in range(L):
            xi, theta = 3 * math.pi / 4 / 2**j, math.pi * orient / L
            i = psi[j, orient].argmax()
            peak = torch.tensor([wx.flatten()[i], wy.flatten()[i]])
            want = torch.tensor([xi * math.cos(theta), xi * math.sin(theta)])
            assert (peak - want).norm() <= step, (j, orient)
            assert 0.9 < psi[j, orient].max() <= 1.0 + 1e-4


def test_a_quarter_turn_of_the_frequencies_moves_a_wavelet_by_half_the_orientations():
    J, L = 2, 8
    _, psi = filter_bank(M, M, J, L)
    rows, cols = torch.meshgrid(torch.arange(M), torch.arange(M), indexing="ij")
    for j in range(J):
        for orient in range(L // 2):
            # psi_{theta + pi/2}(wx, wy) = psi_theta(wy, -wx): row (wy) <- -wx, column (wx) <- wy
            turned = psi[j, orient][(-cols) % M, rows]
            assert torch.allclose(psi[j, orient + L // 2], turned, atol=1e-5)


def test_shapes_coefficient_count_and_bad_sizes():
    s = Scattering2D(J=2, L=8)
    assert n_coefficients(2, 8) == 81 and n_coefficients(3, 4) == 1 + 12 + 16 * 3
    assert s(torch.randn(2, 3, 32, 32)).shape == (2, 243, 8, 8)
    assert s(torch.randn(1, 1, 64, 64)).shape == (1, 81, 16, 16)
    assert Scattering2D(J=3, L=4)(torch.randn(1, 1, 32, 32)).shape == (1, 61, 4, 4)
    with pytest.raises(ValueError, match="divisible by 2\\^J = 4"):
        s(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="even"):
        Scattering2D(J=2, L=5)


def test_constant_image_has_only_the_average():
    out = Scattering2D()(torch.full((1, 1, 32, 32), 0.7))[0]
    assert torch.allclose(out[0], torch.full((8, 8), 0.7), atol=1e-5)
    assert out[1:].abs().max() < 1e-4


def test_orientation_selectivity_on_stripes():
    xs = torch.arange(32, dtype=torch.float)
    xi = 3 * math.pi / 4
    across_x = torch.cos(xi * xs).view(1, 1, 1, 32).expand(1, 1, 32, 32)  # varies along x: theta = 0
    s = Scattering2D()
    for image, want in ((across_x, 0), (across_x.transpose(2, 3), 4)):
        energy = s(image)[0, 1:9].pow(2).mean(dim=(1, 2))  # first order, j = 0, the 8 orientations
        assert energy.argmax().item() == want
        assert energy[want] > 20 * energy[(want + 4) % 8]


def test_homogeneity_and_translation_stability():
    s = Scattering2D()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(s(2 * x), 2 * s(x), atol=1e-4)  # modulus and averaging are positively homogeneous
    shifted = torch.roll(x, 1, dims=3)
    rel_x = ((shifted - x).norm() / x.norm()).item()  # white noise: a one-pixel shift changes everything
    sx, ss = s(x)[..., 1:-1, 1:-1], s(shifted)[..., 1:-1, 1:-1]  # away from the rolled-in border
    rel_s = ((ss - sx).norm() / sx.norm()).item()
    assert rel_x > 1.2 and rel_s < 0.4 * rel_x


def test_gradients_reach_the_input_and_only_the_adapter_trains():
    net = build_backbone("scatnet", in_channels=3)
    assert "scatnet" in BACKBONES and net.feat_dim == 128
    assert sum(p.numel() for p in net.scattering.parameters()) == 0
    assert not any(k.startswith("scattering") for k in net.state_dict())
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.shape == (4, 128)
    out.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())
    assert net.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 128, 8, 8)
    assert build_backbone("scatnet", in_channels=1)(torch.randn(2, 1, 32, 32)).shape == (2, 128)
