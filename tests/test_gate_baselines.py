"""The established loss weightings (gssl.gating: uncertainty, gradnorm, gcs, dwa) and the learned gate,
each on a controlled problem built for it, asserting the direction its paper predicts; then every mode
through the real network, the compiled step and `gssl train`.

The controlled problem: 4 classes of 8-d points around fixed prototypes, a shared layer (the backbone,
16-d feature), the main classifier, and one head per auxiliary task. A task that helps has labels
informative about the class (a bit of the class index, with some labels flipped so its loss cannot
vanish); one that hurts has random labels (its loss cannot fall) or a gradient that conflicts with the
main task (the current classifier, detached, asked for the wrong class).
"""

import json
import math
from typing import NamedTuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import TWO_EPOCHS_EVERY_EVENT, needs_analysis, train_preset, two_ranks_batchnorm
from gssl import rundir
from gssl.config import ConfigError, parse_set
from gssl.gating import LOSS_WEIGHTINGS, build_gate
from gssl.losses import build_loss
from gssl.method import GatedSSL
from gssl.runconfig import from_dict

CLASSES, IN_DIM, FEAT_DIM, BATCH = 4, 8, 16, 64
NEW_MODES = ["uncertainty", "gradnorm", "gcs", "dwa"]
TRIPLE = ["lorot", "flip", "channel"]


pytestmark = pytest.mark.usefixtures("one_thread")


class Toy(nn.Module):
    def __init__(self, gate: str, head_classes: list[int], seed: int = 0, **gate_kw):
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(nn.Linear(IN_DIM, FEAT_DIM), nn.ReLU())
        self.classifier = nn.Linear(FEAT_DIM, CLASSES)
        self.heads = nn.ModuleList([nn.Linear(FEAT_DIM, k) for k in head_classes])
        self.gate = build_gate(gate, FEAT_DIM, len(head_classes), num_classes=head_classes, **gate_kw)


class StepRecord(NamedTuple):
    main_loss: float
    task_losses: torch.Tensor  # [T] batch means
    weights: torch.Tensor  # [T] the gate's weights this step
    grad_norms: torch.Tensor  # [T] ||d (w_n L_n) / d feature||, measured here, not by the gate
    cosines: torch.Tensor | None


class Problem:
    """The prototypes, a seeded stream of batches and the auxiliary labels of the tasks."""

    def __init__(self, seed: int = 0):
        self.gen = torch.Generator().manual_seed(seed)
        self.prototypes = 2 * torch.randn(CLASSES, IN_DIM, generator=self.gen)

    def batch(self, size: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(CLASSES, (size,), generator=self.gen)
        return self.prototypes[y] + torch.randn(size, IN_DIM, generator=self.gen), y

    def noisy_bit(self, y: torch.Tensor, bit: int, flip_rate: float = 0.1) -> torch.Tensor:
        """Bit `bit` of the class index (informative about the class), a share of them flipped."""
        labels = (y >> bit) & 1
        return torch.where(torch.rand(y.shape, generator=self.gen) < flip_rate, 1 - labels, labels)

    def random_bit(self, y: torch.Tensor) -> torch.Tensor:
        return torch.randint(2, y.shape, generator=self.gen)


def toy_step(toy, x, y, aux_labels, optimizer, heads=None, loss_scale=None, ratio=1.0) -> StepRecord:
    """One step as GatedPretext takes it: total = main + ratio x pretext + the gate's own term."""
    feat = toy.backbone(x)
    main_loss = F.cross_entropy(toy.classifier(feat), y)
    heads = heads or list(toy.heads)
    losses = torch.stack(
        [F.cross_entropy(h(feat), a, reduction="none") for h, a in zip(heads, aux_labels)], 1
    )
    if loss_scale is not None:
        losses = losses * loss_scale
    cosines = None
    if getattr(toy.gate, "needs_main_loss", False):
        head_losses = torch.stack([F.cross_entropy(h(feat.detach()), a) for h, a in zip(heads, aux_labels)])
        shared = list(toy.backbone.parameters())
        gated, cosines = toy.gate.combine(main_loss, losses.mean(0), head_losses, shared)
    else:
        gated = toy.gate(feat, losses)
    weights = gated.weights.detach().reshape(-1)
    grads = [torch.autograd.grad(losses[:, n].mean(), feat, retain_graph=True)[0] for n in range(len(heads))]
    grad_norms = torch.stack([g.norm() for g in grads]) * weights
    total = main_loss + ratio * gated.pretext_loss + gated.aux_loss
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    if hasattr(toy.gate, "after_step"):
        toy.gate.after_step()
    return StepRecord(main_loss.item(), losses.detach().mean(0), weights, grad_norms, cosines)


def train_toy(toy, problem, aux_fn, steps, lr=0.1, **step_kw) -> list[StepRecord]:
    optimizer = torch.optim.SGD(toy.parameters(), lr=lr, momentum=0.9)
    records = []
    for _ in range(steps):
        x, y = problem.batch()
        records.append(toy_step(toy, x, y, aux_fn(y), optimizer, **step_kw))
    return records


def mean_of(records, field, last):
    return torch.stack([getattr(r, field) for r in records[-last:]]).mean(0)


def test_uncertainty_down_weights_the_noisier_task():
    """Kendall et al.: at the optimum exp(s_n) = L_n, so the weight exp(-s_n) is 1 / L_n: a task whose
    labels are random (loss stuck at log 2) gets less weight than one whose labels carry the class."""
    problem = Problem()
    toy = Toy("uncertainty", [2, 2])
    records = train_toy(toy, problem, lambda y: [problem.noisy_bit(y, 0), problem.random_bit(y)], 600)
    weights, losses = mean_of(records, "weights", 200), mean_of(records, "task_losses", 200)
    assert weights[0] > 1.4 * weights[1]  # the informative task weighs more
    assert losses[1] == pytest.approx(math.log(2), abs=0.08)  # the random one stays at chance
    assert torch.allclose(weights, 1 / losses, rtol=0.1)  # at the analytic optimum
    assert records[0].weights.tolist() == [1.0, 1.0]  # starts as the uniform gate


def test_learned_gate_prefers_the_task_the_network_learns():
    """The learned gate's optimum is softmax(-(L_n / log K_n) / tau): the informative task, whose loss
    falls below chance, gets more weight than the random-label task stuck at chance."""
    problem = Problem()
    toy = Toy("learned", [2, 2], tau=0.5)
    records = train_toy(toy, problem, lambda y: [problem.noisy_bit(y, 0), problem.random_bit(y)], 600)
    weights = mean_of(records, "weights", 200)
    assert weights[0] > 0.65 and weights[1] < 0.35 and weights.sum().item() == pytest.approx(1.0)


def test_gradnorm_equalises_the_gradient_norms_and_keeps_the_weights_summing_to_n():
    """alpha = 0: every task's target is the mean gradient norm. Task 0's loss is scaled by 10 (its
    gradient is about 10x task 1's at the start); GradNorm brings ||d (w_n L_n) / d f|| together by
    shrinking w_0, with w_0 + w_1 = 2 after every step."""
    problem = Problem()
    toy = Toy("gradnorm", [2, 2], alpha=0.0)
    records = train_toy(
        toy,
        problem,
        lambda y: [problem.noisy_bit(y, 0), problem.noisy_bit(y, 1)],
        400,
        lr=0.03,  # at 0.1 the 10x loss alone makes the toy diverge, whatever the weights
        loss_scale=torch.tensor([10.0, 1.0]),
    )
    start = records[0].grad_norms[0] / records[0].grad_norms[1]
    ratios = torch.stack([r.grad_norms[0] / r.grad_norms[1] for r in records[-100:]])
    assert start > 5
    assert 0.5 < ratios.median() < 2.0  # equalised
    weights = mean_of(records, "weights", 100)
    assert weights[0] < 0.25 * weights[1]  # about the 1/10 the scales ask for
    sums = torch.stack([r.weights.sum() for r in records])  # the weights each step used
    assert torch.allclose(sums, torch.full_like(sums, 2.0), atol=1e-5)


def test_gradnorm_gives_the_task_that_trains_slower_more_weight():
    """alpha = 1.5: the targets are mean-norm x r_n^alpha with r_n the relative inverse training rate;
    the random-label task's loss does not fall (r > 1), the informative one's does (r < 1), so GradNorm
    raises the random task's weight and the gradient-norm ratio follows the targets' ratio."""
    problem = Problem()
    toy = Toy("gradnorm", [2, 2], alpha=1.5)
    records = train_toy(toy, problem, lambda y: [problem.noisy_bit(y, 0), problem.random_bit(y)], 400)
    weights = mean_of(records, "weights", 100)
    assert weights[1] > 2 * weights[0] and weights.sum().item() == pytest.approx(2.0, abs=1e-4)
    initial = toy.gate.initial_losses
    rate = torch.stack([r.task_losses / initial for r in records[-100:]])
    target_ratio = ((rate[:, 0] / rate[:, 1]) / 1.0) ** 1.5
    norm_ratio = torch.stack([r.grad_norms[0] / r.grad_norms[1] for r in records[-100:]])
    assert abs(math.log(norm_ratio.median() / target_ratio.median())) < math.log(2.5)


def conflicting_problem(gate: str, steps: int = 300, **gate_kw):
    """Main task + a helpful task (a bit of the class) + a task whose gradient conflicts with the main
    task's: the CURRENT classifier, detached, asked for the next class (its only way down is to move the
    features towards the wrong class). Returns the records and the main task's accuracy afterwards."""
    problem = Problem()
    toy = Toy(gate, [2, CLASSES], **gate_kw)

    def conflicting_head(feat):
        return F.linear(feat, toy.classifier.weight.detach(), toy.classifier.bias.detach())

    records = train_toy(
        toy,
        problem,
        lambda y: [problem.noisy_bit(y, 0, 0.0), (y + 1) % CLASSES],
        steps,
        heads=[toy.heads[0], conflicting_head],
    )
    x, y = problem.batch(400)
    with torch.no_grad():
        accuracy = (toy.classifier(toy.backbone(x)).argmax(1) == y).float().mean().item()
    return records, accuracy


def test_gcs_stops_using_the_conflicting_task():
    """Du et al., unweighted: an auxiliary gradient reaches the shared layer only when its cosine with
    the main task's is positive. The conflicting task is switched off in most steps, the helpful one kept
    in most, and the main task learns; with uniform weights the conflicting task keeps it at chance.
    (Cosines of single batches are noisy: the conflicting task still gets through, at full weight, in
    9-23% of the steps over seeds 0-4, which costs the main task more than the weighted variant.)"""
    records, _ = conflicting_problem("gcs", weighted=False)
    used = mean_of(records, "weights", 300)
    cosines = mean_of(records, "cosines", 300)
    assert cosines[0] > 0.3 and cosines[1] < -0.1
    assert used[0] > 0.85 and used[1] < 0.3
    assert set(torch.cat([r.weights for r in records]).tolist()) <= {0.0, 1.0}  # on or off
    uniform, _ = conflicting_problem("uniform")
    main_loss = sum(r.main_loss for r in records[-100:]) / 100
    uniform_main_loss = sum(r.main_loss for r in uniform[-100:]) / 100
    assert uniform_main_loss > 1.2  # chance is log 4 = 1.39
    assert main_loss < 0.8 * uniform_main_loss  # seeds 0-4: 0.54-1.03 against 1.35-1.50


def test_gcs_weighted_down_weights_the_conflicting_task():
    """Du et al., weighted: the auxiliary gradient is scaled by max(0, cos)."""
    records, accuracy = conflicting_problem("gcs", weighted=True)
    weights = mean_of(records, "weights", 300)
    assert weights[1] < 0.1 < 0.3 < weights[0]
    assert all(torch.equal(r.weights, r.cosines.clamp_min(0)) for r in records)
    assert accuracy > 0.9  # seeds 0-4: 0.96-1.00; uniform weights: 0.20-0.31


def test_gcs_heads_get_their_full_gradient_and_the_backbone_the_gated_one():
    """The paper updates task-specific parameters with their own loss whatever the cosine: only the
    shared parameters' share of an auxiliary gradient is gated."""
    torch.manual_seed(0)
    toy = Toy("gcs", [2, 2])
    x, y = torch.randn(BATCH, IN_DIM), torch.randint(CLASSES, (BATCH,))
    aux = [y % 2, torch.randint(2, (BATCH,))]
    feat = toy.backbone(x)
    main_loss = F.cross_entropy(toy.classifier(feat), y)
    losses = torch.stack([F.cross_entropy(h(feat), a) for h, a in zip(toy.heads, aux)])
    head_losses = torch.stack([F.cross_entropy(h(feat.detach()), a) for h, a in zip(toy.heads, aux)])
    shared = list(toy.backbone.parameters())
    gated, cosines = toy.gate.combine(main_loss, losses, head_losses, shared)
    assert gated.pretext_loss.item() == pytest.approx(losses.sum().item(), rel=1e-6)  # the value: sum L_n
    weights = (cosines > 0).float()
    got = torch.autograd.grad(gated.pretext_loss, [*shared, *toy.heads.parameters()], retain_graph=True)
    for n, head in enumerate(toy.heads):
        want_head = torch.autograd.grad(losses[n], list(head.parameters()), retain_graph=True)
        mine = got[len(shared) + 2 * n : len(shared) + 2 * n + 2]
        assert all(torch.allclose(a, b) for a, b in zip(mine, want_head))
    want_shared = [torch.zeros_like(p) for p in shared]
    for n in range(2):
        grads = torch.autograd.grad(losses[n], shared, retain_graph=True)
        want_shared = [w + weights[n] * g for w, g in zip(want_shared, grads)]
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(got[: len(shared)], want_shared))


def run_dwa_epochs(toy, problem, epochs: int, steps: int = 60):
    """Epochs of `steps` steps with the scenario's hooks; per epoch: (the weights used, its mean losses)."""
    optimizer = torch.optim.SGD(toy.parameters(), lr=0.05, momentum=0.9)
    history = []
    for epoch in range(epochs):
        toy.gate.start_epoch(epoch)
        records = [
            toy_step(toy, *xy, [problem.noisy_bit(xy[1], 0), problem.random_bit(xy[1])], optimizer)
            for xy in (problem.batch() for _ in range(steps))
        ]
        history.append((records[0].weights, mean_of(records, "task_losses", steps)))
        assert all(torch.equal(r.weights, records[0].weights) for r in records)  # constant within an epoch
    return history


def test_dwa_gives_the_task_whose_loss_falls_slower_more_weight():
    """Liu et al.: w_n = N softmax(r_n / T), r_n = L_n(t-1) / L_n(t-2) of epoch-mean losses, uniform in
    the first two epochs. The informative task's loss falls, the random one's does not: from the third
    epoch on the random task weighs more, exactly as the formula of the logged epoch means says."""
    problem = Problem()
    toy = Toy("dwa", [2, 2], temperature=2.0)
    history = run_dwa_epochs(toy, problem, epochs=4)
    assert history[0][0].tolist() == [1.0, 1.0] and history[1][0].tolist() == [1.0, 1.0]
    for epoch in (2, 3):
        rate = history[epoch - 1][1] / history[epoch - 2][1]
        expected = 2 * torch.softmax(rate / 2.0, dim=0)
        assert torch.allclose(history[epoch][0], expected, atol=1e-5)
    assert history[2][0][1] > history[2][0][0] and history[2][0].sum().item() == pytest.approx(2.0)
    # a checkpoint carries the state: a copy restored from the state dict weighs the next epoch alike
    restored = Toy("dwa", [2, 2], temperature=2.0, seed=1)
    restored.load_state_dict(toy.state_dict())
    toy.gate.start_epoch(4)
    restored.gate.start_epoch(4)
    assert torch.equal(toy.gate.task_weight, restored.gate.task_weight)
    toy.gate.start_epoch(4)  # a repeated call (no step in between) changes nothing
    assert torch.equal(toy.gate.task_weight, restored.gate.task_weight)


@pytest.mark.parametrize(
    "gate,gate_kw", [("uncertainty", {}), ("gradnorm", {"alpha": 1.5}), ("gcs", {}), ("dwa", {})]
)
def test_every_mode_in_the_network_logs_weights_and_trains_every_part(gate, gate_kw):
    torch.manual_seed(0)
    model = GatedSSL("resnet8", 10, tasks=TRIPLE, gate=gate, gate_kw=gate_kw)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(10, (8,))
    loss, stats = model.training_loss(x, y, build_loss("ce"), torch.Generator().manual_seed(0))
    assert {f"gate_{t}" for t in TRIPLE} <= set(stats) and torch.isfinite(loss)
    assert all(not v.requires_grad for v in stats.values())
    if gate == "gcs":
        assert {f"cos_{t}" for t in TRIPLE} <= set(stats)
    loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert all(model.pretext.heads[t].weight.grad is not None for t in TRIPLE)
    for p in model.pretext.gate.parameters():  # uncertainty's s, gradnorm's w: learned
        assert p.grad is not None and p.grad.abs().sum() > 0
    model.pretext.after_step()
    model.pretext.start_epoch(1)


def test_config_choices_and_errors():
    for mode in NEW_MODES:
        assert from_dict(parse_set(f"ssl.gate={mode}")).ssl.gate == mode
    assert set(LOSS_WEIGHTINGS) == set(NEW_MODES)
    with pytest.raises(ConfigError, match="uncertainty.*gradnorm.*gcs.*dwa"):
        from_dict(parse_set("ssl.gate=gradnrom"))
    with pytest.raises(ConfigError, match="gradnorm_alpha"):
        from_dict(parse_set("ssl.gradnorm_alpha=-1"))
    with pytest.raises(ConfigError, match="dwa_temperature"):
        from_dict(parse_set("ssl.dwa_temperature=0"))
    with pytest.raises(ConfigError, match="gcs_weighted"):
        from_dict(parse_set("ssl.gcs_weighted=sometimes"))
    with pytest.raises(ValueError, match="gcs.*dwa"):
        build_gate("moe", 16, 2)
    with pytest.raises(RuntimeError, match="combine"):
        build_gate("gcs", 16, 2)(torch.randn(4, 16), torch.rand(4, 2))


def test_the_modes_build_from_the_config_with_their_settings():
    from gssl.methods.registry import build_model

    sets = ["ssl.tasks=[lorot,flip]", "model.backbone=resnet8"]
    gradnorm = build_model(from_dict(_sets(*sets, "ssl.gate=gradnorm", "ssl.gradnorm_alpha=0.5")), 10, 3)
    assert gradnorm.pretext.gate.alpha == 0.5
    gcs = build_model(from_dict(_sets(*sets, "ssl.gate=gcs", "ssl.gcs_weighted=true")), 10, 3)
    assert gcs.pretext.gate.weighted is True
    dwa = build_model(from_dict(_sets(*sets, "ssl.gate=dwa", "ssl.dwa_temperature=4")), 10, 3)
    assert dwa.pretext.gate.temperature == 4.0


def _sets(*items):
    from gssl.config import merge

    out = {}
    for item in items:
        out = merge(out, parse_set(item))
    return out


@pytest.mark.compiles
@pytest.mark.parametrize("gate", ["gcs", "gradnorm"])
def test_the_step_with_gradients_inside_is_one_graph(gate):
    """torch.autograd.grad inside the step is traced into the graph (Compiled sets trace_autograd_ops)."""
    import torch._dynamo

    from gssl.step import packed_step

    torch.manual_seed(0)
    model = GatedSSL("resnet8", 10, tasks=["lorot", "flip"], gate=gate, head="cosine")
    x, y = torch.randn(4, 3, 16, 16), torch.randint(10, (4,))
    params = model.sample_params(x, torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        explained = torch._dynamo.explain(packed_step(model.loss_from_params))(x, y, build_loss("ce"), params)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


def test_gcs_in_fixmatch_and_simclr_weighs_against_their_main_loss():
    """The main loss is the carrier's: FixMatch's labelled + unlabelled loss, SimCLR's NT-Xent."""
    from gssl.contrastive import SimCLR
    from gssl.methods.fixmatch.semisup import fixmatch_loss

    torch.manual_seed(0)
    model = GatedSSL("resnet8", 10, tasks=["lorot", "flip"], gate="gcs")
    x, y, xu = torch.randn(4, 3, 16, 16), torch.randint(10, (4,)), torch.randn(8, 3, 16, 16)
    params = model.sample_params(torch.randn(20, 3, 16, 16), torch.Generator().manual_seed(0))
    args = (x, y, xu, xu.flip(3), torch.randint(10, (8,)), build_loss("ce"), params, 0.5, 1.0)
    loss, stats = fixmatch_loss(model, *args)
    assert {"gate_lorot", "cos_flip"} <= set(stats) and torch.isfinite(loss)
    simclr = SimCLR("resnet8", views=2, tasks=["rotation"], gate="gcs")
    views = torch.randn(8, 3, 16, 16)
    loss, stats = simclr.loss_from_params(views, y, None, simclr.sample_params(views, torch.Generator()))
    assert "cos_rotation" in stats and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in simclr.backbone.parameters())


def _train(root, out, *sets, compile_=False):
    """The gated triple through `gssl train`, two tiny epochs unless `sets` say more: its metrics rows."""
    schedule = (*TWO_EPOCHS_EVERY_EVENT, f"compile={str(compile_).lower()}")
    train_preset("cifar10-lt0.01-gated-triple", root, out, *schedule, *sets)
    return rundir.read_metrics(out)


@pytest.mark.slow
@pytest.mark.parametrize("gate", ["uncertainty", "gradnorm", "gcs", "gcs-weighted", "dwa"])
def test_every_mode_trains_end_to_end_and_logs_its_weights_per_epoch(fake_cifar10, tmp_path, gate):
    sets = [f"ssl.gate={gate.split('-')[0]}"] + (["ssl.gcs_weighted=true"] if gate == "gcs-weighted" else [])
    if gate == "dwa":  # three epochs: the third is the first DWA weighs unevenly
        sets += ["optim.epochs=3", "optim.base_epochs=3"]
    rows = _train(fake_cifar10, tmp_path / gate, *sets)
    for row in rows:
        weights = [row[f"gate_{t}"] for t in TRIPLE]
        assert all(math.isfinite(w) and w >= 0 for w in weights) and math.isfinite(row["loss"])
        if gate in ("gradnorm", "dwa"):
            assert sum(weights) == pytest.approx(3.0, abs=1e-4)
    if gate == "dwa":
        assert [rows[0][f"gate_{t}"] for t in TRIPLE] == [1.0, 1.0, 1.0]
        assert len({round(rows[2][f"gate_{t}"], 6) for t in TRIPLE}) > 1
        # the weights logged in epoch 2 are DWA's formula (Liu et al. 2019, eq. 7, T = 2) applied to the
        # task losses logged in epochs 0 and 1: what the log says the gate did is what it did. The log's
        # loss is the mean over images and DWA's the mean over steps (as the MTAN code), which differ by
        # the partial last batch, so the weights' departures from 1 agree to 10%, not to rounding (an
        # inverted rate flips their signs, another T scales them)
        rates = [rows[1][f"ssl_{t}"] / rows[0][f"ssl_{t}"] for t in TRIPLE]
        exps = [math.exp(rate / 2.0) for rate in rates]
        expected = [3 * e / sum(exps) - 1 for e in exps]
        assert [rows[2][f"gate_{t}"] - 1 for t in TRIPLE] == pytest.approx(expected, rel=0.1)
    if gate.startswith("gcs"):
        assert all(-1 <= rows[-1][f"cos_{t}"] <= 1 for t in TRIPLE)
    summary = json.loads((tmp_path / gate / "summary.json").read_text())
    assert set(summary["gate_weights"]) == set(TRIPLE)


@pytest.mark.slow
def test_dwa_resumes_as_an_uninterrupted_run(fake_cifar10, tmp_path):
    """DWA's epoch sums and means are buffers in the checkpoint: a run killed while writing its third
    checkpoint and resumed weighs the third epoch, and ends, exactly as the uninterrupted run."""
    import os
    import subprocess
    import sys

    def command(out):
        args = [sys.executable, "-m", "gssl", "train", "--preset", "cifar10-lt0.01-gated-triple"]
        for s in (f"data.root={fake_cifar10}", *TWO_EPOCHS_EVERY_EVENT, "compile=false", "ssl.gate=dwa"):
            args += ["--set", s]
        return [
            *args,
            "--set",
            "optim.epochs=3",
            "--set",
            "optim.base_epochs=3",
            "--out",
            str(out),
            "--quiet",
        ]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count in every process: same float sums
    subprocess.run(command(tmp_path / "whole"), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    fault = {**env, "GSSL_FAULT": "kill-during-write:last.pt:3"}
    assert subprocess.run(command(killed), env=fault, capture_output=True).returncode != 0
    assert not (killed / "summary.json").exists()
    resume = [sys.executable, "-m", "gssl", "train", "--resume", str(killed), "--quiet"]
    assert subprocess.run(resume, env=env, capture_output=True).returncode == 0
    rows = {}
    for name in ("whole", "killed"):
        rows[name] = [
            {k: v for k, v in row.items() if k.startswith(("gate_", "ssl_"))}
            for row in rundir.read_metrics(tmp_path / name)
        ]
    assert len(rows["killed"]) == 3 and rows["killed"] == rows["whole"]
    assert len({round(rows["whole"][2][f"gate_{t}"], 6) for t in TRIPLE}) > 1  # the third epoch: uneven
    a, b = (
        rundir.load_checkpoint(tmp_path / n / "checkpoints" / "last.pt")["model"] for n in ("whole", "killed")
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def cifar600(tmp_path_factory):
    from conftest import write_fake_cifar10

    root = tmp_path_factory.mktemp("fake-cifar10-600")
    return write_fake_cifar10(root, per_class_train=20, per_class_test=60)


@pytest.mark.slow
@pytest.mark.parametrize(
    "gate",
    [pytest.param(g, marks=pytest.mark.exhaustive) if g in ("uncertainty", "gcs") else g for g in NEW_MODES],
)
def test_compiled_step_trains_like_the_eager_one(cifar600, tmp_path, gate):
    """Inductor on the real step (C++ on CPU), as tests/test_compile.py checks every other scenario: it
    compiled (no fallback, no recompilation across the epochs and DRW), and moved the weights within 5%
    of the eager run's update. gcs and gradnorm take torch.autograd.grad inside the step; dwa trains a
    third epoch, the first it weighs unevenly, so its new weights reach the compiled step too."""
    from test_compile import assert_compiled_matches_eager

    third = ["optim.epochs=3", "optim.base_epochs=3"] if gate == "dwa" else []
    assert_compiled_matches_eager(
        cifar600, tmp_path, "cifar10-lt0.01-gated-triple", f"ssl.gate={gate}", *third
    )
    if gate == "dwa":
        rows = rundir.read_metrics(tmp_path / "compiled")
        assert len({round(rows[2][f"gate_{t}"], 6) for t in TRIPLE}) > 1


def test_the_report_draws_the_loss_weightings_against_a_uniform_weight_of_one():
    needs_analysis()
    from gssl.analysis import curves
    from gssl.gating import uniform_weight

    weights = [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.8, 1.1, 1.1]]
    rows = [{"epoch": e, **{f"gate_{t}": w for t, w in zip(TRIPLE, ws)}} for e, ws in enumerate(weights)]
    fig = curves.gate_curves({"dwa": [curves.Record(0, TRIPLE, "dwa", rows, {}, 0.1)]})
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert list(lines["uniform 1"].get_ydata()) == [1.0, 1.0]
    assert list(lines["lorot (1 seed)"].get_ydata()) == [1.0, 1.0, 0.8]
    assert uniform_weight("learned", 3) == 1 / 3 and uniform_weight("gcs", 3) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("gate", NEW_MODES)
def test_two_processes_weigh_like_one_with_the_global_batch(fake_cifar10, tmp_path, monkeypatch, gate):
    """Under torchrun (2 ranks, gloo, batch 8 each) every mode trains as one process with batch 16 whose
    batch norm normalises each half on its own (as tests/test_distributed.py checks for the learned
    gate): what each mode reduces over ranks (gcs: the gradients before the cosines; gradnorm: the
    squared feature-gradient norms and the losses; dwa: each step's losses) makes the weights the
    one-process weights. One epoch (rounding grows chaotically over steps: tests/test_distributed.py),
    three for dwa, whose third epoch is the first it weighs unevenly."""
    from conftest import train_tiny_run
    from test_distributed import TINY, _torchrun, _weights

    work = tmp_path / "work"
    work.mkdir()
    common = ["data.max_per_class=5", "optim.lr=0.01", "channels_last=false", f"ssl.gate={gate}"]
    epochs = 3 if gate == "dwa" else 1
    args = [*TINY, "--set", f"data.root={fake_cifar10}"]
    for s in (*common, "optim.batch_size=8", f"optim.epochs={epochs}", f"optim.base_epochs={epochs}"):
        args += ["--set", s]
    r = _torchrun([*args, "--out", "ddp"], cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]

    two_ranks_batchnorm(monkeypatch)
    sets = [a for a in TINY[2:] if a not in ("--set", "--quiet")]
    one = train_tiny_run(fake_cifar10, tmp_path / "one", epochs, *sets, *common, "optim.batch_size=16")
    rows = [rundir.read_metrics(run) for run in (work / "ddp", one)]
    for ddp_row, one_row in zip(*rows, strict=True):
        for t in TRIPLE:
            assert ddp_row[f"gate_{t}"] == pytest.approx(one_row[f"gate_{t}"], rel=1e-4, abs=1e-6)
    if gate == "dwa":
        assert len({round(rows[0][2][f"gate_{t}"], 6) for t in TRIPLE}) > 1
    a, b = _weights(work / "ddp"), _weights(one)
    # every state but dwa's scratch copy of the step's losses, which rank 0 keeps for its own half
    keys = [k for k in a if not k.endswith("gate.last_losses") or gate != "dwa"]
    worst, where = max(((a[k].float() - b[k].float()).abs().max().item(), k) for k in keys)
    # one epoch: rounding measured 2.3e-6 (gradnorm) and 8.5e-6 (gcs) on two CPU hosts, under 1e-6 on a
    # third; gcs without its gradients' mean over ranks moves a weight 9.2e-5 (and its gate far more)
    assert worst < (3e-5 if epochs == 1 else 1e-3), f"largest difference {worst:.2e} in {where}"
