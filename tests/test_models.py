import pytest
import torch

from gssl.models import BACKBONES, CosineLinear, build_backbone, build_head

# Backbone-only parameter counts (no classifier), and with a 10-way linear classifier: the
# published CIFAR numbers (ResNet-20/32/44/56/110: 0.27/0.46/0.66/0.85/1.7M; ResNet-18 11.17M;
# WRN-28-2 1.47M as in FixMatch).
COUNTS = {
    "resnet8": 74_640,  # 1 block per stage: 0.08M with the classifier
    "resnet20": 269_072,
    "resnet32": 463_504,
    "resnet44": 657_936,
    "resnet56": 852_368,
    "resnet110": 1_727_312,
    "resnet18": 11_168_832,
    "wrn28_2": 1_466_320,
    "wrn40_2": 2_242_256,
    # no published count: BN over 243 scattering maps (486) + 3x3 conv 243->128 (279,936) + BN (256)
    # + two residual blocks of 128 channels (2 x 295,424); the scattering itself has none
    "scatnet": 871_526,
    # ViT-Tiny, patch 4 on 32 px: 12 blocks x 444,864 (qkv, proj, MLP 192-768-192, two LayerNorms)
    # + patch embedding 9,408 + class token 192 + 65 positional embeddings 12,480 + final norm 384
    "vit": 5_360_832,
}
FEAT = {"resnet18": 512, "wrn28_2": 128, "wrn40_2": 128, "scatnet": 128, "vit": 192}


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", list(COUNTS))
def test_parameter_counts(name):
    m = build_backbone(name)
    assert n_params(m) == COUNTS[name]
    assert m.feat_dim == FEAT.get(name, 64)


def test_published_sizes_with_classifier():
    # the count with the head is the count of a real backbone + a real built linear head
    with_fc = {n: COUNTS[n] + n_params(build_head("linear", FEAT.get(n, 64), 10)) for n in COUNTS}
    assert n_params(torch.nn.Sequential(build_backbone("resnet32"), build_head("linear", 64, 10))) == 464_154
    assert with_fc["resnet32"] == 464_154  # "about 0.46M"
    assert round(with_fc["resnet20"] / 1e6, 2) == 0.27
    assert round(with_fc["resnet56"] / 1e6, 2) == 0.85
    assert round(with_fc["resnet110"] / 1e6, 1) == 1.7
    assert round(with_fc["resnet18"] / 1e6, 2) == 11.17
    assert round(with_fc["wrn28_2"] / 1e6, 2) == 1.47
    assert set(BACKBONES) == set(COUNTS)


@pytest.mark.parametrize(
    "name,size,stages,fmap",
    [("resnet20", 32, 3, 8), ("resnet18", 64, 4, 8), ("resnet18", 32, 4, 4), ("wrn28_2", 32, 3, 8)],
)
def test_shapes_and_stages(name, size, stages, fmap):
    m = build_backbone(name).eval()
    x = torch.randn(2, 3, size, size)
    assert m(x).shape == (2, m.feat_dim)
    assert m.forward_features(x).shape == (2, m.feat_dim, fmap, fmap)
    for i in range(1, stages + 1):
        assert hasattr(m, f"layer{i}")


def test_greyscale_input_and_unknown_name():
    assert build_backbone("resnet20", in_channels=1)(torch.randn(2, 1, 28, 28)).shape == (2, 64)
    with pytest.raises(ValueError, match="resnet32"):
        build_backbone("vgg16")


def test_channels_last_matches_contiguous():
    m = build_backbone("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    a = m(x)
    m = m.to(memory_format=torch.channels_last)
    b = m(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(a, b, atol=1e-4)


def test_heads():
    cos = build_head("cosine", 64, 10)
    assert isinstance(cos, CosineLinear) and not any("bias" in n for n, _ in cos.named_parameters())
    x = torch.randn(8, 64)
    out = cos(x)
    assert out.shape == (8, 10) and out.abs().max() <= 1 + 1e-6
    w = cos.weight
    assert torch.allclose(
        out, (x / x.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).T, atol=1e-6
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cos(x.bfloat16()).dtype == torch.float32  # cosines kept in float32 for LDAM's s = 30
    lin = build_head("linear", 64, 16)
    assert lin(x).shape == (8, 16) and lin.bias is not None
    with pytest.raises(ValueError):
        build_head("mlp", 64, 10)
