import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gssl.losses import FocalLoss, LDAMLoss, build_loss, drw_weights, ldam_margins

CIFAR10_LT_001 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_ldam_margins_cifar10_lt():
    m = ldam_margins(CIFAR10_LT_001)
    assert m.dtype == torch.float32 and m.shape == (10,)
    assert m.min().item() == pytest.approx(0.158, abs=5e-4)
    assert m.max().item() == pytest.approx(0.5)
    assert m[0] == m.min() and m[-1] == m.max() and (m.diff() > 0).all()
    assert ldam_margins(CIFAR10_LT_001, max_m=0.3).max().item() == pytest.approx(0.3)


def test_drw_weights_cifar10_lt():
    w = drw_weights(CIFAR10_LT_001)
    assert w.min().item() == pytest.approx(0.051, abs=5e-4)
    assert w.max().item() == pytest.approx(3.99, abs=5e-3)
    assert w.sum().item() == pytest.approx(10.0, rel=1e-6)
    assert torch.allclose(drw_weights(CIFAR10_LT_001, beta=0.0), torch.ones(10))  # before the DRW epoch


def reference_ldam(x, target, counts, max_m=0.5, s=30.0, weight=None):
    """LDAM-DRW's formula written as in its code (numpy margins, one-hot matmul)."""
    m_list = 1.0 / np.sqrt(np.sqrt(np.asarray(counts, dtype=np.float64)))
    m_list = torch.tensor(m_list * (max_m / np.max(m_list)), dtype=torch.float32)
    index = F.one_hot(target, x.shape[1]).bool()
    batch_m = (m_list[None, :] @ index.float().T).view(-1, 1)
    output = torch.where(index, x - batch_m, x)
    return F.cross_entropy(s * output, target, weight=weight)


def test_ldam_matches_reference_and_switches_weight():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 10, generator=g) * 2 - 1  # cosines
    y = torch.randint(10, (64,), generator=g)
    loss = LDAMLoss(CIFAR10_LT_001)
    assert torch.allclose(loss(x, y), reference_ldam(x, y, CIFAR10_LT_001), atol=1e-5)
    w = drw_weights(CIFAR10_LT_001)
    loss.set_weight(w)
    assert torch.allclose(loss(x, y), reference_ldam(x, y, CIFAR10_LT_001, weight=w), atol=1e-5)
    loss.set_weight(None)
    assert torch.allclose(loss(x, y), reference_ldam(x, y, CIFAR10_LT_001), atol=1e-5)
    # bf16 logits are computed in float32.
    out = loss(x.bfloat16(), y)
    assert out.dtype == torch.float32 and torch.isfinite(out)


def test_ce_and_focal():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 10, generator=g)
    y = torch.randint(10, (32,), generator=g)
    ce = build_loss("ce")
    assert torch.allclose(ce(x, y), F.cross_entropy(x, y))
    w = drw_weights(CIFAR10_LT_001)
    ce.set_weight(w)
    assert torch.allclose(ce(x, y), F.cross_entropy(x, y, weight=w))
    assert torch.allclose(FocalLoss(gamma=0.0)(x, y), F.cross_entropy(x, y))
    focal = build_loss("focal", gamma=1.0)
    per = F.cross_entropy(x, y, reduction="none")
    assert torch.allclose(focal(x, y), ((1 - torch.exp(-per)) * per).mean())
    assert focal(x, y) < F.cross_entropy(x, y)


def test_build_loss_and_state_dict():
    ldam = build_loss("ldam", CIFAR10_LT_001, max_m=0.5, s=30.0)
    assert isinstance(ldam, LDAMLoss) and "margins" in ldam.state_dict()
    with pytest.raises(ValueError):
        build_loss("ldam")
    with pytest.raises(ValueError, match="valid"):
        build_loss("hinge")
    with pytest.raises(ValueError):
        ldam_margins([10, 0])
