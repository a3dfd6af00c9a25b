"""The ViT backbone (gssl.models.vit): shapes on 32 and 64 px images and on smaller views, the fused
attention against the written-out softmax, the class token's attention maps, and the ViT under the
supervised scenario with the gated pretext tasks (a deterministic step, a real `gssl train` run)."""

import json

import pytest
import torch
import yaml

from conftest import train_preset
from gssl.build import check_shapes
from gssl.config import ConfigError, parse_set
from gssl.methods.supervised.scenario import Supervised
from gssl.models import build_backbone
from gssl.presets import resolve

TINY = {"width": 32, "depth": 2, "heads": 2}
TINY_SETS = ["model.backbone=vit", "vit.width=32", "vit.depth=2", "vit.heads=2"]


@pytest.mark.parametrize("patch, size", [(4, 32), (8, 64)])
def test_an_8x8_grid_of_patches_on_32_and_64_px_images(patch, size):
    torch.manual_seed(0)
    vit = build_backbone("vit", 3, {**TINY, "patch": patch, "image_size": size}).eval()
    x = torch.randn(2, 3, size, size)
    assert vit(x).shape == (2, 32) and vit.feat_dim == 32
    assert vit.tokens(x).shape == (2, 1 + 64, 32)
    assert vit.forward_features(x).shape == (2, 32, 8, 8)
    assert torch.equal(vit(x), vit.tokens(x)[:, 0])  # the feature is the class token
    # a local view of half the side: a 4 x 4 grid, positional embeddings resized to it
    assert vit.tokens(torch.randn(2, 3, size // 2, size // 2)).shape == (2, 1 + 16, 32)


def test_fused_attention_is_the_written_out_softmax_attention():
    torch.manual_seed(0)
    vit = build_backbone("vit", 3, TINY).eval()
    attn, x = vit.blocks[0].attn, torch.randn(3, 65, 32)
    _, _, v = attn.split(x)
    by_hand = attn.proj((attn.weights(x) @ v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(attn(x), by_hand, rtol=1e-5, atol=1e-6)


def test_the_class_tokens_attention_map_is_a_distribution_over_the_patches_and_itself():
    torch.manual_seed(0)
    vit = build_backbone("vit", 3, TINY).eval()
    maps = vit.class_attention(torch.randn(2, 3, 32, 32))
    assert maps.shape == (2, 2, 8, 8) and (maps >= 0).all()
    assert (maps.sum((-2, -1)) < 1).all()  # the rest of each head's weight is on the class token itself


def test_a_greyscale_vit_and_a_grid_that_does_not_fit_are_refused_clearly():
    assert build_backbone("vit", 1, TINY)(torch.randn(2, 1, 32, 32)).shape == (2, 32)
    with pytest.raises(ValueError, match="must divide the image size"):
        build_backbone("vit", 3, {**TINY, "patch": 5})
    cfg = resolve("cifar10-lt0.01-gated-triple", sets=[parse_set(s) for s in TINY_SETS])
    with pytest.raises(ConfigError, match="set vit.image_size=64"):
        check_shapes(cfg, 3, 64, 64)


def test_a_supervised_gated_triple_step_on_the_vit_runs_and_is_deterministic():
    cfg = resolve(
        "cifar10-lt0.01-gated-triple", sets=[parse_set(s) for s in (*TINY_SETS, "ssl.gate=learned")]
    )
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10

    def step():
        torch.manual_seed(0)
        model = Supervised.build_model(cfg, 10, 3)
        loss, stats = model.training_loss(x, y, torch.nn.CrossEntropyLoss(), torch.Generator().manual_seed(1))
        loss.backward()
        return loss.detach(), stats, [p.grad for p in model.backbone.parameters()]

    (loss_a, stats_a, grads_a), (loss_b, _, grads_b) = step(), step()
    assert torch.isfinite(loss_a) and torch.equal(loss_a, loss_b)
    assert {"gate_lorot", "gate_flip", "gate_channel", "ssl_lorot"} <= set(stats_a)
    assert all(a is not None and torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def test_gssl_train_runs_the_vit_end_to_end(fake_cifar10, tmp_path):
    sets = [*TINY_SETS, "optim.epochs=1", "optim.base_epochs=1", "optim.batch_size=16", "data.imbalance=0.5"]
    run = train_preset("cifar10-lt0.01-gated-triple", fake_cifar10, tmp_path / "run", *sets)
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["test_acc"] <= 100 and set(summary["gate_weights"]) == {"lorot", "flip", "channel"}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["vit"] == {
        "patch": 4,
        "width": 32,
        "depth": 2,
        "heads": 2,
        "mlp_ratio": 4.0,
        "image_size": 32,
    }
