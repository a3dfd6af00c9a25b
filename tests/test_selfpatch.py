"""SelfPatch (selfpatch.py) and its place in the DINO step: the neighbourhoods on a small grid (the
authors' wrap-around and the masked border), the top-k positives on a hand-made token grid, the
aggregation's shapes and masking, the patch loss by hand, the teacher's targets, and the gate weighing
the patch loss beside LoRot-E in every gate mode."""

import math

import pytest
import torch

from gssl.methods.dino.selfpatch import Aggregation, neighbour_index, select_positives, selfpatch_loss
from test_dino import tiny_model


def window(rows, cols, r, c, wrap):
    """Patch (r, c)'s neighbours, written out: the 3 x 3 window without the centre, row by row."""
    out = []
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            rr, cc = (r + dr, c + dc) if not wrap else ((r + dr) % rows, (c + dc) % cols)
            if (dr, dc) != (0, 0) and 0 <= rr < rows and 0 <= cc < cols:
                out.append(rr * cols + cc)
    return out


@pytest.mark.parametrize("border", ["wrap", "mask"])
def test_every_patch_has_its_3x3_window_as_neighbours(border):
    index, valid = neighbour_index(3, 4, border)
    for patch in range(12):
        assert index[patch][valid[patch]].tolist() == window(3, 4, patch // 4, patch % 4, border == "wrap")
    counts = valid.sum(1).view(3, 4).tolist()
    assert counts == ([[8] * 4] * 3 if border == "wrap" else [[3, 5, 5, 3], [5, 8, 8, 5], [3, 5, 5, 3]])
    # the authors' code on a 3 x 3 grid: patch 0 wraps to 8, 6, 7, 2, 1, 5, 3, 4
    assert neighbour_index(3, 3, "wrap")[0][0].tolist() == [8, 6, 7, 2, 1, 5, 3, 4]


def test_the_top_k_positives_are_the_most_similar_neighbours_on_a_hand_made_grid():
    # a 3 x 3 grid of unit vectors at these angles (degrees): the centre (0 degrees) is closest to 10 and
    # 20, the top-left corner (90) to 80 (its right neighbour) and then to 60 (below it)
    angles = torch.tensor([[90.0, 80.0, 40.0], [60.0, 0.0, 10.0], [20.0, 170.0, 180.0]])
    rad = angles.flatten() * math.pi / 180
    tokens = torch.stack([rad.cos(), rad.sin()], dim=1)[None] * 3.0  # lengths do not matter: cosines
    positives, real = select_positives(tokens, *neighbour_index(3, 3, "mask"), k=2)
    assert positives[0, 4].tolist() == [5, 6] and real[0, 4].all()  # 10 and 20 degrees
    assert positives[0, 0].tolist() == [1, 3]  # 80, then 60; the corner's off-grid slots never win
    positives, real = select_positives(tokens, *neighbour_index(3, 3, "mask"), k=4)
    assert sorted(positives[0, 0, :3].tolist()) == [1, 3, 4] and real[0, 0].tolist() == [True] * 3 + [False]


def test_the_aggregation_summarises_each_set_and_ignores_masked_tokens():
    torch.manual_seed(0)
    agg = Aggregation(8, heads=2, blocks=2).eval()
    tokens, mask = torch.randn(5, 4, 8), torch.tensor([True, True, False, True])[None].expand(5, -1)
    out = agg(tokens, mask)
    assert out.shape == (5, 8)
    changed = tokens.clone()
    changed[:, 2] = 100.0  # a masked token's content does not matter
    torch.testing.assert_close(agg(changed, mask), out)
    torch.testing.assert_close(agg(tokens[:, [0, 1, 3]]), out, rtol=1e-5, atol=1e-6)  # = leaving it out
    positives = torch.tensor([[[1, 2], [0, 2], [0, 1]]])  # each of 3 patches summarised from the other two
    summary = agg.summarise_positives(tokens[:1, :3], positives, torch.ones(1, 3, 2, dtype=torch.bool))
    assert summary.shape == (1, 3, 8)
    torch.testing.assert_close(summary[0, 0], agg(tokens[:1, 1:3])[0], rtol=1e-5, atol=1e-6)


def test_the_patch_loss_is_the_cross_entropy_averaged_over_patches():
    student = torch.tensor([[[[0.0, 0.1], [0.2, 0.0]]]])  # 1 view, 1 image, 2 patches, 2 outputs
    teacher = torch.tensor([[[[0.7, 0.3], [0.5, 0.5]]]])

    def ce(q, s):
        logs = [v / 0.1 - math.log(sum(math.exp(u / 0.1) for u in s)) for v in s]
        return -sum(a * b for a, b in zip(q, logs))

    by_hand = (ce([0.7, 0.3], [0.0, 0.1]) + ce([0.5, 0.5], [0.2, 0.0])) / 2
    assert selfpatch_loss(student, teacher, 0.1).item() == pytest.approx(by_hand, rel=1e-5)


def test_the_teachers_patch_targets_cover_every_patch_of_every_view():
    model, _ = tiny_model()
    global_views, local_views = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 16, 16)  # N = 2 images
    targets = model.teacher_targets(global_views, local_views, 0.04)
    assert targets["image"].shape == (2, 2, 64)
    assert targets["patch_global"].shape == (2, 2, 64, 32) and targets["patch_local"].shape == (2, 2, 16, 32)
    torch.testing.assert_close(targets["patch_local"].sum(-1), torch.ones(2, 2, 16))
    assert model.center.abs().sum() > 0 and model.patch_center.abs().sum() > 0  # the centres moved


def test_a_uniform_gate_over_selfpatch_alone_is_selfpatch_with_lambda_equal_to_the_ratio():
    def step(*sets):
        model, _ = tiny_model("cifar10-dino-selfpatch-vit", *sets)
        global_views, local_views = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 16, 16)
        targets = model.teacher_targets(global_views, local_views, 0.04)
        return model.loss_from_params(global_views, local_views, targets, {}, torch.tensor(1.0))

    plain, plain_stats = step("selfpatch.weight=0.25")
    gated, gated_stats = step("ssl.gate=uniform", "ssl.ratio=0.25")
    torch.testing.assert_close(gated, plain)
    expected = plain_stats["dino_loss"] + 0.25 * plain_stats["selfpatch_loss"]
    assert plain.item() == pytest.approx(expected.item(), rel=1e-6)
    assert gated_stats["gate_selfpatch"] == 1.0


@pytest.mark.parametrize("gate", ["reference", "learned", "uniform", "uncertainty", "gradnorm", "gcs", "dwa"])
def test_every_gate_mode_weighs_selfpatch_beside_lorot(gate):
    model, _ = tiny_model("cifar10-dino-selfpatch-gated-vit", f"ssl.gate={gate}")
    generator = torch.Generator().manual_seed(0)
    global_views, local_views = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 16, 16)
    global_views, labels = model.pretext.transform(global_views, model.sample_params(global_views, generator))
    targets = model.teacher_targets(global_views, local_views, 0.04)
    loss, stats = model.loss_from_params(global_views, local_views, targets, labels, torch.tensor(1.0))
    loss.backward()
    assert torch.isfinite(loss) and {"gate_lorot", "gate_selfpatch", "ssl_selfpatch"} <= set(stats)
    assert model.student.patch_head.mlp[0].weight.grad.abs().sum() > 0  # the patch loss reaches its head
