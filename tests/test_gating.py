import math
from types import SimpleNamespace

import pytest
import torch

from gssl.gating import ALL_GATES, GATES, LearnedGate, ReferenceGate, build_gate, gate_entropy, gate_options

K = [16, 2, 6]  # lorot, flip, channel
CHANCE = torch.tensor([math.log(k) for k in K])


def test_reference_gate_gets_no_gradient_and_weights_batch_level():
    torch.manual_seed(0)
    gate = build_gate("reference", 64, 3)
    feat = torch.randn(32, 64, requires_grad=True)
    losses = torch.rand(32, 3, requires_grad=True)
    out = gate(feat, losses)
    expected = torch.softmax(gate.linear(feat).mean(0), 0)
    assert torch.allclose(out.weights, expected) and out.weights.sum().item() == pytest.approx(1.0)
    assert torch.allclose(out.pretext_loss, (expected * losses.mean(0)).sum())
    (out.pretext_loss + out.aux_loss).backward()
    assert all(p.grad is None for p in gate.parameters())  # it never learns
    assert feat.grad is None  # and does not touch the backbone (the code's .item())
    assert losses.grad is not None and out.aux_loss.item() == 0


def test_uniform_gate():
    losses = torch.rand(8, 3)
    out = build_gate("uniform", 64, 3)(torch.randn(8, 64), losses)
    assert torch.equal(out.weights, torch.ones(3))
    assert torch.allclose(out.pretext_loss, losses.mean(0).sum())


def test_registry_and_errors():
    assert set(GATES) == {"reference", "learned", "uniform"}
    with pytest.raises(ValueError, match="no pretext"):
        build_gate("none", 64, 3)
    with pytest.raises(ValueError, match="reference"):
        build_gate("moe", 64, 3)
    with pytest.raises(ValueError):
        build_gate("learned", 64, 3, tau=0.0)


def test_learned_gate_gradient_paths():
    """Only the gate learns from aux; the backbone sees the weights as constants."""
    gate = build_gate("learned", 64, 3, num_classes=K, tau=0.5, strength=1.0)
    assert isinstance(gate, LearnedGate)
    feat = torch.randn(16, 64, requires_grad=True)
    losses = (torch.rand(16, 3) * CHANCE).requires_grad_()
    out = gate(feat, losses)
    assert torch.allclose(out.weights, torch.full((3,), 1 / 3))  # zero init: uniform
    # pretext_loss: gradient to the losses (backbone/heads) only.
    g_loss = torch.autograd.grad(out.pretext_loss, [losses, *gate.parameters()], allow_unused=True)
    assert g_loss[0] is not None and all(g is None for g in g_loss[1:])
    # aux: gradient to the gate only, never to features or losses.
    out = gate(feat, losses)
    g_aux = torch.autograd.grad(out.aux_loss, [feat, losses, *gate.parameters()], allow_unused=True)
    assert g_aux[0] is None and g_aux[1] is None and g_aux[3].abs().sum() > 0


def toy_losses(f, w_star):
    """Three tasks: one near zero, one informative (loss depends on the sample), one at chance."""
    easy = torch.full((f.shape[0],), 0.01)
    informative = CHANCE[1] * (0.5 + 0.4 * torch.tanh(2 * f @ w_star))
    at_chance = torch.full((f.shape[0],), CHANCE[2].item())
    return torch.stack([easy, informative, at_chance], 1)


def train_toy(tau, steps=1500, per_sample=True, seed=0):
    # One thread: these ops are tiny, and on a busy 2-core machine a second OpenMP thread waiting
    # for its core costs a scheduler slice per op (seen: 40x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_toy(tau, steps, per_sample, seed)
    finally:
        torch.set_num_threads(threads)


def _train_toy(tau, steps, per_sample, seed):
    g = torch.Generator().manual_seed(seed)
    D, B = 16, 128
    w_star = torch.randn(D, generator=g) / math.sqrt(D)
    gate = LearnedGate(D, 3, num_classes=K, tau=tau, strength=1.0, per_sample=per_sample)
    opt = torch.optim.SGD(gate.parameters(), lr=1.0, momentum=0.9)
    entropies = []
    for _ in range(steps):
        f = torch.randn(B, D, generator=g)
        out = gate(f, toy_losses(f, w_star))
        opt.zero_grad()
        out.aux_loss.backward()
        opt.step()
        with torch.no_grad():
            entropies.append(gate_entropy(gate.gate_weights(f)).mean().item())
    f = torch.randn(4096, D, generator=g)
    with torch.no_grad():
        return gate, entropies, f, toy_losses(f, w_star), gate.gate_weights(f)


def test_learned_gate_does_not_collapse_on_toy_problem():
    tau = 0.5
    # Normalised losses lie in [0, 1] here (D = 1): the optimum's entropy is at least
    # log(1 + (T - 1) e^(-D / tau)) = log(1 + 2 e^-2) = 0.240 nats (uniform: log 3 = 1.099).
    bound = math.log(1 + 2 * math.exp(-1 / tau))
    gate, entropies, f, losses, G = train_toy(tau)
    assert min(entropies) > bound
    # ... while still moving: it up-weights the easy task, down-weights the one stuck at chance,
    # and tracks the informative task per sample (more weight where its loss is lower).
    mean = G.mean(0)
    assert mean[0] > 0.5 and mean[2] < 0.15 and gate.linear.weight.abs().sum() > 0.5
    corr = torch.corrcoef(torch.stack([G[:, 1], losses[:, 1]]))[0, 1]
    assert corr < -0.8
    # Close to its analytic optimum softmax(-l / tau) on average.
    optimum = torch.softmax(-(losses / CHANCE) / tau, dim=1)
    assert (G - optimum).abs().mean() < 0.08


def test_without_the_entropy_term_the_gate_collapses():
    _, entropies, _, _, G = train_toy(tau=1e-4, steps=600)
    assert entropies[-1] < 0.05 and G.mean(0)[0] > 0.99


def test_batch_level_learned_gate():
    _, entropies, _, _, G = train_toy(0.5, steps=600, per_sample=False)
    assert min(entropies) > math.log(1 + 2 * math.exp(-2)) and G.shape == (1, 3)
    assert G[0, 0] > G[0, 1] > G[0, 2]


def test_reference_gate_in_a_step_of_sgd_stays_put():
    gate = ReferenceGate(8, 2)
    before = [p.detach().clone() for p in gate.parameters()]
    opt = torch.optim.SGD(gate.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    for _ in range(3):
        out = gate(torch.randn(4, 8), torch.rand(4, 2, requires_grad=True))
        opt.zero_grad()
        (out.pretext_loss + out.aux_loss).backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, gate.parameters()))


@pytest.mark.slow
def test_learned_gate_is_stable_on_large_unnormalised_features():
    """Pooled ResNet features are large; at lr 0.1 the gate must not overshoot into a saturated
    softmax (seen before the unit-norm input: weights 1.000 / 0 / 0 with every task at chance)."""
    torch.manual_seed(0)
    gate = build_gate("learned", 64, 3, num_classes=K, tau=0.5)
    opt = torch.optim.SGD(gate.parameters(), lr=0.1, momentum=0.9)
    for _ in range(300):
        feat = 50 * torch.rand(128, 64)  # post-ReLU pooled features, large magnitude
        losses = CHANCE * (1 + 0.02 * torch.randn(128, 3))  # every task at chance level
        out = gate(feat, losses)
        opt.zero_grad()
        out.aux_loss.backward()
        opt.step()
    w = out.weights
    assert gate_entropy(w).item() > 1.05 and w.min().item() > 0.25  # uniform is the optimum here


@pytest.mark.parametrize("mode", sorted(ALL_GATES))
def test_each_gates_class_attributes_say_what_it_does(mode):
    """What the code around a gate reads from its class (gating.Gate) holds for the gate itself: its
    weights on the simplex or not (`on_simplex`), its parameters trained or never given a gradient
    (`trains`), and its own settings (`settings`) reach its constructor by name (gate_options)."""
    torch.manual_seed(0)
    cls = ALL_GATES[mode]
    options = gate_options(SimpleNamespace(gate=mode, **{key: 0.7 for key in cls.settings}))
    gate = build_gate(mode, 64, 3, num_classes=K, **(options or {}))
    for keyword in (options or {}).values():
        assert keyword == 0.7
    feat, losses = torch.randn(32, 64, requires_grad=True), torch.rand(32, 3, requires_grad=True) + 0.1
    if cls.needs_main_loss:
        out, _ = gate.combine(losses.sum(), losses.mean(0), losses.mean(0).detach(), [feat])
    else:
        out = gate(feat, losses)
    sums_to_one = out.weights.sum().item() == pytest.approx(1.0)
    assert sums_to_one == cls.on_simplex
    (out.pretext_loss + out.aux_loss).backward()
    params = list(gate.parameters())
    if params:
        assert any(p.grad is not None for p in params) == cls.trains
