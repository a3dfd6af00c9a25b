"""Batched RandAugment: every operation on a known image does what it says, in shape and range."""

import pytest
import torch

from gssl.data import randaugment as ra


def _ramp(n=2, c=3, side=32, lo=0.2, hi=0.6):
    v = torch.linspace(lo, hi, side)
    return v.view(1, 1, 1, side).expand(n, c, side, side).clone()


@pytest.mark.parametrize("op", ra.OPS)
def test_every_op_keeps_shape_and_range_and_takes_per_image_magnitudes(op):
    x = torch.rand(4, 3, 16, 16)
    lo, hi = ra.RANGES[op]
    y = ra.apply(x, op, torch.linspace(lo, hi, 4))
    assert y.shape == x.shape and y.dtype == x.dtype and y.min() >= 0 and y.max() <= 1


def test_colour_ops_do_what_they_say():
    x = _ramp()
    assert torch.equal(ra.apply(x, "identity", 0), x)
    ac = ra.apply(x, "autocontrast", 0)
    assert (
        ac.min() == 0 and ac.max() == pytest.approx(1.0) and (ac.diff(dim=3) > 0).all()
    )  # stretched, order kept
    assert ra.apply(x, "brightness", 0.5).mean().item() == pytest.approx(0.5 * x.mean().item(), rel=1e-5)
    rgb = torch.rand(2, 3, 8, 8)
    grey = ra.apply(rgb, "color", 0.0)  # no colour left: channels equal
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    flat = ra.apply(rgb, "contrast", 0.0)  # no contrast left: one value per image
    assert torch.allclose(flat, flat.mean(dim=(1, 2, 3), keepdim=True).expand_as(flat), atol=1e-6)
    post = ra.apply(torch.rand(2, 3, 8, 8), "posterize", 4)  # 4 bits: multiples of 16
    assert torch.equal((post * 255).round() % 16, torch.zeros_like(post))
    sol = ra.apply(x, "solarize", 0.4)
    assert torch.allclose(sol, torch.where(x < 0.4, x, 1 - x))
    eq = ra.apply(x, "equalize", 0)  # a narrow range spread over the full one, order kept
    assert eq.min() == 0 and eq.max() == 1 and (eq.diff(dim=3) >= 0).all()


def test_sharpness_below_one_blurs_an_edge_and_keeps_the_border():
    x = torch.zeros(1, 1, 8, 8)
    x[..., 4:] = 1.0
    y = ra.apply(x, "sharpness", 0.05)
    assert 0 < y[0, 0, 3, 3] < 1 and 0 < y[0, 0, 3, 4] < 1  # the edge got soft
    assert torch.equal(y[..., 0, :], x[..., 0, :]) and torch.equal(y[..., :, 0], x[..., :, 0])


def test_geometric_ops_move_pixels_where_they_should():
    x = torch.zeros(1, 1, 32, 32)
    x[..., 10, 5] = 1.0
    t = ra.apply(x, "translate_x", 0.25)  # a quarter of the width to the right
    assert t[0, 0, 10, 13] == 1 and t.eq(1).sum() == 1
    t = ra.apply(x, "translate_y", -0.25)  # up
    assert t[0, 0, 2, 5] == 1
    assert ra.apply(x, "translate_x", 0.25)[0, 0, :, :8].eq(ra.FILL).all()  # uncovered area: fill
    dot = torch.zeros(1, 1, 33, 33)
    dot[..., 16, 26] = 1.0  # 10 px right of the centre
    r = ra.apply(dot, "rotate", 30.0)
    yy, xx = divmod(int(r[0, 0].argmax()), 33)
    assert abs(xx - 16 - 10 * 0.866) <= 1 and abs(abs(yy - 16) - 5) <= 1  # 30 degrees about the centre
    s = ra.apply(x, "shear_x", 0.3)
    assert s.eq(1).sum() == 1 and s[0, 0, 10].eq(1).sum() == 1  # a row stays a row under a horizontal shear


def test_cutout_fills_exactly_the_square():
    x = torch.rand(2, 3, 16, 16)
    y = ra.cutout(x, torch.tensor([4, 0]), torch.tensor([8, 8]), torch.tensor([8, 8]))
    assert y[0, :, 6:10, 6:10].eq(ra.FILL).all() and torch.equal(y[0, :, :6], x[0, :, :6])
    assert int((y[0] != x[0]).any(0).sum()) == 16 and torch.equal(y[1], x[1])


def test_randaugment_is_seeded_batched_and_varied():
    x = torch.rand(64, 3, 16, 16)
    aug = ra.RandAugment(n=2)
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    changed = (a != x).flatten(1).any(1)
    assert changed.float().mean() > 0.8  # nearly every image changed (identity twice and no cutout is rare)
    with pytest.raises(ValueError, match="unknown ops"):
        ra.RandAugment(ops=["warp"])
