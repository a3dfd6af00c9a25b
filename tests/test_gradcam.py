"""Grad-CAM on a problem where we know where the evidence is.

Synthetic 32x32 images of uniform noise. Classes 1-3 put an 8x8 high-contrast pattern (horizontal
stripes, vertical stripes, checkerboard: the same mean brightness as the noise, so only the local
structure tells them apart) near the centre of one random quadrant per image; class 0 has no pattern.
The empty class matters: without it, one pattern class can be recognised by the *absence* of the
others, and its true evidence is then everywhere but the patch (we saw a third of the images miss
that way). A ResNet-20 trained for 40 steps classifies the patterns perfectly; the Grad-CAM peak on
its last stage must then fall in the pattern's quadrant for at least 90% of the patterned test images
(measured: 100% on several seeds, mean heatmap mass in that quadrant about 0.84; chance is 25%).
"""

import pytest
import torch
import torch.nn.functional as F

from gssl.analysis.gradcam import default_layer, grad_cam, peak_quadrant, quadrant_mass, stage_names
from gssl.method import GatedSSL

S, P, JITTER = 32, 8, 3


def _patterns() -> torch.Tensor:
    i, j = torch.arange(P).view(-1, 1), torch.arange(P).view(1, -1)
    return torch.stack([(i % 2).expand(P, P), (j % 2).expand(P, P), (i + j) % 2]).float()


def make_images(n: int, g: torch.Generator):
    """(normalised images [n, 3, S, S], labels 0..3, the quadrant holding the pattern 0..3)."""
    y = torch.randint(4, (n,), generator=g)
    q = torch.randint(4, (n,), generator=g)
    x = 0.3 + 0.4 * torch.rand(n, 3, S, S, generator=g)
    h = S // 2
    off = (h - P) // 2 + torch.randint(-JITTER, JITTER + 1, (n, 2), generator=g)
    pats = _patterns()
    for k in range(n):
        if y[k] > 0:
            r, c = (q[k] // 2) * h + off[k, 0], (q[k] % 2) * h + off[k, 1]
            x[k, :, r : r + P, c : c + P] = pats[y[k] - 1]
    return (x - 0.5) / 0.25, y, q


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is as fast and does not fight other jobs
    try:
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        x, y, _ = make_images(1024, g)
        model = GatedSSL("resnet20", 4, tasks=[], gate="none")
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(40):
            idx = torch.randint(len(x), (32,), generator=g)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        xt, yt, qt = make_images(96, g)
        yield model.eval(), xt, yt, qt
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_heatmap_peak_falls_in_the_quadrant_holding_the_evidence(trained):
    model, x, y, q = trained
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.9, "the toy problem was not learned"
    has = y > 0
    cams, logits = grad_cam(model, x[has], y[has])  # default layer: the last stage, layer3
    assert cams.shape == (int(has.sum()), S, S) and logits.shape == (int(has.sum()), 4)
    assert cams.min() >= 0 and cams.max() <= 1
    hit = (peak_quadrant(cams) == q[has]).float().mean().item()
    mass = quadrant_mass(cams)[torch.arange(len(cams)), q[has]].mean().item()
    assert hit >= 0.9, f"Grad-CAM peak in the evidence quadrant for only {hit:.0%} of images"
    assert mass > 0.5, f"only {mass:.2f} of the heatmap in the evidence quadrant (chance 0.25)"
    # an earlier, finer stage localises too
    cams2, _ = grad_cam(model, x[has], y[has], layer="layer2")
    assert (peak_quadrant(cams2) == q[has]).float().mean().item() >= 0.9


def test_predicted_class_by_default_and_model_left_as_it_was(trained):
    model, x, y, _ = trained
    model.zero_grad(set_to_none=True)  # the fixture's last training step left gradients
    model.train()
    cams, logits = grad_cam(model, x[:6])
    assert model.training, "train/eval mode restored"
    assert all(p.grad is None for p in model.parameters()), "parameter gradients untouched"
    explicit, _ = grad_cam(model, x[:6], logits.argmax(1))
    torch.testing.assert_close(cams, explicit)
    model.eval()


def test_peak_quadrant_and_mass_follow_the_pretext_numbering():
    cam = torch.zeros(4, 8, 8)
    cam[0, 1, 1] = cam[1, 2, 6] = cam[2, 5, 0] = cam[3, 7, 7] = (
        1  # top-left, top-right, bottom-left, bottom-right
    )
    assert peak_quadrant(cam).tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(quadrant_mass(cam), torch.eye(4))


def test_stages_per_backbone_and_bad_layer():
    assert default_layer(GatedSSL("resnet20", 3)) == "layer3"
    assert default_layer(GatedSSL("resnet18", 3)) == "layer4"
    assert stage_names(GatedSSL("wrn28_2", 3)) == ["layer1", "layer2", "layer3"]
    with pytest.raises(ValueError, match="layer1, layer2, layer3"):
        grad_cam(GatedSSL("resnet20", 3), torch.randn(1, 3, 32, 32), layer="layer4")


def test_flat_map_gives_zeros_not_nan():
    model = GatedSSL("resnet20", 3).eval()
    for p in model.classifier.parameters():
        torch.nn.init.zeros_(p)  # every score constant: no gradient, no evidence anywhere
    cams, _ = grad_cam(model, torch.randn(2, 3, 32, 32))
    assert torch.isfinite(cams).all() and cams.abs().max() == 0
