"""The cosine head starts where LDAM-DRW's NormedLinear starts, and every module of the long-tailed
model is initialised as the reference's `_weights_init` (docs/design.md, "Fidelity to the reference
training"). The forward pass cannot see a cosine head's weight norm, but SGD can: the step on a class
direction scales as 1/||w||^2, so these tests look at the weights and at a few SGD steps, not at outputs.
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gssl.gating import ReferenceGate
from gssl.method import GatedSSL
from gssl.models import CosineLinear


def reference_normed_linear(in_features: int, out_features: int) -> torch.Tensor:
    """LDAM-DRW's NormedLinear init, written out here: [in, out], uniform(-1, 1), each column renormed."""
    return torch.empty(in_features, out_features).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)


def kurtosis(w: torch.Tensor) -> float:
    z = w.flatten().double()
    z = z - z.mean()
    return (z.pow(4).mean() / z.pow(2).mean() ** 2).item()


@pytest.mark.parametrize("shape", [(64, 10), (64, 16), (64, 2), (512, 200)])
def test_cosine_init_is_the_reference_recipe(shape):
    torch.manual_seed(3)
    w = CosineLinear(*shape).weight.detach()
    assert w.shape == (shape[1], shape[0])  # stored [out, in] like nn.Linear
    assert (w.norm(dim=1) - 1).abs().max() < 1e-6  # every class vector starts at unit norm
    torch.manual_seed(3)
    assert torch.equal(w, reference_normed_linear(*shape).t())  # same RNG state, same values


def test_cosine_init_entry_statistics_match_the_reference():
    # Independent draws (different seeds): entries of unit vectors whose direction comes from the
    # uniform cube. Kurtosis tells the cube's directions (entries near-uniform, ~1.8) from Gaussian ones (3).
    torch.manual_seed(0)
    ours = CosineLinear(64, 4096).weight.detach()
    torch.manual_seed(1)
    ref = reference_normed_linear(64, 4096)
    for stat in (lambda w: w.abs().mean().item(), lambda w: w.std().item(), kurtosis):
        assert stat(ours) == pytest.approx(stat(ref), rel=0.03)
    assert ours.abs().mean().item() == pytest.approx(0.5 / math.sqrt(64 / 3), rel=0.03)  # E|u| / E||u||


def _features(seed: int, counts=(200, 100, 50, 30, 20, 15, 12, 10, 8, 6), dim: int = 64):
    """Fixed long-tailed features: one random mean per class plus noise (a stand-in for a frozen backbone)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(len(counts), dim, generator=g)
    x = torch.cat([means[c] + 1.5 * torch.randn(n, dim, generator=g) for c, n in enumerate(counts)])
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return x, y


def _train_head(weight: torch.Tensor, x, y, steps: int = 10):
    """SGD as the reference (lr 0.1, momentum 0.9, weight decay 2e-4) on a cosine head with LDAM's s = 30."""
    head = CosineLinear(weight.shape[1], weight.shape[0])
    head.weight.data.copy_(weight)
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    for _ in range(steps):
        loss = F.cross_entropy(30 * head(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = head(x).argmax(1)
        balanced = torch.stack([(pred[y == c] == c).float().mean() for c in y.unique()]).mean().item()
        return F.cross_entropy(30 * head(x), y).item(), balanced


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unit_norm_init_learns_as_fast_as_the_reference(seed):
    x, y = _features(seed)
    torch.manual_seed(seed)
    unit = CosineLinear(64, 10).weight.detach().clone()
    # The same directions at the norms of raw uniform(-1, 1) rows (about 4.6): gssl's old init. Same
    # forward pass, so any difference below comes from the scale alone.
    raw = F.normalize(unit, dim=1) * torch.empty(10, 64).uniform_(-1, 1).norm(dim=1, keepdim=True)
    loss_unit, acc_unit = _train_head(unit, x, y)
    loss_raw, acc_raw = _train_head(raw, x, y)
    # Measured: balanced accuracy 0.96-0.98 against 0.35-0.43, loss 0.01-0.03 against 1.0-1.6.
    assert acc_unit > 0.9 and acc_unit - acc_raw > 0.3
    assert loss_unit < loss_raw / 10


def test_long_tailed_model_init_is_the_references():
    """ResNet-32 with cosine heads and the reference gate, module by module, against `_weights_init`:
    Kaiming-normal (fan_in, gain sqrt 2) on every conv and every nn.Linear weight, PyTorch's default
    BN (weight 1, bias 0, momentum 0.1, eps 1e-5), Linear biases left at PyTorch's default, and
    NormedLinear (not an nn.Linear, so untouched by `_weights_init`) at unit-norm columns."""
    torch.manual_seed(0)
    model = GatedSSL("resnet32", 10, tasks=["lorot", "flip", "channel"], gate="reference", head="cosine")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 31
    w = torch.cat([(m.weight.detach() / math.sqrt(2 / m.weight[0].numel())).flatten() for m in convs])
    assert w.mean().abs() < 0.01 and w.std().item() == pytest.approx(1, rel=0.02)  # N(0, 2 / fan_in)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()
            assert (m.momentum, m.eps, m.affine, m.track_running_stats) == (0.1, 1e-5, True, True)
    cosine = [model.classifier, *model.pretext.heads.values()]
    assert all(isinstance(h, CosineLinear) for h in cosine) and len(cosine) == 4
    for h in cosine:
        assert (h.weight.norm(dim=1) - 1).abs().max() < 1e-6
    assert isinstance(model.pretext.gate, ReferenceGate)
    gate = model.pretext.gate.linear
    assert gate.weight.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.35)  # 3 x 64 draws: loose
    assert gate.bias.abs().max() <= 1 / math.sqrt(64)  # nn.Linear's default bias, as the reference's
