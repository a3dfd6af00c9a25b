"""Attacks (gssl.attacks), adversarial training in the engine, and `gssl eval --attack`."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import train_tiny_run
from gssl import attacks, rundir
from gssl.attacks import (
    Attack,
    PixelSpace,
    classification_objective,
    perturb,
    robust_accuracy,
    training_objective,
)
from gssl.cli import main
from gssl.config import load_yaml
from gssl.data import DeviceLoader
from gssl.methods.registry import build_data, build_model
from gssl.runconfig import from_dict

MEAN, STD = (0.49, 0.48, 0.45), (0.2, 0.2, 0.2)


def _trained(run):
    cfg = from_dict(load_yaml(run / "config.yaml"))
    data = build_data(cfg)
    model = build_model(cfg, 10, 3)
    model.load_state_dict(rundir.load_checkpoint(run / "checkpoints" / "last.pt")["model"])
    loader = DeviceLoader(
        data.test.images,
        data.test.labels,
        50,
        mean=data.mean,
        std=data.std,
        crop_padding=0,
        hflip=False,
        shuffle=False,
    )
    return model.eval(), loader, PixelSpace(data.mean, data.std)


@pytest.mark.parametrize("kind", ["fgsm", "pgd"])
def test_perturbations_stay_within_eps_and_the_pixel_range(kind):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    space = PixelSpace(MEAN, STD)
    pixels = torch.rand(16, 3, 8, 8)
    pixels[:, :, 0] = 0.0
    pixels[:, :, 1] = 1.0  # saturated rows: the clamp to [0, 1] must hold there too
    x, y = space.to_model(pixels), torch.randint(0, 10, (16,))
    eps = 8 / 255
    adv = perturb(classification_objective(model), x, y, space, Attack(kind, eps, 2 / 255, 5))
    p = space.to_pixels(adv)
    assert (p - pixels).abs().max() <= eps + 1e-5
    assert p.min() >= 0 and p.max() <= 1
    assert (p - pixels).abs().max() > eps / 2  # it did move


def test_pgd_raises_the_loss_beyond_clean_and_fgsm_on_a_trained_model(tiny_run):
    model, loader, space = _trained(tiny_run)
    x, y = next(iter(loader))
    obj = classification_objective(model)
    eps = 2 / 255  # small enough for FGSM's one linearised step to go uphill on this barely trained model
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y).item()
        fgsm = F.cross_entropy(model(perturb(obj, x, y, space, Attack("fgsm", eps))), y).item()
        pgd = F.cross_entropy(model(perturb(obj, x, y, space, Attack("pgd", eps, eps / 4, 10))), y).item()
    assert clean < fgsm < pgd


def test_evaluation_leaves_weights_and_batchnorm_untouched_and_attacks_in_eval_mode(tiny_run):
    model, loader, space = _trained(tiny_run)
    model.train()  # whatever mode it comes in, the attack and evaluation run in eval mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = []
    model.register_forward_pre_hook(lambda m, a: modes.append(m.training))
    clean, robust = robust_accuracy(model, loader, space, Attack("pgd", 8 / 255, 2 / 255, 3))
    assert modes and not any(modes)
    assert model.training  # restored
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert 0 <= robust <= clean <= 100


def test_training_attack_includes_the_pretext_loss_and_bn_update_is_an_option(tiny_run):
    model, loader, space = _trained(tiny_run)
    x, y = next(iter(loader))
    from gssl.losses import build_loss

    params = model.sample_params(x, torch.Generator().manual_seed(0))
    loss_fn = build_loss("ce")
    obj = training_objective(model, loss_fn, params)
    assert obj(x, y).item() == pytest.approx(
        model.loss_from_params(x, y, loss_fn, params)[0].item(), rel=1e-5
    )
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    stats = bn.running_mean.clone()
    with attacks.attack_mode(model, train_mode=False):
        perturb(obj, x, y, space, Attack("pgd", 8 / 255, 2 / 255, 2))
    assert torch.equal(bn.running_mean, stats)
    with attacks.attack_mode(model, train_mode=True):  # the reference's way: BN statistics move
        perturb(obj, x, y, space, Attack("pgd", 8 / 255, 2 / 255, 2))
    assert not torch.equal(bn.running_mean, stats)


def test_adversarial_training_end_to_end_and_eval_attack_cli(fake_cifar10, tmp_path, capsys):
    run = train_tiny_run(
        fake_cifar10,
        tmp_path / "adv",
        1,
        "adv.attack=pgd",
        "adv.steps=2",
        "adv.eval_steps=2",
        "adv.eps=8/255",
        "data.normalize=symmetric",
    )
    s = json.loads((run / "summary.json").read_text())
    assert 0 <= s["robust_test_acc"] <= 100 and s["robust_attack"].startswith("pgd-2")
    capsys.readouterr()
    assert main(["eval", str(run), "--attack", "pgd", "--eps", "8/255", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "under pgd-3" in out and "robust" in out
    rep = json.loads((run / "eval-last.json").read_text())
    assert rep["attack"]["eps"] == pytest.approx(8 / 255) and rep["robust_acc"] <= rep["clean_acc"]
    assert rep["clean_acc"] == pytest.approx(rep["top1"], abs=1e-6)
    assert main(["eval", str(run), "--attack", "fgsm", "--eps", "eight"]) == 2
    assert "--eps: expected a number" in capsys.readouterr().err
    assert main(["eval", str(run), "--attack", "pgd", "--eps", "3"]) == 2
    assert "eps 3" in capsys.readouterr().err


def test_the_training_loop_steps_on_attacked_batches(fake_cifar10, tmp_path):
    """The adversarial wrapper's prepare() hands the step a perturbed batch (within eps in pixel space), and
    a run with the attack ends with other weights than the same run without it."""
    from gssl import engine
    from gssl.config import parse_set
    from gssl.distributed import Dist
    from gssl.methods import registry
    from gssl.presets import resolve

    sets = [
        f"data.root={fake_cifar10}",
        "adv.attack=pgd",
        "adv.steps=2",
        "adv.eps=8/255",
        "optim.batch_size=16",
        "model.backbone=resnet8",
        "data.normalize=symmetric",
        "compile=false",
        "data.imbalance=0.5",
    ]
    cfg = resolve("cifar10-lt0.01-gated-triple", sets=[parse_set(s) for s in sets])
    ctx = engine.build_context(cfg, tmp_path / "run", Dist(), "cpu", quiet=True)
    scenario = registry.build(ctx)
    assert type(scenario).__name__ == "Adversarial"
    batches, _ = scenario.batches(0)
    x, y = next(iter(batches))
    batch = scenario.prepare(x, y, torch.Generator().manual_seed(0), 0, 0)
    gap = (batch.x - x) * 0.5  # symmetric normalisation: pixel = 0.5 * x + 0.5
    assert torch.equal(batch.y, y) and gap.abs().max() > 1 / 255
    assert batch.cls_loss is ctx.cls_loss and batch.params.keys()  # the inner batch's other fields, kept
    assert gap.abs().max() <= 8 / 255 + 1e-6

    clean = train_tiny_run(fake_cifar10, tmp_path / "clean", 1, "data.normalize=symmetric")
    attacked_run = train_tiny_run(
        fake_cifar10,
        tmp_path / "adv",
        1,
        "adv.attack=pgd",
        "adv.steps=2",
        "adv.eval_steps=0",
        "adv.eps=8/255",
        "data.normalize=symmetric",
    )
    weights = [
        torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
        for run in (clean, attacked_run)
    ]
    assert any(
        not torch.equal(weights[0][k], weights[1][k]) for k in weights[0] if weights[0][k].is_floating_point()
    )
