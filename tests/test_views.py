"""SimCLR view augmentation: every operation on known images, and the batched views."""

import colorsys
import math

import pytest
import torch
import torch.nn.functional as F

from gssl.data.views import ViewAugment, crop_theta, hsv_to_rgb, hue, rgb_to_hsv

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _params(
    n,
    *,
    scale=1.0,
    log_ratio=0.0,
    u=(0.5, 0.5),
    flip=False,
    jitter=False,
    factors=(1, 1, 1),
    shift=0.0,
    grey=False,
):
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    return {
        "crop": crop_theta(
            full(scale), full(log_ratio), torch.tensor([u] * n, dtype=torch.float), torch.full((n,), flip)
        ),
        "jitter": torch.full((n,), jitter),
        "factors": torch.tensor([factors] * n, dtype=torch.float),
        "hue": full(shift),
        "grey": torch.full((n,), grey),
    }


def test_hsv_matches_colorsys_and_round_trips():
    x = torch.rand(3, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    x[0, :, 0, 0] = 0.3  # a grey pixel: hue and saturation 0
    hsv = rgb_to_hsv(x)
    for n, i, j in [(0, 0, 0), (1, 2, 3), (2, 4, 6), (0, 1, 5)]:
        want = colorsys.rgb_to_hsv(*x[n, :, i, j].tolist())
        assert hsv[n, :, i, j].tolist() == pytest.approx(want, abs=1e-5)
    assert torch.allclose(hsv_to_rgb(hsv), x, atol=1e-5)


def test_hue_rotates_primaries_and_leaves_grey():
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1
    assert torch.allclose(
        hue(red, torch.tensor([1 / 3])), torch.roll(red, 1, dims=1), atol=1e-5
    )  # red -> green
    assert torch.allclose(hue(red, torch.tensor([0.0])), red)
    grey = torch.full((1, 3, 2, 2), 0.4)
    assert torch.allclose(hue(grey, torch.tensor([0.25])), grey)


def test_full_crop_is_identity_and_flip_mirrors():
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(ViewAugment.apply(x, _params(2)), x, atol=1e-5)
    assert torch.allclose(ViewAugment.apply(x, _params(2, flip=True)), x.flip(3), atol=1e-5)


def test_quarter_crop_is_the_corner_upsampled():
    x = torch.rand(2, 3, 16, 16)
    out = ViewAugment.apply(x, _params(2, scale=0.25, u=(0.0, 0.0)))
    want = F.interpolate(x[..., :8, :8], size=(16, 16), mode="bilinear", align_corners=False)
    # the last output row and column blend in the pixel just outside the crop, where resizing a cut-out clamps
    assert torch.allclose(out[..., :15, :15], want[..., :15, :15], atol=1e-5)
    out = ViewAugment.apply(x, _params(2, scale=0.25, u=(1.0, 1.0)))  # bottom-right corner
    want = F.interpolate(x[..., 8:, 8:], size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(out[..., 1:, 1:], want[..., 1:, 1:], atol=1e-5)


def test_crop_aspect_ratio_and_clipping():
    theta = crop_theta(
        torch.tensor([0.5, 1.0]),
        torch.tensor([math.log(2), math.log(4 / 3)]),
        torch.zeros(2, 2),
        torch.tensor([False, False]),
    )
    w, h = theta[:, 0, 0], theta[:, 1, 1]
    assert w[0] / h[0] == pytest.approx(2.0) and (w[0] * h[0]).item() == pytest.approx(0.5)
    assert w[1] == pytest.approx(1.0) and h[1] < 1  # too wide for the image: clipped to its width


def test_jitter_and_grey_do_what_they_say():
    x = torch.rand(2, 3, 6, 6)
    off = ViewAugment.apply(x, _params(2, factors=(0.5, 1, 1)))  # jitter drawn but not applied
    assert torch.allclose(off, x, atol=1e-5)
    darker = ViewAugment.apply(x, _params(2, jitter=True, factors=(0.5, 1, 1)))
    assert torch.allclose(darker, x * 0.5, atol=1e-5)
    desat = ViewAugment.apply(x, _params(2, jitter=True, factors=(1, 1, 0)))
    assert torch.allclose(desat[:, 0], desat[:, 1], atol=1e-6) and torch.allclose(
        desat[:, 1], desat[:, 2], atol=1e-6
    )
    grey = ViewAugment.apply(x, _params(2, grey=True))
    want = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert all(torch.allclose(grey[:, c], want, atol=1e-5) for c in range(3))


def test_views_are_seeded_independent_and_in_range():
    aug = ViewAugment(MEAN, STD)
    x = (torch.rand(4, 3, 8, 8) - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    v1 = aug.views(x, torch.Generator().manual_seed(1), 3)
    v2 = aug.views(x, torch.Generator().manual_seed(1), 3)
    assert v1.shape == (3, 4, 3, 8, 8) and torch.equal(v1, v2)
    assert not torch.allclose(v1[0], v1[1]) and not torch.allclose(v1[0], x)
    pixels = v1.flatten(0, 1) * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_drawn_parameters_follow_the_probabilities():
    aug = ViewAugment(MEAN, STD, crop_scale=(0.3, 0.6), jitter_p=0.8, grey_p=0.2, hflip=False)
    p = aug.sample(4000, torch.Generator().manual_seed(0), "cpu")
    area = p["crop"][:, 0, 0].abs() * p["crop"][:, 1, 1]
    assert area.max() <= 0.6 + 1e-5 and area.min() >= 0.3 * 0.75 - 1e-5  # clipping can only shrink it
    assert (p["crop"][:, 0, 0] > 0).all()  # no flips when hflip is off
    assert 0.77 < p["jitter"].float().mean() < 0.83 and 0.17 < p["grey"].float().mean() < 0.23
    assert (
        p["factors"].min() >= 0.6 - 1e-6 and p["factors"].max() <= 1.4 + 1e-6 and p["hue"].abs().max() <= 0.1
    )


def test_greyscale_images_and_bad_arguments():
    aug = ViewAugment((0.5,), (0.25,))
    out = aug.views(torch.randn(3, 1, 8, 8), torch.Generator().manual_seed(0), 2)
    assert out.shape == (2, 3, 1, 8, 8) and torch.isfinite(out).all()
    for kw in ({"crop_scale": (0.0, 1.0)}, {"crop_scale": (0.8, 0.5)}, {"jitter_p": 1.5}, {"jitter": (0.4,)}):
        with pytest.raises(ValueError, match="ViewAugment"):
            ViewAugment(MEAN, STD, **kw)
