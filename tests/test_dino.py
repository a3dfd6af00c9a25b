"""DINO (gssl.methods.dino) against small computations written out by hand: the loss with
centring and sharpening, the centre's update, the temperature and momentum schedules, the EMA teacher,
the weight-normalised head; multi-crop views; a run interrupted after a checkpoint resumes bit for bit."""

import math

import numpy as np
import pytest
import torch

from conftest import DINO_TINY, assert_runs_identical, train_preset
from gssl import engine, rundir
from gssl.cli import main
from gssl.config import ConfigError, parse_set
from gssl.data.views import ViewAugment
from gssl.methods.dino.dino import (
    DINOHead,
    dino_loss,
    teacher_momentum,
    teacher_probs,
    teacher_temperature,
    updated_center,
)
from gssl.methods.dino.scenario import DINOScenario
from gssl.presets import resolve
from gssl.runconfig import from_dict

TINY = DINO_TINY


def tiny_model(preset="cifar10-dino-selfpatch-vit", *sets):
    torch.manual_seed(0)
    cfg = resolve(preset, sets=[parse_set(s) for s in (*TINY, *sets)])
    return DINOScenario.build_model(cfg, 10, 3), cfg


def test_the_dino_loss_with_centring_is_the_hand_computed_cross_entropy_on_a_2x3_example():
    teacher = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])  # 2 global views of 1 image, 3 prototypes
    student = torch.tensor([[0.2, 0.1, 0.0], [0.0, 0.3, 0.1], [0.1, 0.0, 0.2]])  # 2 global + 1 local view
    center, tau_t, tau_s = torch.tensor([0.1, -0.2, 0.3]), 0.5, 0.1

    def softmax(row, tau):
        e = [math.exp(v / tau) for v in row]
        return [v / sum(e) for v in e]

    q = [softmax([t - c for t, c in zip(row, center.tolist())], tau_t) for row in teacher.tolist()]
    log_p = [[math.log(p) for p in softmax(row, tau_s)] for row in student.tolist()]
    pairs = [(t, v) for t in range(2) for v in range(3) if v != t]  # 4 pairs: views never meet themselves
    by_hand = sum(-sum(a * b for a, b in zip(q[t], log_p[v])) for t, v in pairs) / len(pairs)
    targets = teacher_probs(teacher, center, tau_t)[:, None]  # [2, N=1, 3]
    assert dino_loss(student[:, None], targets, tau_s).item() == pytest.approx(by_hand, rel=1e-5)


def test_the_centre_moves_by_its_momentum_towards_the_batch_mean():
    center, batch = torch.tensor([1.0, 0.0]), torch.tensor([[0.0, 2.0], [2.0, 4.0]])
    assert torch.allclose(updated_center(center, batch, 0.9), torch.tensor([0.9 + 0.1, 0.3]))


def test_the_teacher_temperature_and_momentum_follow_dinos_schedules():
    linspace = [0.04 + (0.07 - 0.04) * e / 29 for e in range(30)]  # np.linspace(0.04, 0.07, 30)
    assert [teacher_temperature(e, 0.04, 0.07, 30) for e in range(30)] == pytest.approx(linspace)
    assert teacher_temperature(30, 0.04, 0.07, 30) == 0.07 and teacher_temperature(0, 0.04, 0.07, 0) == 0.07
    assert teacher_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert teacher_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert 0.99999 < teacher_momentum(99, 100, 0.996) < 1


def test_the_head_normalises_its_last_layer_and_can_freeze_it():
    torch.manual_seed(0)
    head = DINOHead(8, 5, hidden=16, bottleneck=4)
    x = torch.randn(3, 8)
    v = head.last_layer_v
    by_hand = torch.nn.functional.normalize(head.mlp(x), dim=-1) @ (v / v.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(head(x), by_hand)
    assert not head.last_layer_g.requires_grad  # norm_last_layer: g stays 1
    head(x, torch.tensor(0.0)).sum().backward()  # the first epoch: the last layer does not move
    assert torch.count_nonzero(v.grad) == 0 and torch.count_nonzero(head.mlp[0].weight.grad) > 0


def test_the_ema_teacher_is_the_exact_average_of_its_old_self_and_the_student():
    model, _ = tiny_model()
    old = [p.detach().clone() for p in model.teacher.module.parameters()]
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(torch.randn_like(p))
    model.teacher.decay = 0.99
    model.teacher.update(model.student)
    for before, student, after in zip(old, model.student.parameters(), model.teacher.module.parameters()):
        torch.testing.assert_close(after, 0.99 * before + 0.01 * student, rtol=1e-6, atol=1e-7)


def test_multi_crop_draws_global_and_small_local_views_on_the_device():
    aug = ViewAugment((0.5,) * 3, (0.25,) * 3, crop_scale=(0.05, 0.25))
    views = aug.views(torch.randn(4, 3, 32, 32), torch.Generator().manual_seed(0), 6, size=16)
    assert views.shape == (6, 4, 3, 16, 16) and torch.isfinite(views).all()


def test_dino_is_refused_without_a_vit_and_selfpatch_without_dino():
    with pytest.raises(ConfigError, match="needs model.backbone=vit"):
        from_dict({"method": "dino"})
    with pytest.raises(ConfigError, match="set method=dino"):
        from_dict({"selfpatch": {"enabled": True}})


def test_an_interrupted_dino_selfpatch_run_resumes_bit_for_bit(fake_cifar10, tmp_path, monkeypatch):
    preset = "cifar10-dino-selfpatch-gated-vit"
    full = train_preset(preset, fake_cifar10, tmp_path / "full", *TINY)
    optimizer = torch.load(full / rundir.CKPT_DIR / "last.pt", weights_only=False)["optimizer"]
    # AdamW, with the second (last) epoch's weight decay of the cosine 0.04 -> 0.4 on the weights alone
    assert [g["weight_decay"] for g in optimizer["param_groups"]] == [pytest.approx(0.22), 0.0]
    assert {"exp_avg", "exp_avg_sq"} <= set(next(iter(optimizer["state"].values())))
    save = engine.save_epoch

    def save_then_die(ctx, scenario, optimizer, progress, epoch, board):
        save(ctx, scenario, optimizer, progress, epoch, board)
        raise KeyboardInterrupt  # killed right after the first checkpoint

    monkeypatch.setattr(engine, "save_epoch", save_then_die)
    argv = ["train", "--preset", preset, "--out", str(tmp_path / "resumed"), "--quiet"]
    for item in (f"data.root={fake_cifar10}", *TINY):
        argv += ["--set", item]
    assert main(argv) != 0  # the CLI reports the interruption
    monkeypatch.setattr(engine, "save_epoch", save)
    assert main(["train", "--resume", str(tmp_path / "resumed"), "--quiet"]) == 0
    assert_runs_identical(full, tmp_path / "resumed")  # teacher, centres, gate and optimiser included


def test_the_report_of_a_dino_run_shows_the_teachers_class_token_attention(
    fake_cifar10, tmp_path, monkeypatch
):
    from pathlib import Path

    from conftest import needs_analysis

    needs_analysis()

    from gssl.analysis import figures

    run = train_preset("cifar10-dino-vit", fake_cifar10, tmp_path / "dino", *TINY, "dino.linear_epochs=0")
    drawn = {}
    save = figures._save
    monkeypatch.setattr(
        figures, "_save", lambda fig, path: save(drawn.setdefault(Path(path).name, fig), path)
    )
    assert main(["report", str(run), "--no-tsne", "--gradcam-images", "2"]) == 0
    assert (run / "report" / "attention.png").is_file()
    figure = drawn["attention.png"]
    assert "teacher" in figure._suptitle.get_text()  # the ViT the run is judged by
    columns = 6
    assert len(figure.axes) == (2 + 2) * columns  # image, mean of 2 heads, each head
    maps = np.stack([np.asarray(ax.images[-1].get_array()) for ax in figure.axes[2 * columns : 3 * columns]])
    assert maps.shape == (columns, 8, 8)  # 8 x 8 patches of 4 px on 32 px images
    sums = maps.sum((1, 2))
    assert (maps >= 0).all() and (sums > 0).all() and (sums < 1).all()  # the rest: the class token itself
    mean_maps = np.stack([np.asarray(ax.images[-1].get_array()) for ax in figure.axes[columns : 2 * columns]])
    head2 = np.stack([np.asarray(ax.images[-1].get_array()) for ax in figure.axes[3 * columns :]])
    assert mean_maps == pytest.approx((maps + head2) / 2)


def test_gssl_eval_and_tsne_of_a_dino_run_judge_its_teacher_with_its_own_probe_settings(
    fake_cifar10, tmp_path, capsys
):
    import json

    from gssl.analysis.run import Run, predict_features

    run = train_preset(
        "cifar10-dino-selfpatch-vit",
        fake_cifar10,
        tmp_path / "dsp",
        *TINY,
        "dino.knn_k=7",
        "data.test_limit=50",
    )
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0  # the default: the run's own linear probe
    rep = json.loads(capsys.readouterr().out)
    assert rep["protocol"] == "linear (2 epochs on the frozen features)"
    assert rep["top1"] == pytest.approx(summary["test_acc"], abs=1e-6)
    assert main(["eval", str(run), "--protocol", "knn", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["protocol"] == "knn (7-NN on the frozen features)"  # dino.knn_k, not contrastive.knn_k
    assert rep["top1"] == pytest.approx(summary["knn_test_acc"], abs=1e-6)
    # t-SNE draws the same representation: the teacher's aggregation output, not the student's backbone
    loaded = Run(run).loaded()
    images, labels = loaded.data.test.images[:8], loaded.data.test.labels[:8]
    features, logits, _ = predict_features(loaded, images, labels)
    with torch.no_grad():
        from gssl.analysis.run import normalised

        teacher = loaded.model.teacher.module(normalised(loaded, images)).float().cpu()
        student = loaded.model.student(normalised(loaded, images)).float().cpu()
    assert logits is None and torch.equal(features, teacher) and not torch.allclose(features, student)


FINAL_PROBES = ("test_acc", "knn_test_acc", "patch_knn_test_acc", "patch_linear_test_acc")


def test_the_final_evaluation_of_a_dino_run_is_repeated_exactly_then_on_the_whole_test_set(
    fake_cifar10, tmp_path, capsys
):
    """A run that monitored 50 test images is judged again on all 100 (the CPU grid's 1,000 of 10,000),
    and gssl table reads that judgement instead of the summary."""
    import json

    run = train_preset(
        "cifar10-dino-selfpatch-vit", fake_cifar10, tmp_path / "dsp", *TINY, "data.test_limit=50"
    )
    summary_bytes = (run / "summary.json").read_bytes()
    summary = json.loads(summary_bytes)
    assert main(["eval", str(run), "--protocol", "final"]) == 0
    again = json.loads((run / "eval-last-final.json").read_text())
    assert again["num_test"] == 50 and {k: again[k] for k in FINAL_PROBES} == {
        k: summary[k] for k in FINAL_PROBES
    }
    assert main(["eval", str(run), "--protocol", "final", "--test-limit", "all"]) == 0
    whole = json.loads((run / "eval-last-final-testall.json").read_text())
    assert whole["num_test"] == 100 and set(FINAL_PROBES) <= set(whole)
    assert (run / "summary.json").read_bytes() == summary_bytes  # the run's own record stays as it was
    assert main(["eval", str(run), "--protocol", "final", "--test-limit", "30"]) == 0
    assert json.loads((run / "eval-last-final-test30.json").read_text())["num_test"] == 30
    capsys.readouterr()
    assert (
        main(["table", str(run), "--summary", "eval-last-final-testall.json", "--metric", "patch-knn"]) == 0
    )
    out = capsys.readouterr().out
    assert "eval-last-final-testall.json, on 100 test images" in out
    assert f"| {whole['patch_knn_test_acc']:.2f} (1) |" in out
    for bad in ("0", "-3", "some"):
        with pytest.raises(SystemExit) as exc:
            main(["eval", str(run), "--protocol", "final", "--test-limit", bad])
        assert exc.value.code == 2
    assert "--test-limit" in capsys.readouterr().err
    from gssl import evaluation

    with pytest.raises(ValueError, match="without `loaded`"):  # a rebuilt run would be silently ignored
        evaluation.evaluate_run(run, protocol="final", loaded=evaluation.load_run(run))
