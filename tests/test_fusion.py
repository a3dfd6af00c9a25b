"""Batch fusion: shapes, where gradients flow (across samples of a group, never across groups), the
strength."""

import pytest
import torch

from gssl.methods.simclr.fusion import BatchFusion


def _fusion(**kw):
    torch.manual_seed(0)
    return BatchFusion(3, patch=4, dim=16, heads=2, **kw)


def test_shape_and_identity_at_the_start_of_training():
    f = _fusion()
    x = torch.randn(6, 3, 8, 12)
    assert f.progress.item() == 0 and torch.equal(f(x), x)  # alpha = 0: the batch passes untouched
    f.set_progress(0.5)
    y = f(x)
    assert y.shape == x.shape and not torch.allclose(y, x)
    f.set_progress(2.0)  # clamped
    assert f.progress.item() == 1.0 and f.alpha().item() == pytest.approx(1.0)
    assert "progress" not in f.state_dict()  # set by the loop, not saved


def test_strength_scales_the_fused_part_linearly():
    f = _fusion()
    x = torch.randn(4, 3, 8, 8)
    f.set_progress(0.25)
    d1 = f(x) - x
    f.set_progress(0.75)
    assert torch.allclose(f(x) - x, 3 * d1, atol=1e-5)


def test_samples_communicate_within_a_group_only():
    f = _fusion()
    f.groups = 2
    f.set_progress(1.0)
    x = torch.randn(8, 3, 8, 8, requires_grad=True)
    f(x)[0].sum().backward()
    moved = x.grad.abs().flatten(1).sum(1)
    assert (moved[1:4] > 0).all()  # the other samples of its group reach sample 0's output
    assert (moved[4:] == 0).all()  # the other group (the other view) never does
    for name, p in f.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_shapes_are_refused_with_the_reason():
    f = _fusion()
    with pytest.raises(ValueError, match="multiple of the patch size"):
        f(torch.randn(4, 3, 10, 8))
    f.groups = 3
    with pytest.raises(ValueError, match="groups"):
        f(torch.randn(4, 3, 8, 8))
    with pytest.raises(ValueError, match="divisible by heads"):
        BatchFusion(3, dim=10, heads=4)
