"""Protocol tests that pin numbers: the learning rate of every epoch of a Table-1 preset as a real run logs
it, the epoch at which DRW's weights reach the loss inside the loop, the margins the run's LDAM uses, the
pretext draws' balance, and the shot groups and top-5 on a hand-made logits table."""

import math

import pytest
import torch

from conftest import train_preset
from gssl import engine, metrics, rundir
from gssl.config import parse_set
from gssl.distributed import Dist
from gssl.methods import registry
from gssl.presets import resolve
from gssl.pretext import build_pretext

# the Table-1 preset's own schedule (200 epochs: warm-up 5, x0.01 at 160 and 180, DRW at 160) scaled to 40
# epochs by gssl's rule: warm-up 1, decays at 32 and 36, DRW at 32
SCALED = [
    "optim.epochs=40",
    "optim.base_epochs=200",
    "model.backbone=resnet8",
    "data.max_per_class=6",
    "data.imbalance=0.5",
    "optim.batch_size=16",
    "data.test_limit=20",
    "compile=false",
]


def _expected_lr(epoch: int) -> float:
    """Written out, not computed by gssl, for epochs counted from 1 as metrics.jsonl counts them: linear
    warm-up over epoch 1 (to 0.1), then 0.1 to epoch 32, 0.001 from epoch 33, 0.00001 from epoch 37."""
    return 0.1 * (1.0 if epoch <= 32 else 0.01 if epoch <= 36 else 0.0001)


@pytest.mark.slow
def test_a_scaled_table1_run_logs_the_learning_rate_of_every_epoch(fake_cifar10, tmp_path):
    out = tmp_path / "ldam"
    train_preset("cifar10-lt0.01-ldam-drw", fake_cifar10, out, *SCALED)
    rows = rundir.read_metrics(out)
    assert [row["epoch"] for row in rows] == list(range(1, 41))
    for row in rows:
        assert math.isclose(row["lr"], _expected_lr(row["epoch"]), rel_tol=1e-12), row["epoch"]


def _context(fake_cifar10, tmp_path, *sets):
    cfg = resolve(
        "cifar10-lt0.01-ldam-drw",
        sets=[parse_set(f"data.root={fake_cifar10}"), *(parse_set(s) for s in [*SCALED, *sets])],
    )
    return engine.build_context(cfg, tmp_path / "run", Dist(), "cpu", quiet=True)


@pytest.mark.slow
def test_drw_weights_reach_the_loss_from_the_scaled_epoch_on_inside_the_loop(fake_cifar10, tmp_path):
    ctx = _context(fake_cifar10, tmp_path, "optim.epochs=4")  # DRW at round(160 * 4 / 200) = 3
    scenario = registry.build(ctx)
    seen: dict[int, torch.Tensor] = {}
    original_loss = ctx.cls_loss.forward

    def recording_forward(logits, target):  # what the loss module holds when the step calls it
        seen.setdefault(
            current_epoch[0], None if ctx.cls_loss.weight is None else ctx.cls_loss.weight.clone()
        )
        return original_loss(logits, target)

    current_epoch = [-1]
    start_epoch = scenario.start_epoch
    scenario.start_epoch = lambda epoch: (current_epoch.__setitem__(0, epoch), start_epoch(epoch))[1]
    ctx.cls_loss.forward = recording_forward
    engine.fit(ctx, scenario)
    counts = torch.tensor(ctx.data.counts, dtype=torch.float64)
    drw = (1 - 0.9999) / (1 - 0.9999**counts)
    drw = (drw / drw.sum() * len(counts)).float()
    assert sorted(seen) == [0, 1, 2, 3]
    for epoch in (0, 1, 2):  # before DRW: uniform (ones, as the reference's beta = 0 weights)
        assert torch.equal(seen[epoch], torch.ones(len(counts)))
    assert torch.allclose(seen[3], drw, rtol=1e-6)


def test_the_runs_ldam_margins_are_the_formula_on_its_own_class_counts(fake_cifar10, tmp_path):
    ctx = _context(fake_cifar10, tmp_path)
    counts = ctx.data.counts
    assert counts == [6, 5, 5, 4, 4, 4, 3, 3, 3, 3]  # max 6 per class, then ratio 0.5: int(6 * 0.5^(i / 9))
    expected = [n**-0.25 for n in counts]
    expected = [0.5 * m / max(expected) for m in expected]
    assert torch.allclose(ctx.cls_loss.margins, torch.tensor(expected), rtol=1e-6)
    assert ctx.cls_loss.s == 30


def test_the_test_images_reach_the_model_unaugmented_and_in_order(fake_cifar10, tmp_path):
    ctx = _context(fake_cifar10, tmp_path)
    test = ctx.data.test
    x, y = next(iter(registry.build(ctx).test_loader))  # what every evaluation of the loop reads
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)  # LDAM-DRW's CIFAR constants
    std = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
    assert len(x) == len(test) == 20  # data.test_limit: one batch
    assert torch.allclose(x, (test.images.float() / 255 - mean) / std, atol=1e-5)
    assert torch.equal(y, test.labels)


def test_a_resumed_epoch_draws_the_batches_of_the_uninterrupted_run(fake_cifar10, tmp_path):
    """The loader's epoch comes from the loop, not from how many epochs this process iterated before."""
    uninterrupted = registry.build(_context(fake_cifar10, tmp_path / "a"))
    for epoch in range(3):
        third = list(uninterrupted.batches(epoch)[0])
    resumed = registry.build(_context(fake_cifar10, tmp_path / "b"))
    again = list(resumed.batches(2)[0])
    assert len(again) == len(third) > 1
    for (x, y), (x_again, y_again) in zip(third, again):
        assert torch.equal(x, x_again) and torch.equal(y, y_again)


@pytest.mark.parametrize("task, classes", [("flip", 2), ("lorot", 16), ("channel", 6)])
def test_every_pretext_label_is_drawn_about_equally_often(task, classes):
    pretext = build_pretext([task])
    x = torch.zeros(8000, 3, 8, 8)
    _, labels = pretext.apply(x, pretext.sample(x, torch.Generator().manual_seed(0)))
    share = torch.bincount(labels[task], minlength=classes).float() / 8000
    assert torch.allclose(share, torch.full((classes,), 1 / classes), atol=0.03), share


def test_shot_groups_and_top5_on_a_hand_made_logits_table():
    counts = [500, 150, 60, 30, 10, 5]  # many: 0, 1; medium: 2, 3; few: 4, 5
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    logits = torch.zeros(12, 6)
    right = [0, 1, 2, 4, 6, 8]  # rows predicted right: both of class 0, one each of classes 1-4, none of 5
    for row in right:
        logits[row, labels[row]] = 10.0
    for row in set(range(12)) - set(right):  # wrong, with the true class ranked 6th of 6 (rows 10, 11) or 2nd
        logits[row, (labels[row] + 1) % 6] = 10.0
        logits[row, labels[row]] = -10.0 if row >= 10 else 5.0
    rep = metrics.report(logits, labels, counts)
    assert rep["per_class_acc"] == [100.0, 50.0, 50.0, 50.0, 50.0, 0.0]
    assert rep["many_shot_acc"] == 75.0 and rep["medium_shot_acc"] == 50.0 and rep["few_shot_acc"] == 25.0
    assert rep["top1"] == 50.0
    # the two rows whose class is ranked last miss; exactly the count over 12, as the robust top-1 is
    # (attacks.robust_accuracy): a float32 mean gave 83.3333313
    assert rep["top5"] == 100.0 * 10 / 12
    # summary.json's names for them, which `gssl table` reads
    assert metrics.summary_accuracies(rep) == {"test_acc": 50.0, "top5_acc": 100.0 * 10 / 12}
    assert metrics.top1(logits[:10], labels[:10]) == 60.0  # 6 of 10 (float32: 60.0000024)
