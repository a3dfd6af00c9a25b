"""The Table 1 baselines run by gssl itself: ERM, SSP, SLA-SD (rotation, channel), LoRot-I, and every
method overlay, end to end at toy scale; SLA's aggregated inference and SSP's weight transfer on their own."""

import json
import math

import pytest
import torch

from conftest import TWO_EPOCHS_EVERY_EVENT, initial_weights, train_preset, train_tiny_run
from gssl import metrics, rundir
from gssl.cli import main
from gssl.config import flatten, load_yaml
from gssl.data import DeviceLoader
from gssl.losses import build_loss
from gssl.methods.sla_sd.sla import SLASD, aggregate, expand, joint_labels
from gssl.methods.ssp.ssp import pretrain_rotation
from gssl.models import build_backbone
from gssl.presets import BASELINES, METHODS, resolve

# what defines a method in its preset; the run must keep all of it (only the scale is the test's)
METHOD_KEYS = (
    "method",
    "ssl.tasks",
    "ssl.gate",
    "ssl.ratio",
    "loss.name",
    "model.head",
    "sla.transform",
    "pretrain.lr",
)


def _untrained_test_acc(run) -> float:
    """The test accuracy of the run's own initial weights: the floor training must clear."""
    from gssl.evaluation import load_run

    loaded = load_run(run, "last")
    loaded.model.load_state_dict(initial_weights(run))
    loader = DeviceLoader(
        loaded.data.test.images,
        loaded.data.test.labels,
        512,
        mean=loaded.data.mean,
        std=loaded.data.std,
        crop_padding=0,
        hflip=False,
        shuffle=False,
    )
    logits, labels = metrics.predict(loaded.model.eval(), loader, "cpu")
    return metrics.top1(logits, labels)


@pytest.mark.parametrize("method", sorted(set(METHODS) | set(BASELINES)))
def test_every_method_trains_end_to_end_from_its_real_preset(fake_cifar10, tmp_path, method):
    preset = f"cifar10-lt0.01-{'ldam-drw' if method == 'baseline' else method}"
    out = tmp_path / method
    extra = "pretrain.epochs=1" if method == "ssp" else "compile=false"
    train_preset(preset, fake_cifar10, out, extra, *TWO_EPOCHS_EVERY_EVENT)
    saved = flatten(load_yaml(out / "config.yaml"))
    wanted = flatten(resolve(preset).to_dict())
    assert {k: saved.get(k, wanted[k]) for k in METHOD_KEYS} == {k: wanted[k] for k in METHOD_KEYS}
    summary = json.loads((out / "summary.json").read_text())
    rows = rundir.read_metrics(out)
    assert len(rows) == 2 and all(
        math.isfinite(v) for row in rows for v in row.values() if isinstance(v, float)
    )
    untrained = _untrained_test_acc(out)
    assert summary["test_acc"] > untrained, (summary["test_acc"], untrained)
    if method.startswith("sla-sd"):
        assert (
            "aggregated_test_acc" in summary and "sla_joint" in rows[-1] and "sla_agg_train_acc" in rows[-1]
        )
    if method == "ssp":
        assert (out / "checkpoints" / "pretrain.pt").is_file() and summary[
            "pretrain_rotation_acc"
        ] is not None
    if method == "lorot-i":
        assert "ssl_lorot_i" in rows[-1] and rows[-1]["gate_lorot_i"] == 1.0


@pytest.mark.parametrize("gate", ["reference", "learned", "uniform"])
def test_gated_rows_take_every_gate_mode(fake_cifar10, tmp_path, gate):
    run = train_tiny_run(fake_cifar10, tmp_path / gate, 1, f"ssl.gate={gate}")
    row = rundir.read_metrics(run)[-1]
    weights = [row[f"gate_{t}"] for t in ("lorot", "flip", "channel")]
    assert sum(weights) == pytest.approx(3.0 if gate == "uniform" else 1.0, abs=1e-4)
    trained = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    initial = initial_weights(run)
    gate_params = [k for k in trained if k.startswith("pretext.gate.linear.")]
    if gate == "uniform":
        assert gate_params == []  # nothing to learn
    elif gate == "reference":  # the authors' gate is cut from the graph: it never moves from its init
        assert gate_params and all(torch.equal(trained[k], initial[k]) for k in gate_params)
        assert len(set(round(w, 4) for w in weights)) == 3  # and its random init weighs the tasks unevenly
    else:  # the learned gate starts uniform (zero weights) and learns
        assert all(not initial[k].any() for k in gate_params)
        assert any(trained[k].abs().max() > 1e-4 for k in gate_params)


# --- SLA-SD -------------------------------------------------------------------------------------


def test_expand_and_joint_labels_share_one_layout():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    rot = expand(x, "rotation")
    assert rot.shape == (8, 3, 4, 4)
    for m in range(4):
        assert torch.equal(rot[2 * m : 2 * m + 2], torch.rot90(x, m, (2, 3)))
    ch = expand(x, "channel")
    assert ch.shape == (12, 3, 4, 4) and torch.equal(ch[:2], x) and torch.equal(ch[2:4], x[:, [0, 2, 1]])
    assert joint_labels(torch.tensor([3, 1]), 4).tolist() == [12, 4, 13, 5, 14, 6, 15, 7]


def test_aggregate_is_the_mean_of_each_transformations_own_class_logit():
    B, N, M = 3, 5, 4
    joint = torch.randn(M * B, N * M)
    agg = aggregate(joint, B, N)
    for b in range(B):
        for c in range(N):
            expected = sum(joint[m * B + b, c * M + m] for m in range(M)) / M
            assert agg[b, c] == pytest.approx(expected.item(), abs=1e-6)


def test_aggregated_inference_matches_m_separate_forward_passes():
    torch.manual_seed(0)
    model = SLASD("resnet20", 4, transform="rotation", head="linear").eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        by_hand = torch.stack(
            [model.joint(model.backbone(torch.rot90(x, m, (2, 3))))[:, m::4] for m in range(4)]
        ).mean(0)
    assert torch.allclose(model.aggregated_logits(x), by_hand, atol=1e-5)
    assert model(x).shape == (3, 4)  # test time: the single head, one pass


def test_sla_sd_loss_trains_joint_and_single_heads_and_distils_towards_the_aggregate():
    torch.manual_seed(0)
    model = SLASD("resnet20", 4, transform="channel", head="cosine", joint_scale=30.0)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    loss, stats = model.training_loss(x, y, build_loss("ldam", [10, 5, 3, 2]))
    loss.backward()
    assert model.joint.weight.grad.abs().sum() > 0 and model.classifier.weight.grad.abs().sum() > 0
    assert stats["sla_distill"] >= 0 and torch.isfinite(loss)
    # the total is exactly joint CE + single loss + KL
    assert loss.item() == pytest.approx(
        (stats["sla_joint"] + stats["cls_loss"] + stats["sla_distill"]).item(), rel=1e-5
    )


# --- SSP ----------------------------------------------------------------------------------------


def _gradient_images(n: int = 96, side: int = 16) -> torch.Tensor:
    """Bright at the top, dark at the bottom, plus noise: the rotation is visible."""
    ramp = torch.linspace(255, 0, side).view(1, 1, side, 1).expand(n, 3, side, side)
    noise = torch.randint(-40, 40, (n, 3, side, side), generator=torch.Generator().manual_seed(0))
    return (ramp + noise).clamp(0, 255).to(torch.uint8)


def test_ssp_pretraining_learns_rotation_without_labels():
    torch.manual_seed(0)
    images = _gradient_images()
    labels = torch.full((len(images),), -1)  # not labels at all: SSP must not read them
    loader = DeviceLoader(
        images, labels, 32, mean=(0.5,) * 3, std=(0.25,) * 3, crop_padding=0, hflip=False, seed=0
    )
    backbone = build_backbone("resnet20", 3)
    history = pretrain_rotation(backbone, loader, epochs=6, lr=0.05, weight_decay=0.0, log=lambda m: None)
    assert len(history) == 6 and history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["acc"] > 60.0  # chance is 25%


def test_ssp_weights_are_where_supervised_training_starts(fake_cifar10, tmp_path):
    """With a vanishing learning rate the supervised epoch cannot move the weights, so the run's
    backbone must equal the pre-trained one (and differ from a fresh initialisation)."""
    run = train_tiny_run(
        fake_cifar10,
        tmp_path / "ssp",
        1,
        "ssl.tasks=[]",
        "ssl.gate=none",
        "pretrain.epochs=1",
        "optim.lr=1e-12",
        "optim.momentum=0",
        "optim.weight_decay=0",
    )
    pre = torch.load(run / "checkpoints" / "pretrain.pt", weights_only=True)["backbone"]
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    torch.manual_seed(0)
    fresh = build_backbone("resnet20", 3).state_dict()
    weights = [k for k in pre if k.endswith("weight")]
    assert weights
    for k in weights:
        assert torch.allclose(last[f"backbone.{k}"], pre[k], atol=1e-6), k
    assert any(not torch.allclose(pre[k], fresh[k]) for k in weights)
    assert not any(k.startswith("rotation") for k in last)  # the rotation head is not carried over


def test_sla_with_gated_tasks_is_refused(fake_cifar10, tmp_path, capsys):

    code = main(
        [
            "train",
            "--preset",
            "cifar10-lt0.01-sla-sd",
            "--set",
            f"data.root={fake_cifar10}",
            "--set",
            "ssl.tasks=[lorot]",
            "--set",
            "ssl.gate=uniform",
            "--out",
            str(tmp_path / "r"),
            "--quiet",
        ]
    )
    assert code == 2 and "sla.transform=rotation replaces the gated pretext tasks" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
