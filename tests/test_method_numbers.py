"""The method's numbers written out by hand: the gates (learned, gradnorm, gcs, dwa), the losses (CE, LDAM,
focal, DRW weights), FixMatch's loss, pseudo-labels, EMA, StrongAugment and cycle, the metrics' shot
groups, the cosine schedule's end and the batched crop / flip / normalise, each against numbers computed
here in plain Python or numpy, at the boundaries where an off-by-one would change them. Fast: these are
the tests the mutation run (docs/testing.md) relies on beside the slower behavioural ones."""

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gssl import gating, metrics
from gssl.attacks import PixelSpace
from gssl.config import parse_set
from gssl.data import crop_at, cycle, normalize, random_crop, random_hflip
from gssl.data.randaugment import FILL, RandAugment
from gssl.ema import EMA
from gssl.gating import (
    DynamicWeightAverageGate,
    GradientSimilarityGate,
    GradNormGate,
    LearnedGate,
    build_gate,
    flat_gradient,
    gate_entropy,
    gate_options,
)
from gssl.losses import CrossEntropyLoss, FocalLoss, LDAMLoss, build_loss, drw_weights, ldam_margins
from gssl.method import PretextTerm
from gssl.methods.fixmatch.semisup import StrongAugment, fixmatch_loss
from gssl.presets import resolve
from gssl.schedule import lr_at

CIFAR10_LT_001 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


pytestmark = pytest.mark.usefixtures("one_thread")


def softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def cross_entropy(row, label):
    m = max(row)
    return m + math.log(sum(math.exp(v - m) for v in row)) - row[label]


def entropy(p):
    return -sum(v * math.log(v) for v in p)


# ---------------------------------------------------------------- gates


def test_gate_entropy_is_taken_along_the_last_dim_of_any_shape():
    """A 1-D weight vector (the logged batch-mean weights) has one entropy; a [B, T] table one per row."""
    assert gate_entropy(torch.tensor([0.5, 0.5])).item() == pytest.approx(math.log(2))
    assert gate_entropy(torch.tensor([0.25] * 4)).item() == pytest.approx(math.log(4))
    rows = gate_entropy(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    assert rows.tolist() == pytest.approx([0.0, math.log(2)])


def _learned_by_hand(W, c, feats, losses, chance, tau, strength):
    """(G [B][T], aux, pretext) of the learned gate, per sample, written out."""
    G = []
    for f in feats:
        norm = math.sqrt(sum(v * v for v in f))
        unit = [v / norm for v in f]
        G.append(softmax([sum(w * u for w, u in zip(W[n], unit)) + c[n] for n in range(len(c))]))
    aux = sum(
        sum(g * loss / k for g, loss, k in zip(G[b], losses[b], chance)) - tau * entropy(G[b])
        for b in range(len(G))
    )
    pretext = sum(sum(g * loss for g, loss in zip(G[b], losses[b])) for b in range(len(G)))
    return G, strength * aux / len(G), pretext / len(G)


W3 = [[1.0, -2.0], [0.5, 0.5], [-1.0, 0.0]]
C3 = [0.1, -0.2, 0.3]
FEATS = [[3.0, 4.0], [2.0, 0.0]]  # norms 5 and 2: each row is scaled by its own norm
LOSSES = [[2.0, 0.3, 1.2], [0.5, 0.9, 1.7]]


def _set_linear(gate, W, c):
    with torch.no_grad():
        gate.linear.weight.copy_(torch.tensor(W))
        gate.linear.bias.copy_(torch.tensor(c))


def test_learned_gate_weights_and_losses_per_sample_on_unit_norm_features():
    """G_b = softmax(W f_b / |f_b| + c), aux = strength mean_b [sum_n G_bn L_bn / log K_n - tau H(G_b)],
    pretext = mean_b sum_n G_bn L_bn, logged weights mean_b G_b."""
    K = [16, 2, 6]
    gate = LearnedGate(2, 3, num_classes=K, tau=0.3, strength=2.0)
    _set_linear(gate, W3, C3)
    assert gate.chance.tolist() == pytest.approx([math.log(k) for k in K])
    out = gate(torch.tensor(FEATS), torch.tensor(LOSSES))
    G, aux, pretext = _learned_by_hand(W3, C3, FEATS, LOSSES, [math.log(k) for k in K], 0.3, 2.0)
    assert gate.gate_weights(torch.tensor(FEATS)).tolist() == [pytest.approx(row, rel=1e-6) for row in G]
    assert out.aux_loss.item() == pytest.approx(aux, rel=1e-6)
    assert out.pretext_loss.item() == pytest.approx(pretext, rel=1e-6)
    assert out.weights.tolist() == pytest.approx([(a + b) / 2 for a, b in zip(*G)], rel=1e-6)


def test_learned_gate_defaults_are_tau_half_strength_one_per_sample_and_chance_one():
    """Every run builds the gate with these defaults (only tau comes from the config): without num_classes
    every task's chance level is 1."""
    gate = LearnedGate(2, 3)
    assert (gate.tau, gate.strength, gate.per_sample) == (0.5, 1.0, True)
    assert gate.chance.tolist() == [1.0, 1.0, 1.0]
    _set_linear(gate, W3, C3)
    out = gate(torch.tensor(FEATS), torch.tensor(LOSSES))
    G, aux, pretext = _learned_by_hand(W3, C3, FEATS, LOSSES, [1.0, 1.0, 1.0], 0.5, 1.0)
    assert gate.gate_weights(torch.tensor(FEATS)).shape == (2, 3)
    assert out.aux_loss.item() == pytest.approx(aux, rel=1e-6)
    assert out.pretext_loss.item() == pytest.approx(pretext, rel=1e-6)


def test_batch_level_learned_gate_gates_the_batch_mean():
    """per_sample=False: one softmax of the batch-mean logits, weighing the batch-mean losses."""
    gate = LearnedGate(2, 3, tau=0.5, per_sample=False)
    _set_linear(gate, W3, C3)
    units = [[v / math.sqrt(sum(u * u for u in f)) for v in f] for f in FEATS]
    logits = [sum(sum(w * u for w, u in zip(W3[n], unit)) + C3[n] for unit in units) / 2 for n in range(3)]
    G = softmax(logits)
    mean_losses = [(a + b) / 2 for a, b in zip(*LOSSES)]
    out = gate(torch.tensor(FEATS), torch.tensor(LOSSES))
    assert out.weights.tolist() == pytest.approx(G, rel=1e-6)
    assert out.pretext_loss.item() == pytest.approx(
        sum(g * loss for g, loss in zip(G, mean_losses)), rel=1e-6
    )
    aux = sum(g * loss for g, loss in zip(G, mean_losses)) - 0.5 * entropy(G)
    assert out.aux_loss.item() == pytest.approx(aux, rel=1e-6)


def test_learned_gate_errors_say_what_is_wrong():
    with pytest.raises(ValueError) as e:
        LearnedGate(4, 3, tau=0.0)
    assert str(e.value) == "tau must be > 0 (tau = 0 is the collapsing gate)"
    with pytest.raises(ValueError) as e:
        LearnedGate(4, 3, num_classes=[16, 2])
    assert str(e.value) == "num_classes needs one entry per task"


def _linear_task_losses(feat, scales):
    """losses[:, n] = scales[n] * feat[:, n]: d mean_b L_n / d f is scales[n] / B on column n, so the
    gradient norm is |scales[n]| / sqrt(B)."""
    return torch.stack([s * feat[:, n] for n, s in enumerate(scales)], 1)


def _gradnorm_by_hand(weights, norms, losses, initial, alpha):
    G = [w * g for w, g in zip(weights, norms)]
    ratio = [loss / i for loss, i in zip(losses, initial)]
    rate = [r / (sum(ratio) / len(ratio)) for r in ratio]
    target = [sum(G) / len(G) * r**alpha for r in rate]
    return sum(abs(g - t) for g, t in zip(G, target))


def test_gradnorm_first_step_targets_the_mean_gradient_norm():
    """Before the first after_step L_n(0) is this step's loss: every ratio is 1, every target the mean
    norm. B = 4, losses 2 f_0 and 6 f_1: norms 1 and 3, gap |1 - 2| + |3 - 2| = 2."""
    gate = GradNormGate(2, 2, alpha=1.5)
    feat = torch.tensor([[0.5, 0.25], [0.5, 0.75], [0.25, 0.5], [0.75, 0.5]], requires_grad=True)
    out = gate(feat, _linear_task_losses(feat, [2.0, 6.0]))  # batch-mean losses 1.0 and 3.0
    assert out.aux_loss.item() == pytest.approx(2.0, rel=1e-6)
    assert out.pretext_loss.item() == pytest.approx(4.0, rel=1e-6)
    assert gate.last_losses.tolist() == pytest.approx([1.0, 3.0])


def test_gradnorm_later_steps_use_the_relative_inverse_training_rate():
    """L~_n = L_n / L_n(0) with L_n(0) below 1 (a loss can start small), r_n = L~_n / mean L~, target
    mean(G) r_n^alpha; G_n = w_n ||d L_n / d f||."""
    gate = GradNormGate(2, 2, alpha=1.5)
    with torch.no_grad():
        gate.initial_losses.copy_(torch.tensor([0.25, 2.0]))
        gate.has_initial.fill_(1.0)
        gate.task_weight.copy_(torch.tensor([0.5, 1.5]))
    feat = torch.tensor([[0.5, 0.25], [0.5, 0.75], [0.25, 0.5], [0.75, 0.5]], requires_grad=True)
    out = gate(feat, _linear_task_losses(feat, [2.0, 6.0]))  # losses 1.0, 3.0; norms 1, 3
    want = _gradnorm_by_hand([0.5, 1.5], [1.0, 3.0], [1.0, 3.0], [0.25, 2.0], 1.5)
    assert out.aux_loss.item() == pytest.approx(want, rel=1e-6)
    assert out.pretext_loss.item() == pytest.approx(0.5 * 1.0 + 1.5 * 3.0, rel=1e-6)
    assert out.weights.tolist() == [0.5, 1.5]


def test_gradnorm_norms_over_two_ranks_are_the_global_batchs(monkeypatch):
    """Two ranks holding the same rows: the global loss is the ranks' mean, so its feature gradient on each
    rank's rows is half of the local one; the global squared norm is 2 x (s / 4) = s / 2."""
    gate = GradNormGate(2, 2)
    feat = torch.tensor([[0.5, 0.25], [0.5, 0.75], [0.25, 0.5], [0.75, 0.5]], requires_grad=True)
    task_losses = _linear_task_losses(feat, [2.0, 6.0]).mean(0)
    monkeypatch.setattr(gating, "sum_over_ranks", lambda t: (2 * t, 2))
    norms, losses = gate.feature_gradient_norms(feat, task_losses)
    assert norms.tolist() == pytest.approx([1 / math.sqrt(2), 3 / math.sqrt(2)], rel=1e-6)
    assert losses.tolist() == pytest.approx([1.0, 3.0], rel=1e-6)
    monkeypatch.undo()
    norms, losses = gate.feature_gradient_norms(feat, task_losses)  # one process
    assert norms.tolist() == pytest.approx([1.0, 3.0], rel=1e-6)


def test_gradnorm_without_a_graph_has_nothing_to_balance():
    """A loss evaluated under no_grad, or on a feature that needs no gradient: zero norms, zero gap, and
    the weighted losses still."""
    gate = GradNormGate(2, 2)
    feat = torch.tensor([[0.5, 0.25], [0.5, 0.75]])
    out = gate(feat, _linear_task_losses(feat, [2.0, 6.0]))
    assert out.aux_loss.item() == 0.0 and out.pretext_loss.item() == pytest.approx(1.0 + 3.0)
    with torch.no_grad():
        feat = feat.clone().requires_grad_()
        out = gate(feat, _linear_task_losses(feat, [2.0, 6.0]))
    assert out.aux_loss.item() == 0.0 and out.pretext_loss.item() == pytest.approx(4.0)


def test_gradnorm_default_alpha_and_error():
    assert GradNormGate(2, 2).alpha == 1.5  # the paper's
    with pytest.raises(ValueError) as e:
        GradNormGate(2, 2, alpha=-1.0)
    assert str(e.value) == "gradnorm alpha must be >= 0, got -1.0"


def _gcs_setup():
    """Shared p (3 numbers) and an unused shared q; main loss p_0 (gradient e_0); tasks: p_1 (orthogonal,
    cos exactly 0), 2 p_0 (cos 1), -p_0 + p_2 (cos -1/sqrt 2)."""
    p = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    q = torch.tensor([5.0, 7.0], requires_grad=True)
    main = p[0] * 1.0
    losses = torch.stack([p[1] * 1.0, 2 * p[0], p[2] - p[0]])
    return p, q, main, losses


@pytest.mark.parametrize("weighted", [False, True])
def test_gcs_keeps_only_tasks_whose_gradient_points_with_the_main_ones(weighted):
    """Algorithm 1: 1[cos > 0] (an orthogonal task, cos = 0, is off); Algorithm 2: max(0, cos). A shared
    parameter no loss reaches counts as a zero gradient."""
    p, q, main, losses = _gcs_setup()
    gate = GradientSimilarityGate(4, 3, weighted=weighted)
    gated, cosines = gate.combine(main, losses, losses.detach() + 0.0, [p, q])
    assert cosines.tolist() == pytest.approx([0.0, 1.0, -1 / math.sqrt(2)], abs=1e-7)
    assert gated.weights.tolist() == [0.0, 1.0, 0.0]
    assert gated.pretext_loss.item() == pytest.approx(2.0 + 2.0 + 2.0)  # the value: sum L_n
    (grad_p,) = torch.autograd.grad(gated.pretext_loss, [p])
    assert grad_p.tolist() == [2.0, 0.0, 0.0]  # only task 1 reaches the shared parameters


def test_flat_gradient_fills_zeros_for_a_parameter_the_loss_does_not_reach():
    p, q, main, _ = _gcs_setup()
    assert flat_gradient(3 * main, [p, q]).tolist() == [3.0, 0.0, 0.0, 0.0, 0.0]


def test_gcs_without_a_graph_keeps_every_task():
    """No gradient to compare (no_grad, or a main loss that needs none): every task at weight 1."""
    gate = GradientSimilarityGate(4, 3)
    p, q, _, _ = _gcs_setup()
    with torch.no_grad():
        main, losses = p[0] * 1.0, torch.stack([p[1], 2 * p[0], p[2] - p[0]])
        gated, cosines = gate.combine(main, losses, losses, [p, q])
    assert cosines.tolist() == [1.0, 1.0, 1.0] and gated.weights.tolist() == [1.0, 1.0, 1.0]
    _, _, _, losses = _gcs_setup()
    gated, cosines = gate.combine(torch.tensor(1.0), losses, losses.detach(), [p, q])
    assert cosines.tolist() == [1.0, 1.0, 1.0]
    gated, cosines = gate.combine(p[0] * 1.0, losses, losses.detach(), [])
    assert cosines.tolist() == [1.0, 1.0, 1.0]


def test_gcs_forward_says_to_call_combine():
    with pytest.raises(RuntimeError) as e:
        GradientSimilarityGate(4, 2)(torch.randn(2, 4), torch.rand(2, 2))
    assert str(e.value) == "the gcs gate weighs the tasks against the main loss: call combine() with it"


def test_dwa_weighs_the_losses_with_the_epochs_weights():
    gate = DynamicWeightAverageGate(4, 2)
    with torch.no_grad():
        gate.task_weight.copy_(torch.tensor([0.5, 1.5]))
    out = gate(torch.zeros(2, 4), torch.tensor([[1.0, 3.0], [2.0, 5.0]]))  # batch means 1.5, 4.0
    assert out.pretext_loss.item() == pytest.approx(0.5 * 1.5 + 1.5 * 4.0)
    assert out.weights.tolist() == [0.5, 1.5] and out.aux_loss.item() == 0.0


def test_dwa_temperature_default_and_bounds():
    """T defaults to the paper's 2; any T > 0 is valid (0.5 too), T = 0 is not."""
    assert DynamicWeightAverageGate(4, 2).temperature == 2.0
    gate = DynamicWeightAverageGate(4, 2, temperature=0.5)
    with torch.no_grad():
        gate.epoch_means.copy_(torch.tensor([[1.0, 1.0], [0.5, 1.0]]))
        gate.epochs_seen.fill_(2)
    rates = [0.5 / 0.5, 1.0 / 0.5]
    assert gate.weights_from_history().tolist() == pytest.approx([2 * p for p in softmax(rates)], rel=1e-6)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError) as e:
            DynamicWeightAverageGate(4, 2, temperature=bad)
        assert str(e.value) == f"dwa temperature must be > 0, got {bad}"


def test_build_gate_errors_name_the_valid_modes():
    with pytest.raises(ValueError) as e:
        build_gate("none", 4, 2)
    assert str(e.value) == "gate 'none' means no pretext tasks: build no Pretext and no gate"
    with pytest.raises(ValueError) as e:
        build_gate("moe", 4, 2)
    assert (
        str(e.value)
        == "unknown gate 'moe'; valid: reference, learned, uniform, uncertainty, gradnorm, gcs, dwa, none"
    )


def test_gate_options_pass_each_gates_own_setting():
    ssl = SimpleNamespace(gate_tau=0.25, gradnorm_alpha=0.75, gcs_weighted=True, dwa_temperature=3.0)
    options = {
        g: gate_options(SimpleNamespace(gate=g, **vars(ssl))) for g in ["learned", "gradnorm", "gcs", "dwa"]
    }
    assert options == {
        "learned": {"tau": 0.25},
        "gradnorm": {"alpha": 0.75},
        "gcs": {"weighted": True},
        "dwa": {"temperature": 3.0},
    }
    assert gate_options(SimpleNamespace(gate="uniform", **vars(ssl))) is None
    assert build_gate("learned", 4, 2, **options["learned"]).tau == 0.25


# ---------------------------------------------------------------- losses


def test_ldam_margins_are_the_float64_formula_exactly():
    counts = np.asarray(CIFAR10_LT_001, dtype=np.float64)
    m = counts**-0.25
    want = torch.from_numpy(m * (0.5 / m.max())).float()
    assert torch.equal(ldam_margins(CIFAR10_LT_001), want)


def test_drw_weights_are_the_float64_formula():
    """(1 - beta) / (1 - beta^n_j), normalised to sum to C, beta = 0.9999 in double precision."""
    counts = np.asarray(CIFAR10_LT_001, dtype=np.float64)
    w = (1 - 0.9999) / (1 - 0.9999**counts)
    want = w / w.sum() * len(counts)
    assert drw_weights(CIFAR10_LT_001).tolist() == pytest.approx(want.tolist(), rel=1e-6)


def test_a_class_with_one_image_is_a_positive_count():
    assert ldam_margins([16, 1]).tolist() == pytest.approx([0.25, 0.5])
    for bad in ([10, 0], [[1, 2]], [3, -1]):
        with pytest.raises(ValueError) as e:
            ldam_margins(bad)
        assert str(e.value) == "class_counts must be a 1-D list of positive counts"


X_LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0], [1.0, 1.0, -2.0]])
Y_TARGET = torch.tensor([0, 2, 1, 2])
W_CLASS = [0.5, 2.0, 1.0]


def _weighted_ce(weight=None):
    w = weight or [1.0, 1.0, 1.0]
    ce = [w[y] * cross_entropy(row, y) for row, y in zip(X_LOGITS.tolist(), Y_TARGET.tolist())]
    return ce, sum(ce) / sum(w[y] for y in Y_TARGET.tolist())


def test_cross_entropy_with_a_weight_is_the_weighted_mean():
    _, want = _weighted_ce(W_CLASS)
    assert CrossEntropyLoss(torch.tensor(W_CLASS))(X_LOGITS, Y_TARGET).item() == pytest.approx(want, rel=1e-6)
    assert build_loss("ce", weight=torch.tensor(W_CLASS))(X_LOGITS, Y_TARGET).item() == pytest.approx(
        want, rel=1e-6
    )


def test_focal_loss_default_gamma_is_one_and_its_weight_applies_per_sample():
    """LDAM-DRW's focal: (1 - exp(-CE_i))^gamma CE_i with CE_i the weighted per-sample cross-entropy."""
    ce, _ = _weighted_ce()
    want = sum((1 - math.exp(-c)) * c for c in ce) / len(ce)
    assert FocalLoss()(X_LOGITS, Y_TARGET).item() == pytest.approx(want, rel=1e-6)
    wce, _ = _weighted_ce(W_CLASS)
    want_w = sum((1 - math.exp(-c)) * c for c in wce) / len(wce)
    assert FocalLoss(torch.tensor(W_CLASS))(X_LOGITS, Y_TARGET).item() == pytest.approx(want_w, rel=1e-6)
    want_2 = sum((1 - math.exp(-c)) ** 2 * c for c in ce) / len(ce)
    assert FocalLoss(gamma=2.0)(X_LOGITS, Y_TARGET).item() == pytest.approx(want_2, rel=1e-6)
    focal = build_loss("focal", [100, 10, 1])  # weight starts as ones
    assert focal(X_LOGITS, Y_TARGET).item() == pytest.approx(want, rel=1e-6)
    focal.set_weight(torch.tensor(W_CLASS))
    assert focal(X_LOGITS, Y_TARGET).item() == pytest.approx(want_w, rel=1e-6)
    focal.set_weight(None)  # back to ones, not any other constant
    assert focal.weight.tolist() == [1.0, 1.0, 1.0]
    assert focal(X_LOGITS, Y_TARGET).item() == pytest.approx(want, rel=1e-6)


def test_set_weight_on_an_unweighted_loss():
    """None stays unweighted; a float64 weight is stored as float32 (the logits' dtype)."""
    ce = CrossEntropyLoss()
    ce.set_weight(None)
    assert ce.weight is None
    _, want = _weighted_ce()
    assert ce(X_LOGITS, Y_TARGET).item() == pytest.approx(want, rel=1e-6)
    ce.set_weight(torch.tensor(W_CLASS, dtype=torch.float64))
    assert ce.weight.dtype == torch.float32 and ce.weight.tolist() == W_CLASS
    assert ce(X_LOGITS, Y_TARGET).item() == pytest.approx(_weighted_ce(W_CLASS)[1], rel=1e-6)


def test_build_loss_with_class_counts_starts_uniform_and_switches_in_place():
    ce = build_loss("ce", [100, 10, 1])
    assert ce.weight.tolist() == [1.0, 1.0, 1.0]
    buffer = ce.weight
    ce.set_weight(W_CLASS)
    assert ce.weight is buffer and buffer.tolist() == W_CLASS  # copied into the same tensor
    assert ce(X_LOGITS, Y_TARGET).item() == pytest.approx(_weighted_ce(W_CLASS)[1], rel=1e-6)
    given = build_loss("ce", [100, 10, 1], weight=torch.tensor(W_CLASS))  # a weight given is kept
    assert given.weight.tolist() == W_CLASS


def test_ldam_takes_its_settings_and_weight():
    """m_y = max_m (n_min / n_y)^(1/4); logits s (x - m_y on the true class), weighted CE."""
    counts = [16, 1, 81]
    margins = [0.3 * (1 / 16) ** 0.25, 0.3, 0.3 * (1 / 81) ** 0.25]
    x = X_LOGITS / 4
    rows = [[s * 10.0 for s in row] for row in x.tolist()]
    for row, y in zip(rows, Y_TARGET.tolist()):
        row[y] -= 10.0 * margins[y]
    ce = [W_CLASS[y] * cross_entropy(row, y) for row, y in zip(rows, Y_TARGET.tolist())]
    want = sum(ce) / sum(W_CLASS[y] for y in Y_TARGET.tolist())
    for loss in (
        LDAMLoss(counts, max_m=0.3, s=10.0, weight=torch.tensor(W_CLASS)),
        build_loss("ldam", counts, max_m=0.3, s=10.0, weight=torch.tensor(W_CLASS)),
    ):
        assert loss.margins.tolist() == pytest.approx(margins, rel=1e-6)
        assert loss(x, Y_TARGET).item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError) as e:
        build_loss("ldam")
    assert str(e.value) == "LDAM needs class_counts"


# ---------------------------------------------------------------- FixMatch


class _FixedModel:
    """train_forward returns fixed logits for [labelled, weak, strong] and a pretext term of 0.25."""

    def __init__(self, logits):
        self.logits = logits

    def train_forward(self, x, params):
        assert x.shape[0] == self.logits.shape[0]
        return self.logits, PretextTerm(torch.tensor(0.25)), {}


def _fixmatch_logits():
    confident = math.log(0.95 / 0.025)  # softmax (0.95, 0.025, 0.025) of [c, 0, 0]
    medium = math.log(0.6 / 0.2)  # (0.6, 0.2, 0.2)
    return [
        [2.0, 0.0, 0.0],  # labelled, y 0: right
        [0.0, 0.5, 1.0],  # labelled, y 2: right
        [0.0, 1.0, 0.5],  # labelled, y 2: wrong (predicts 1)
        [0.0, confident, 0.0],  # weak: class 1 at 0.95
        [0.0, 0.0, medium],  # weak: class 2 at 0.6
        [0.1, 0.0, 0.0],  # weak: unsure (about 0.36)
        [0.3, 1.0, -0.5],  # strong views
        [1.0, 0.0, 2.0],
        [0.0, 0.0, 0.0],
    ]


@pytest.mark.parametrize("threshold,mask", [(0.9, [1, 0, 0]), (0.5, [1, 1, 0])])
def test_fixmatch_loss_numbers(threshold, mask):
    """L = CE(labelled) + lambda_u sum_i mask_i CE(strong_i, pseudo_i) / u + pretext; pseudo-label accuracy
    over the confident ones only; yu_true = (1, 0, 2): the first pseudo-label is right, the second wrong."""
    rows = _fixmatch_logits()
    model = _FixedModel(torch.tensor(rows))
    yl, yu_true = torch.tensor([0, 2, 2]), torch.tensor([1, 0, 2])
    xl, xu = torch.zeros(3, 1), torch.zeros(3, 1)
    total, stats = fixmatch_loss(model, xl, yl, xu, xu, yu_true, F.cross_entropy, {}, threshold, 2.0)
    lx = sum(cross_entropy(rows[i], y) for i, y in enumerate([0, 2, 2])) / 3
    pseudo = [1, 2, 0]
    lu = sum(m * cross_entropy(rows[6 + i], pseudo[i]) for i, m in enumerate(mask)) / 3
    assert set(stats) == {"cls_loss", "unlabeled_loss", "loss", "correct", "mask_rate", "pseudo_label_acc"}
    assert stats["cls_loss"].item() == pytest.approx(lx, rel=1e-6)
    assert stats["unlabeled_loss"].item() == pytest.approx(lu, rel=1e-6)
    assert total.item() == pytest.approx(lx + 2.0 * lu + 0.25, rel=1e-6)
    assert stats["loss"].item() == pytest.approx(lx + 2.0 * lu + 0.25, rel=1e-6)
    assert stats["correct"].item() == 2
    assert stats["mask_rate"].item() == pytest.approx(sum(mask) / 3)
    assert stats["pseudo_label_acc"].item() == pytest.approx(1 / sum(mask))


def test_ema_load_state_dict_is_strict_and_copies_by_default():
    torch.manual_seed(0)
    ema = EMA(torch.nn.Linear(3, 2), 0.9)
    state = {k: v.clone() + 1.0 for k, v in ema.state_dict().items()}
    ema.load_state_dict(state)
    assert torch.equal(ema.module.weight, state["module.weight"])
    state["module.weight"].add_(5.0)  # a copy, not the state's tensor
    assert not torch.equal(ema.module.weight, state["module.weight"])
    with pytest.raises(RuntimeError, match="Unexpected key"):
        ema.load_state_dict({**state, "module.extra": torch.zeros(1)})
    result = ema.load_state_dict({**state, "module.extra": torch.zeros(1)}, strict=False)
    assert result.unexpected_keys == ["module.extra"]
    ema.load_state_dict(state, assign=True)  # assign: the module takes the state's tensors themselves
    assert ema.module.weight.data_ptr() == state["module.weight"].data_ptr()


# ---------------------------------------------------------------- StrongAugment, cycle


def _normalised_batch(seed=0, n=4, size=8):
    g = torch.Generator().manual_seed(seed)
    return normalize(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g), MEAN, STD)


def test_strong_augment_with_nothing_to_do_is_the_identity():
    """n = 0 operations and no Cutout: to pixels and back changes nothing in the data's range."""
    x = _normalised_batch()
    out = StrongAugment(MEAN, STD, "cpu", n=0, cutout=0.0)(x, torch.Generator().manual_seed(1))
    assert torch.allclose(out, x, atol=1e-5)


def test_strong_augment_cutout_fills_with_grey_in_pixel_space():
    """n = 0 and Cutout only: every changed pixel is FILL (0.5) in pixels, (0.5 - mean) / std normalised."""
    x = _normalised_batch(n=16)
    out = StrongAugment(MEAN, STD, "cpu", n=0, cutout=0.5)(x, torch.Generator().manual_seed(1))
    changed = (out - x).abs() > 1e-4
    assert changed.any()
    fill = ((FILL - torch.tensor(MEAN)) / torch.tensor(STD)).view(1, 3, 1, 1).expand_as(out)
    assert torch.allclose(out[changed], fill[changed], atol=1e-5)
    assert torch.allclose(out[~changed], x[~changed], atol=1e-5)


def test_strong_augment_defaults_are_two_operations_and_cutout_half():
    """FixMatch builds it with the defaults: RandAugment(n=2, cutout=0.5) between PixelSpace's maps, drawn
    from the generator it is given."""
    x = _normalised_batch(n=8)
    out = StrongAugment(MEAN, STD, "cpu")(x, torch.Generator().manual_seed(3))
    space = PixelSpace(MEAN, STD)
    want = space.to_model(RandAugment(n=2, cutout=0.5)(space.to_pixels(x), torch.Generator().manual_seed(3)))
    assert torch.allclose(out, want, atol=1e-6)
    three = space.to_model(RandAugment(n=3, cutout=0.5)(space.to_pixels(x), torch.Generator().manual_seed(3)))
    assert not torch.allclose(out, three, atol=1e-3)  # the comparison can tell the operation count


class _Loader:
    def __init__(self, n):
        self.n, self.epochs = n, []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(range(self.n))


def test_cycle_restarts_the_loader_with_a_seeded_epoch_per_pass():
    loader = _Loader(3)
    got = list(itertools.islice(cycle(loader, 10, 2), 20))
    assert got == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert loader.epochs == [200_006, 200_007, 200_008, 200_009]


def test_cycle_stops_at_exactly_the_steps_asked():
    loader = _Loader(3)
    assert list(itertools.islice(cycle(loader, 3, 0), 10)) == [0, 1, 2] and loader.epochs == [0]
    loader = _Loader(3)
    assert list(itertools.islice(cycle(loader, 0, 5), 10)) == [] and loader.epochs == []
    loader = _Loader(4)
    assert list(itertools.islice(cycle(loader, 2, 1), 10)) == [0, 1] and loader.epochs == [100_003]


# ---------------------------------------------------------------- metrics


def test_shot_groups_at_exactly_100_and_20_training_images():
    """Many: more than 100; medium: 20 to 100 inclusive; few: fewer than 20. Classes 4 and 5 have no test
    image: no per-class accuracy, and they count in no group."""
    counts = [101, 100, 20, 19, 500, 5]
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
    right = {0, 1, 2, 4}  # class 0: 2/2, class 1: 1/2, class 2: 1/4, class 3: 0/4
    logits = torch.zeros(12, 6)
    for row, y in enumerate(labels.tolist()):
        if row in right:
            logits[row, y] = 10.0
        else:
            logits[row, (y + 1) % 6] = 10.0
            logits[row, y] = -10.0 if row == 11 else 5.0  # row 11: its class ranked last (misses top 5)
    rep = metrics.report(logits, labels, counts)
    assert rep["per_class_acc"] == [100.0, 50.0, 25.0, 0.0, None, None]
    assert rep["many_shot_acc"] == 100.0
    assert rep["medium_shot_acc"] == 37.5
    assert rep["few_shot_acc"] == 0.0
    assert rep["top1"] == pytest.approx(100.0 * 4 / 12)
    assert rep["top5"] == pytest.approx(100.0 * 11 / 12)
    assert rep["num_test"] == 12
    cm = [[0] * 6 for _ in range(6)]
    for row, y in enumerate(labels.tolist()):
        cm[y][y if row in right else (y + 1) % 6] += 1
    assert rep["confusion_matrix"] == cm
    assert set(rep) == {
        "top1",
        "top5",
        "per_class_acc",
        "many_shot_acc",
        "medium_shot_acc",
        "few_shot_acc",
        "confusion_matrix",
        "num_test",
    }


def test_an_empty_shot_group_has_no_accuracy():
    logits = torch.eye(3)
    rep = metrics.report(logits, torch.tensor([0, 1, 2]), [50, 50, 50])
    assert rep["many_shot_acc"] is None and rep["few_shot_acc"] is None and rep["medium_shot_acc"] == 100.0


def test_top1_counts_the_right_predictions():
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert metrics.top1(logits, torch.tensor([0, 0, 1, 0])) == 75.0


# ---------------------------------------------------------------- schedule


def test_cosine_reaches_zero_at_the_end_of_a_one_epoch_cosine_phase():
    cfg = resolve(
        "cifar10-lt0.01-ldam-drw",
        sets=[
            parse_set(s)
            for s in (
                "optim.schedule=cosine",
                "optim.epochs=2",
                "optim.base_epochs=2",
                "optim.warmup_epochs=1",
            )
        ],
    )
    assert [lr_at(cfg, epoch) for epoch in range(3)] == pytest.approx([0.1, 0.1, 0.0], abs=1e-12)


# ---------------------------------------------------------------- crop, flip, normalise


def test_crop_with_padding_one():
    x = torch.arange(1, 10, dtype=torch.uint8).view(1, 1, 3, 3)
    assert crop_at(x, 1, torch.tensor([[0, 0]]))[0, 0].tolist() == [[0, 0, 0], [0, 1, 2], [0, 4, 5]]
    assert crop_at(x, 1, torch.tensor([[2, 1]]))[0, 0].tolist() == [[4, 5, 6], [7, 8, 9], [0, 0, 0]]
    assert torch.equal(crop_at(x, 0, torch.tensor([[0, 0]])), x)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.float32])
def test_crop_offsets_of_any_dtype_are_positions(dtype):
    x = torch.arange(1, 10, dtype=torch.uint8).view(1, 1, 3, 3).repeat(2, 1, 1, 1)
    out = crop_at(x, 1, torch.tensor([[0, 0], [2, 1]], dtype=dtype))
    assert out[0, 0].tolist() == [[0, 0, 0], [0, 1, 2], [0, 4, 5]]
    assert out[1, 0].tolist() == [[4, 5, 6], [7, 8, 9], [0, 0, 0]]


def test_random_crop_with_padding_one_moves_the_images():
    x = torch.arange(1, 10, dtype=torch.uint8).view(1, 1, 3, 3).repeat(64, 1, 1, 1)
    out = random_crop(x, 1, torch.Generator().manual_seed(0))
    offsets = torch.randint(0, 3, (64, 2), generator=torch.Generator().manual_seed(0))
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)))
    for b, (top, left) in enumerate(offsets.tolist()):
        np.testing.assert_array_equal(out[b].numpy(), padded[b, :, top : top + 3, left : left + 3])
    assert not torch.equal(out, x)


def test_hflip_draws_flip_below_one_half_exactly(monkeypatch):
    """Flip iff u < 1/2: exactly half of the float32 draws in [0, 1); a draw of 0.5 keeps the image."""
    x = torch.arange(6, dtype=torch.float32).view(3, 1, 1, 2)
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor([0.5, 0.49999997, 0.0]))
    out = random_hflip(x, torch.Generator())
    assert out[:, 0, 0].tolist() == [[0.0, 1.0], [3.0, 2.0], [5.0, 4.0]]


def test_normalize_rejects_either_wrong_length():
    x = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    for mean, std in (((0.5,) * 3, (0.5,)), ((0.5,), (0.5,) * 3)):
        with pytest.raises(ValueError) as e:
            normalize(x, mean, std)
        assert str(e.value) == f"mean/std have {len(mean)}/{len(std)} entries for 3-channel images"


def test_normalize_applies_float64_mean_and_std_as_float32():
    """numpy (float64) mean/std: the same float32 operations as ToTensor + Normalize, bit for bit."""
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = np.array(MEAN), np.array(STD)
    out = normalize(x, mean, std)
    m32 = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    s32 = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and torch.equal(out, (x.float() / 255 - m32) / s32)


def test_gradnorm_gives_a_loss_that_never_reaches_the_feature_a_zero_norm():
    """An extra loss computed elsewhere (SelfPatch's) need not depend on the image feature. Stacked with a
    task that does, its norm is 0 and the other's its own (||d(3 f.sum())/df|| = 3 sqrt(4) = 6); gated
    alone (no pretext task: nothing at all reaches the feature), its norm is 0 too, not an error."""
    feat = torch.ones(2, 2, requires_grad=True)
    elsewhere = torch.tensor(2.0, requires_grad=True)
    losses = torch.stack([3 * feat.sum(), elsewhere * 1.5])
    norms, mean_losses = GradNormGate(2, 2).feature_gradient_norms(feat, losses)
    assert norms.tolist() == pytest.approx([6.0, 0.0])
    assert mean_losses.tolist() == pytest.approx([12.0, 3.0])
    norms, mean_losses = GradNormGate(2, 1).feature_gradient_norms(feat, torch.stack([elsewhere * 1.5]))
    assert norms.tolist() == [0.0] and mean_losses.tolist() == pytest.approx([3.0])
