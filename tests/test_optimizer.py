"""The optimiser behind every scenario (gssl.build_optimizer, optimizer_step): SGD or DINO's AdamW,
the weight-decay groups and schedule, and DINO's per-parameter gradient clipping, checked by hand."""

import math

import pytest
import torch

from gssl import engine
from gssl.config import parse_set
from gssl.methods.dino.scenario import DINOScenario
from gssl.optimizer import build_optimizer, clip_each_gradient, set_epoch_hyperparameters
from gssl.presets import resolve
from gssl.schedule import weight_decay_at
from gssl.step import FiniteWatch

SMALL_VIT = ["vit.width=32", "vit.depth=1", "vit.heads=2", "dino.out_dim=16", "dino.hidden_dim=16"]


def _cfg(preset, *sets):
    return resolve(preset, sets=[parse_set(s) for s in sets])


def test_dinos_weight_decay_follows_a_cosine_from_0_04_to_0_4_and_others_stay_constant():
    cfg = _cfg("cifar10-dino-vit")
    assert weight_decay_at(cfg, 0) == pytest.approx(0.04, rel=1e-12)
    assert weight_decay_at(cfg, 100) == pytest.approx(0.22, rel=1e-12)  # halfway: the mean of the two
    assert weight_decay_at(cfg, 199) == pytest.approx(0.4 - 0.18 * (1 - math.cos(math.pi / 200)), rel=1e-12)
    ldam = _cfg("cifar10-lt0.01-ldam-drw")
    assert {weight_decay_at(ldam, epoch) for epoch in (0, 100, 199)} == {2e-4}


def test_the_dino_preset_trains_with_adamw_decaying_weights_but_not_norms_and_biases():
    cfg = _cfg("cifar10-dino-vit", *SMALL_VIT)
    model = DINOScenario.build_model(cfg, 10, 3)
    optimizer = build_optimizer(cfg, model, torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["lr"] == 5e-4
    decayed, undecayed = optimizer.param_groups
    assert decayed["weight_decay"] == 0.04 and undecayed["weight_decay"] == 0.0
    assert all(p.dim() > 1 for p in decayed["params"]) and all(p.dim() <= 1 for p in undecayed["params"])
    named = dict(model.named_parameters())
    assert any(named[name] is p for p in decayed["params"] for name in named if name.endswith("pos_embed"))
    set_epoch_hyperparameters(optimizer, 1e-4, 0.3)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 1e-4]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.3, 0.0]  # norms and biases stay free


def test_sgd_stays_the_default_with_its_momentum():
    cfg = _cfg("cifar10-lt0.01-ldam-drw")
    optimizer = build_optimizer(cfg, torch.nn.Linear(3, 2), torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    assert [g["weight_decay"] for g in optimizer.param_groups] == [2e-4]  # decay_norm_and_bias: one group


def test_every_parameter_is_in_one_group_and_only_norms_and_biases_go_undecayed():
    cfg = _cfg("cifar10-lt0.01-ldam-drw", "optim.decay_norm_and_bias=false")
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    )
    decayed, undecayed = build_optimizer(cfg, model, torch.device("cpu")).param_groups
    assert [tuple(p.shape) for p in decayed["params"]] == [(4, 3, 3, 3), (2, 4)]  # 4-D and 2-D weights
    assert [tuple(p.shape) for p in undecayed["params"]] == [(4,), (4,), (4,), (2,)]  # biases, BN
    assert decayed["weight_decay"] == 2e-4 and undecayed["weight_decay"] == 0.0


def test_every_sgd_setting_and_the_devices_kernel_reach_the_optimiser():
    cfg = _cfg("cifar10-lt0.01-ldam-drw", "optim.nesterov=true", "optim.lr=0.05")
    model = torch.nn.Linear(3, 2)
    on_cpu = build_optimizer(cfg, model, torch.device("cpu"))
    assert on_cpu.defaults["nesterov"] is True and on_cpu.defaults["lr"] == 0.05
    assert on_cpu.defaults["foreach"] is True and not on_cpu.defaults["fused"]  # fused: CUDA only
    on_cuda = build_optimizer(cfg, model, torch.device("cuda"))  # the device only picks the kernel
    assert on_cuda.defaults["fused"] is True and not on_cuda.defaults["foreach"]
    adamw = build_optimizer(_cfg("cifar10-dino-vit"), model, torch.device("cpu"))
    assert adamw.defaults["foreach"] is True


def test_clipping_divides_by_the_norm_plus_1e_6_as_dinos_code():
    param = torch.nn.Parameter(torch.zeros(1))
    param.grad = torch.tensor([2e-6])  # norm 2e-6 against max_norm 1e-6: the 1e-6 is a third of it
    clip_each_gradient([param], 1e-6)
    assert param.grad.item() == pytest.approx(2e-6 * 1e-6 / 3e-6, rel=1e-4)


def test_each_parameter_is_clipped_to_the_norm_on_its_own_as_dinos_clip_gradients():
    big, small = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    big.grad, small.grad = torch.tensor([6.0, 8.0]), torch.tensor([1.0, 2.0, 2.0])  # norms 10 and 3
    clip_each_gradient([big, small], 5.0)
    assert big.grad.tolist() == pytest.approx([3.0, 4.0], rel=1e-6)  # scaled to norm 5 (1e-6 of eps)
    assert small.grad.tolist() == [1.0, 2.0, 2.0]  # under the limit: untouched, not scaled up
    # one global norm (sqrt(109)) would have scaled the small one down too


@pytest.mark.parametrize("scaled", [False, True])
def test_the_training_step_clips_the_true_gradients_before_the_update(scaled):
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)  # lr 0: the gradients stay to be read
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if scaled else None
    loop = engine.Loop(None, None, optimizer, scaler, FiniteWatch(torch.device("cpu")), clip_grad=0.01)
    loss = (layer(torch.randn(8, 4)) ** 2).sum()
    engine.optimizer_step(loop, loss)
    norms = [torch.linalg.vector_norm(p.grad).item() for p in layer.parameters()]
    assert norms == pytest.approx([0.01, 0.01], rel=1e-4)  # both were far above 0.01, unscaled first
