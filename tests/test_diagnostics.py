"""The gradient diagnostic (gssl.diagnostics): the norm each weighted loss term puts on the shared backbone,
exact against independent computations, and measured without changing anything the training reads."""

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_FIXMATCH, TWO_EPOCHS_EVERY_EVENT, train_preset
from gssl import rundir
from gssl.cli import main
from gssl.config import parse_set
from gssl.diagnostics import term_norms
from gssl.engine import build_context
from gssl.gating import ALL_GATES
from gssl.losses import build_loss
from gssl.method import GatedSSL
from gssl.methods import registry
from gssl.presets import resolve

TRIPLE = ["lorot", "flip", "channel"]


def _norms(model, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    params = model.sample_params(x, torch.Generator().manual_seed(1))
    terms = model.loss_terms(x, y, build_loss("ce"), params)
    return {k: v.item() for k, v in term_norms(terms, list(model.backbone.parameters())).items()}


def _twin(ratio, gate="reference", **kw):
    torch.manual_seed(0)  # the same weights for every ratio
    return GatedSSL("resnet8", 10, tasks=TRIPLE, gate=gate, head="cosine", ssl_ratio=ratio, **kw)


def test_the_pretext_norms_scale_exactly_with_the_ratio_and_vanish_at_zero():
    base, double, zero = (_norms(_twin(r)) for r in (0.1, 0.2, 0.0))
    assert base["grad_cls"] == double["grad_cls"] == zero["grad_cls"] > 0  # the class loss does not move
    for key in ["grad_pretext", *(f"grad_{t}" for t in TRIPLE)]:
        assert base[key] > 0
        assert double[key] == pytest.approx(2 * base[key], rel=1e-5)
        assert zero[key] == 0.0


def test_one_task_under_the_uniform_gate_is_ratio_times_its_own_gradient():
    """Computed apart: transform, backbone, head, cross-entropy, torch.autograd.grad, by hand."""
    torch.manual_seed(0)
    model = GatedSSL("resnet8", 10, tasks=["lorot"], gate="uniform", head="cosine", ssl_ratio=0.25)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    params = model.sample_params(x, torch.Generator().manual_seed(1))
    norms = term_norms(model.loss_terms(x, y, build_loss("ce"), params), list(model.backbone.parameters()))
    xt, labels = model.pretext.transform(x, params)
    feat = model.backbone(xt)
    backbone = list(model.backbone.parameters())
    by_hand = {
        "grad_cls": torch.autograd.grad(
            F.cross_entropy(model.classifier(feat), y), backbone, retain_graph=True
        ),
        "grad_lorot": torch.autograd.grad(
            F.cross_entropy(model.pretext.heads["lorot"](feat), labels["lorot"]), backbone
        ),
    }
    expected = {k: torch.cat([t.flatten() for t in grads]).norm().item() for k, grads in by_hand.items()}
    assert norms["grad_cls"].item() == pytest.approx(expected["grad_cls"], rel=1e-5)
    assert norms["grad_lorot"].item() == pytest.approx(0.25 * expected["grad_lorot"], rel=1e-5)
    assert norms["grad_pretext"].item() == pytest.approx(norms["grad_lorot"].item(), rel=1e-6)


@pytest.mark.parametrize("gate", list(ALL_GATES))
def test_the_weighted_terms_add_up_to_what_the_total_puts_on_the_backbone(gate):
    """Whatever the gate, the tasks' terms carry the backbone gradient of (total - class loss)."""
    model = _twin(0.1, gate)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    params = model.sample_params(x, torch.Generator().manual_seed(1))
    backbone = list(model.backbone.parameters())
    terms = model.loss_terms(x, y, build_loss("ce"), params)
    assert list(terms) == ["cls", *TRIPLE]
    summed = torch.autograd.grad(sum(terms[t] for t in TRIPLE), backbone)
    logits, term, _ = model.class_and_pretext(x, params)
    loss_cls = build_loss("ce")(logits, y)
    whole = torch.autograd.grad(term.added_to(loss_cls, {}) - loss_cls, backbone)
    assert any(a.abs().max() > 0 for a in summed)
    for a, b in zip(summed, whole):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-10)


def _context(fake_cifar10, tmp_path, preset, *sets):
    cfg = resolve(
        preset,
        sets=[
            parse_set(s) for s in (f"data.root={fake_cifar10}", "device=cpu", *TWO_EPOCHS_EVERY_EVENT, *sets)
        ],
    )
    from gssl import distributed

    ctx = build_context(cfg, tmp_path / "run", distributed.Dist(), "cpu", quiet=True)
    return ctx, registry.build(ctx)


def test_the_diagnostic_leaves_weights_buffers_and_random_streams_as_they_were(fake_cifar10, tmp_path):
    ctx, scenario = _context(fake_cifar10, tmp_path, "cifar10-lt0.01-gated-triple", "ssl.gate=dwa")
    ctx.model.eval()
    state = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    rng, epoch = torch.get_rng_state(), scenario.train_loader.epoch
    first = scenario.diagnose(1)
    assert all(torch.equal(v, state[k]) for k, v in ctx.model.state_dict().items())  # BN statistics too
    assert torch.equal(torch.get_rng_state(), rng) and scenario.train_loader.epoch == epoch
    assert not ctx.model.training and all(p.grad is None for p in ctx.model.parameters())
    assert scenario.diagnose(1) == first  # its own streams: the same batches and draws every time
    assert scenario.diagnose(2) != first
    assert first["grad_cls"] > 0 and first["grad_ratio_pretext"] == first["grad_cls"] / first["grad_pretext"]


def test_a_run_without_pretext_tasks_logs_the_class_gradient_alone_and_fixmatch_none(fake_cifar10, tmp_path):
    _, plain = _context(fake_cifar10, tmp_path / "plain", "cifar10-lt0.01-ldam-drw")
    assert set(plain.diagnose(0)) == {"grad_cls"}
    _, semi = _context(fake_cifar10, tmp_path / "semi", "cifar10-4000-fixmatch-gated-triple", *TINY_FIXMATCH)
    assert semi.diagnose(0) == {}  # FixMatch does not split its loss


def test_every_row_logs_it_and_the_per_run_table_shows_it(fake_cifar10, tmp_path, capsys):
    run = train_preset(
        "cifar10-lt0.01-gated-triple",
        fake_cifar10,
        tmp_path / "triple",
        *TWO_EPOCHS_EVERY_EVENT,
        "compile=false",
    )
    rows = rundir.read_metrics(run)
    keys = {"grad_cls", "grad_pretext", "grad_ratio_pretext"} | {
        f"grad{r}_{t}" for r in ("", "_ratio") for t in TRIPLE
    }
    assert len(rows) == 2 and all(keys <= set(row) for row in rows)
    assert all(row["grad_ratio_lorot"] == pytest.approx(row["grad_cls"] / row["grad_lorot"]) for row in rows)
    capsys.readouterr()
    assert main(["table", str(run), "--per-run"]) == 0
    last = rows[-1]
    assert f"{last['grad_cls']:.3g} / {last['grad_pretext']:.2g} = {last['grad_ratio_pretext']:.0f}x" in (
        capsys.readouterr().out
    )


def test_diagnose_every_spaces_the_measurements_keeps_the_last_and_is_refused_where_nothing_logs(
    fake_cifar10, tmp_path, capsys
):
    """diagnose_every=2 over 3 epochs measures after epochs 2 and 3 (the last); 0 never; a method without
    the diagnostic refuses the setting (exit 2) instead of ignoring it."""
    three = [s.replace("epochs=2", "epochs=3") for s in TWO_EPOCHS_EVERY_EVENT]
    run = train_preset(
        "cifar10-lt0.01-gated-triple",
        fake_cifar10,
        tmp_path / "every2",
        *three,
        "compile=false",
        "diagnose_every=2",
    )
    rows = rundir.read_metrics(run)
    assert [row["epoch"] for row in rows if "grad_cls" in row] == [2, 3]
    assert "diagnose_every: 2" in (run / "config.yaml").read_text()
    never = train_preset(
        "cifar10-lt0.01-ldam-drw",
        fake_cifar10,
        tmp_path / "never",
        *TWO_EPOCHS_EVERY_EVENT,
        "diagnose_every=0",
    )
    rows = rundir.read_metrics(never)
    assert rows and not any(key.startswith("grad_") for row in rows for key in row)
    capsys.readouterr()
    argv = ["train", "--preset", "cifar10-dino-vit", "--set", "diagnose_every=5", "--print-config"]
    assert main(argv) == 2
    assert "diagnose_every=5: method dino logs no gradient diagnostic" in capsys.readouterr().err
