"""FixMatch with the gated pretext loss: threshold, EMA, no label leak, end to end at toy scale."""

import json

import pytest
import torch

from conftest import needs_analysis, train_tiny_run
from gssl import rundir
from gssl.cli import main
from gssl.ema import EMA
from gssl.losses import build_loss
from gssl.method import GatedSSL
from gssl.methods.fixmatch.semisup import fixmatch_loss, pseudo_labels
from gssl.methods.registry import build_data
from gssl.presets import preset_dict
from gssl.runconfig import from_dict

SEMI = [
    "semi.labels_per_class=4",
    "semi.mu=2",
    "semi.steps_per_epoch=3",
    "semi.threshold=0.5",
    "data.imbalance=1.0",
    "loss.name=ce",
    "loss.drw_epoch=null",
]


def test_threshold_masks_exactly_the_confident_predictions():
    logits = torch.log(torch.tensor([[0.96, 0.02, 0.02], [0.5, 0.3, 0.2], [0.05, 0.95, 0.0 + 1e-9]]))
    label, mask = pseudo_labels(logits, 0.95)
    assert label.tolist() == [0, 0, 1] and mask.tolist() == [1.0, 0.0, 1.0]
    assert pseudo_labels(logits, 0.0)[1].tolist() == [1.0, 1.0, 1.0]


def test_ema_update_is_exact():
    """ema = decay * ema + (1 - decay) * current from a copy of the initial model (FixMatch's EMA),
    parameters and float buffers alike; integer buffers are copied."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, 0.9)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in start.items())  # starts as a copy
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0 + step)
            model(torch.randn(8, 3))  # moves the batch-norm buffers too
        before = {k: v.clone() for k, v in ema.module.state_dict().items()}
        ema.update(model)
        now = model.state_dict()
        for k, v in ema.module.state_dict().items():
            if v.is_floating_point():
                assert torch.allclose(v, 0.9 * before[k] + 0.1 * now[k], atol=1e-6), k
                assert not torch.allclose(v, now[k]), k  # an average, not a copy
            else:
                assert torch.equal(v, now[k]), k
    assert not any(p.requires_grad for p in ema.module.parameters())
    # runs saved with torch's AveragedModel (an extra n_averaged entry) still load
    ema.load_state_dict({**ema.state_dict(), "n_averaged": torch.tensor(5)})


def test_the_unlabelled_loss_never_reads_true_labels_and_the_split_is_disjoint(fake_cifar10):
    torch.manual_seed(0)
    model = GatedSSL("resnet20", 10, tasks=["lorot", "flip", "channel"], gate="learned")
    xl, yl = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    xu, xs = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    params = model.sample_params(torch.cat([xl, xu, xs]), torch.Generator().manual_seed(0))
    args = (model, xl, yl, xu, xs)
    a, sa = fixmatch_loss(*args, torch.randint(0, 10, (8,)), build_loss("ce"), params, 0.0, 1.0)
    b, sb = fixmatch_loss(*args, torch.randint(0, 10, (8,)), build_loss("ce"), params, 0.0, 1.0)
    assert torch.equal(a, b) and sa["mask_rate"] == 1.0  # other true labels, the same loss
    cfg = from_dict(
        {
            **preset_dict("cifar10-4000-fixmatch"),
            "data": {"name": "cifar10", "root": str(fake_cifar10), "imbalance": 1.0},
            "semi": {"labels_per_class": 4},
        }
    )
    data = build_data(cfg)
    assert len(data.train.labels) == 40 and data.counts == [4] * 10
    assert len(data.extra["unlabeled"].labels) == 200 - 40
    lab = {bytes(im.numpy()) for im in data.train.images}
    assert not any(bytes(im.numpy()) in lab for im in data.extra["unlabeled"].images)


@pytest.mark.slow
def test_fixmatch_trains_end_to_end_with_its_metrics_and_ema_evaluation(fake_cifar10, tmp_path, capsys):
    run = train_tiny_run(fake_cifar10, tmp_path / "fm", 2, *SEMI)
    rows = rundir.read_metrics(run)
    for r in rows:
        assert 0 <= r["mask_rate"] <= 1 and 0 <= r["pseudo_label_acc"] <= 1 and r["unlabeled_loss"] >= 0
        assert {"gate_lorot", "gate_flip", "gate_channel"} <= set(r)
    ck = rundir.load_checkpoint(run / "checkpoints" / "last.pt")
    assert "ema" in ck
    s = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0  # gssl eval judges the EMA weights, as training did
    rep = json.loads(capsys.readouterr().out)
    assert rep["top1"] == pytest.approx(s["test_acc"])
    # resume continues the EMA too
    assert main(["train", "--resume", str(run), "--set", "optim.epochs=3", "--force", "--quiet"]) == 0
    assert len(rundir.read_metrics(run)) == 3


@pytest.mark.slow
def test_report_and_eval_of_a_fixmatch_run_both_judge_the_ema_weights(fake_cifar10, tmp_path, capsys):
    """Regression: `gssl report` evaluated the raw weights and wrote eval-last.json, the file `gssl eval`
    writes from the EMA weights, so its content depended on which command ran last."""
    needs_analysis()
    run = train_tiny_run(fake_cifar10, tmp_path / "fm", 2, *SEMI, "semi.ema=0.5")
    s = json.loads((run / "summary.json").read_text())
    assert main(["report", str(run), "--no-tsne", "--gradcam-images", "2"]) == 0
    by_report = json.loads((run / "eval-last.json").read_text())
    (run / "eval-last.json").unlink()
    assert main(["eval", str(run), "--json"]) == 0
    by_eval = json.loads((run / "eval-last.json").read_text())
    assert by_report["confusion_matrix"] == by_eval["confusion_matrix"]
    assert by_report["top1"] == pytest.approx(s["test_acc"]) == pytest.approx(by_eval["top1"])
    # the final evaluation rebuilt after the fact restores the scenario's own state (the EMA) too
    assert main(["eval", str(run), "--protocol", "final"]) == 0
    final = json.loads((run / "eval-last-final.json").read_text())
    assert final["confusion_matrix"] == by_eval["confusion_matrix"] and final["test_acc"] == s["test_acc"]
    # the weights every command judges are the EMA's, which differ from the raw weights here
    import torch

    from gssl.evaluation import load_run
    from gssl.rundir import load_checkpoint

    model, ck = load_run(run, "last").model, load_checkpoint(run / "checkpoints" / "last.pt")
    ema = {k[len("module.") :]: v for k, v in ck["ema"].items() if k.startswith("module.")}
    judged = model.state_dict()
    assert all(torch.equal(judged[k], ema[k]) for k in judged)
    assert any(not torch.equal(judged[k], ck["model"][k]) for k in judged if judged[k].is_floating_point())
    # ... and the EMA followed training: with decay 0.5 over 6 steps it sits far nearer the trained weights
    # than the initial ones (an EMA never updated would still equal the initial weights)
    from conftest import initial_weights

    start = initial_weights(run)
    params = [k for k in ema if ema[k].is_floating_point() and k in start and "running" not in k]

    def distance(a, b):
        return sum(float((a[k].float() - b[k].float()).norm() ** 2) for k in params) ** 0.5

    assert distance(ema, ck["model"]) < 0.5 * distance(start, ck["model"])
    from gssl.analysis.run import Run

    for_report = Run(run).loaded().model.state_dict()  # what the report's figures and evaluation use
    assert all(torch.equal(for_report[k].cpu(), ema[k]) for k in for_report)
