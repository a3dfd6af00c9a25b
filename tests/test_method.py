import pytest
import torch
import torch.nn.functional as F

from gssl.losses import build_loss
from gssl.method import GatedSSL

TRIPLE = ["lorot", "flip", "channel"]
COUNTS = [50, 40, 30, 20, 10, 8, 6, 4, 3, 2]


def batch(B=8, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, size, size, generator=g), torch.randint(10, (B,), generator=g)


@pytest.mark.parametrize("gate", ["reference", "learned", "uniform"])
def test_training_loss_stats_and_gradients(gate):
    model = GatedSSL("resnet20", 10, tasks=TRIPLE, gate=gate)
    x, y = batch()
    loss, stats = model.training_loss(x, y, build_loss("ce"), torch.Generator().manual_seed(0))
    keys = {"loss", "cls_loss", "correct", "aux"} | {
        f"{p}_{t}" for p in ("ssl", "gate", "pretext_acc") for t in TRIPLE
    }
    assert set(stats) == keys
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in stats.values())
    assert torch.isfinite(loss) and 0 <= stats["correct"] <= 8
    loss.backward()
    assert all(model.pretext.heads[t].weight.grad is not None for t in TRIPLE)
    gate_grads = [p.grad for p in model.pretext.gate.parameters()]
    if gate == "reference":
        assert gate_grads and all(g is None for g in gate_grads)  # the reference gate never learns
    elif gate == "learned":
        assert all(g is not None for g in gate_grads)
    expected_weights = torch.stack([stats[f"gate_{t}"] for t in TRIPLE])
    assert expected_weights.sum().item() == pytest.approx(3.0 if gate == "uniform" else 1.0, rel=1e-5)


def test_loss_is_the_documented_formula():
    """Classifier loss on the TRANSFORMED image (as the code), pretext CE per head, gate, ratio."""
    torch.manual_seed(0)
    model = GatedSSL("resnet20", 10, tasks=TRIPLE, gate="uniform", ssl_ratio=0.1).eval()
    x, y = batch()
    params = model.sample_params(x, torch.Generator().manual_seed(1))
    loss, stats = model.loss_from_params(x, y, build_loss("ce"), params)
    xt, labels = model.pretext.transform(x, params)
    feat = model.backbone(xt)
    cls = F.cross_entropy(model.classifier(feat), y)
    ssl = sum(F.cross_entropy(model.pretext.heads[t](feat), labels[t]) for t in TRIPLE)
    assert torch.allclose(loss, cls + 0.1 * ssl, atol=1e-5)
    assert torch.allclose(stats["cls_loss"], cls, atol=1e-6)
    assert not torch.allclose(model(x), model.classifier(feat))  # test time: untransformed image


def test_cosine_heads_with_ldam_use_raw_cosines_for_pretext():
    model = GatedSSL("resnet20", 10, tasks=["lorot"], head="cosine", gate="reference").eval()
    x, y = batch()
    params = model.sample_params(x, torch.Generator().manual_seed(0))
    loss, stats = model.loss_from_params(x, y, build_loss("ldam", COUNTS), params)
    xt, labels = model.pretext.transform(x, params)
    cos = model.pretext.heads["lorot"](model.backbone(xt))
    assert cos.abs().max() <= 1 + 1e-6
    assert torch.allclose(stats["ssl_lorot"], F.cross_entropy(cos, labels["lorot"]), atol=1e-5)
    assert stats["gate_lorot"].item() == pytest.approx(1.0)  # one task: softmax of one logit


@pytest.mark.parametrize("kw", [{"tasks": []}, {"tasks": TRIPLE, "gate": "none"}])
def test_plain_supervised(kw):
    model = GatedSSL("resnet20", 10, **kw)
    assert model.pretext is None and not [
        n for n, _ in model.named_parameters() if not n.startswith(("backbone", "classifier"))
    ]
    x, y = batch()
    loss, stats = model.training_loss(x, y, build_loss("ce"), torch.Generator())
    assert set(stats) == {"loss", "cls_loss", "correct", "aux"}
    assert torch.allclose(loss, F.cross_entropy(model(x), y), atol=1e-5)


def test_same_seed_same_step():
    model = GatedSSL("resnet20", 10, tasks=TRIPLE).eval()
    x, y = batch()
    a, _ = model.training_loss(x, y, build_loss("ce"), torch.Generator().manual_seed(3))
    b, _ = model.training_loss(x, y, build_loss("ce"), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.slow
def test_lorot_i_and_rotation_baselines_and_greyscale():
    x, y = batch()
    for tasks in (["lorot_i"], ["rotation"]):
        loss, stats = GatedSSL("resnet20", 10, tasks=tasks).training_loss(
            x, y, build_loss("ce"), torch.Generator()
        )
        assert torch.isfinite(loss) and f"ssl_{tasks[0]}" in stats
    grey = x[:, :1].expand(-1, 3, -1, -1).contiguous()  # replicated greyscale: channel task is uninformative
    model = GatedSSL("resnet20", 10, tasks=TRIPLE, gate="learned")
    loss, _ = model.training_loss(grey, y, build_loss("ce"), torch.Generator())
    assert torch.isfinite(loss)
    model = GatedSSL("resnet20", 10, in_channels=1, tasks=["lorot", "flip"])
    loss, _ = model.training_loss(torch.randn(4, 1, 28, 28), y[:4], build_loss("ce"), torch.Generator())
    assert torch.isfinite(loss)


@pytest.mark.parametrize("gate", ["reference", "learned"])
def test_bf16_autocast_channels_last(gate):
    model = GatedSSL("resnet20", 10, tasks=TRIPLE, gate=gate, head="cosine").to(
        memory_format=torch.channels_last
    )
    x, y = batch()
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = model.training_loss(x, y, build_loss("ldam", COUNTS), torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.slow
@pytest.mark.compiles
def test_dynamo_traces_the_training_step_without_graph_breaks():
    """The pure part of the step (transform, forward, losses, gate) is one graph; the random
    draw (sample_params) stays outside it. Learned gate + cosine heads + LDAM: the most code."""
    model = GatedSSL("resnet20", 10, tasks=TRIPLE, gate="learned", head="cosine")
    x, y = batch(B=4)
    loss_fn = build_loss("ldam", COUNTS)
    params = model.sample_params(x, torch.Generator().manual_seed(0))
    explanation = torch._dynamo.explain(model.loss_from_params)(x, y, loss_fn, params)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
@pytest.mark.compiles
def test_compiled_step_matches_eager_forward_and_backward():
    """fullgraph=True fails on any graph break; aot_eager also traces the backward (no C compiler)."""
    model = GatedSSL("resnet20", 10, tasks=TRIPLE, gate="learned")
    x, y = batch(B=4)
    loss_fn = build_loss("ce")
    params = model.sample_params(x, torch.Generator().manual_seed(0))
    step = torch.compile(model.loss_from_params, backend="aot_eager", fullgraph=True)
    loss, _ = step(x, y, loss_fn, params)
    loss.backward()
    compiled = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref, _ = model.loss_from_params(x, y, loss_fn, params)
    ref.backward()
    assert torch.allclose(loss, ref, atol=1e-5)
    assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in zip(compiled, model.parameters()))


def test_pretext_accuracy_is_each_heads_share_of_right_answers():
    """pretext_acc_<task>: percent of the batch whose transformation the head names correctly, computed
    independently from the heads' logits on the transformed batch."""
    torch.manual_seed(0)
    model = GatedSSL("resnet8", 10, tasks=TRIPLE, gate="uniform")
    x, _ = batch(B=16)
    params = model.sample_params(x, torch.Generator().manual_seed(3))
    _, _, stats = model.train_forward(x, params)
    xt, labels = model.pretext.transform(x, params)
    feat = model.backbone(xt)
    for t in TRIPLE:
        right = (model.pretext.heads[t](feat).argmax(1) == labels[t]).float().mean().item()
        assert stats[f"pretext_acc_{t}"].item() == pytest.approx(100 * right)
    assert labels["flip"].unique().numel() == 2  # both flip labels are drawn in a batch of 16


def test_checkpoints_from_before_the_pretext_component_still_load():
    """Old run directories name the pretext parts heads.* and gate.*; they load under pretext.*."""
    torch.manual_seed(0)
    model = GatedSSL("resnet8", 10, tasks=TRIPLE, gate="learned", head="cosine")
    old = {k.replace("pretext.", "", 1): v.clone() for k, v in model.state_dict().items()}
    assert any(k.startswith("heads.") for k in old) and any(k.startswith("gate.") for k in old)
    torch.manual_seed(1)
    fresh = GatedSSL("resnet8", 10, tasks=TRIPLE, gate="learned", head="cosine")
    fresh.load_state_dict(old)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_pretext_scale_multiplies_the_head_logits_before_the_cross_entropy():
    torch.manual_seed(0)
    faithful = GatedSSL("resnet8", 10, tasks=["lorot"], gate="uniform", head="cosine")
    scaled = GatedSSL("resnet8", 10, tasks=["lorot"], gate="uniform", head="cosine", pretext_scale=30.0)
    scaled.load_state_dict(faithful.state_dict())
    x = torch.randn(8, 3, 32, 32)
    params = faithful.sample_params(x, torch.Generator().manual_seed(0))
    feat = faithful.backbone(faithful.pretext.transform(x, params)[0])
    labels = faithful.pretext.transform(x, params)[1]["lorot"]
    cos = faithful.pretext.heads["lorot"](feat)
    _, _, stats_1 = faithful.train_forward(x, params)
    _, _, stats_30 = scaled.train_forward(x, params)
    assert torch.allclose(stats_1["ssl_lorot"], F.cross_entropy(cos, labels), atol=1e-5)
    assert torch.allclose(stats_30["ssl_lorot"], F.cross_entropy(30 * cos, labels), atol=1e-4)
