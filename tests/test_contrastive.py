"""NT-Xent against a direct computation; k-NN and linear evaluation on separable features."""
import math

import pytest
import torch
import torch.nn.functional as F

from gssl.contrastive import knn_predict, linear_probe, nt_xent


def _direct(views, t):
    """NT-Xent written out anchor by anchor, positive by positive."""
    v, n, _ = views.shape
    z = [F.normalize(views[a, i], dim=0) for a in range(v) for i in range(n)]
    total, count = 0.0, 0
    for p in range(v * n):
        for q in range(v * n):
            if p != q and p % n == q % n:
                num = math.exp(float(z[p] @ z[q]) / t)
                den = sum(math.exp(float(z[p] @ z[r]) / t) for r in range(v * n) if r != p)
                total += -math.log(num / den)
                count += 1
    return total / count


@pytest.mark.parametrize("v", [2, 3])
def test_nt_xent_matches_the_direct_computation(v):
    torch.manual_seed(0)
    views = torch.randn(v, 5, 8)
    assert nt_xent(views, 0.5).item() == pytest.approx(_direct(views, 0.5), rel=1e-5)


def test_nt_xent_is_low_for_aligned_views_and_needs_two():
    torch.manual_seed(0)
    z = torch.randn(16, 32)
    aligned = nt_xent(torch.stack([z, z + 0.01 * torch.randn_like(z)]), 0.1)
    random = nt_xent(torch.randn(2, 16, 32), 0.1)
    assert aligned < random and aligned < 0.1
    with pytest.raises(ValueError, match="at least 2 views"):
        nt_xent(torch.randn(1, 4, 8))


def _clusters(n_per=30, classes=4, dim=16, seed=0):
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 3  # shared by train and test
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per)
    return centres[y] + torch.randn(len(y), dim, generator=g), y


def test_knn_and_linear_probe_classify_separable_features():
    x, y = _clusters()
    xt, yt = _clusters(seed=1)
    knn = knn_predict(x, y, xt, 4, k=5)
    assert knn.shape == (len(yt), 4) and (knn.argmax(1) == yt).float().mean() > 0.95
    head = linear_probe(x, y, 4, epochs=30)
    assert (head(xt).argmax(1) == yt).float().mean() > 0.95
    # and they are not fooled into it: shuffled labels give chance
    ys = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    assert (knn_predict(x, ys, xt, 4, k=5).argmax(1) == yt).float().mean() < 0.6
