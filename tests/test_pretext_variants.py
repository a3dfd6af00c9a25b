"""Issue 47's deviations, each a setting: a learned temperature per pretext head, the class loss on the clean
image, and ssl.ratio 0 as "the quadrant transforms as augmentation only"; settings no part of a run reads
are refused; the sweep's records read beside the faithful ones in one table."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gssl import sweep
from gssl.cli import main
from gssl.config import ConfigError, parse_set
from gssl.losses import build_loss
from gssl.method import GatedSSL
from gssl.presets import VARIANTS, resolve
from gssl.runconfig import to_yaml

TRIPLE = ["lorot", "flip", "channel"]
REPO = Path(__file__).resolve().parents[1]


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)


def _model(**kw):
    torch.manual_seed(0)
    return GatedSSL("resnet8", 10, tasks=TRIPLE, gate="reference", head="cosine", **kw)


def test_the_learned_temperature_starts_at_the_fixed_scale_and_learns():
    x, y = _batch()
    fixed, learned = _model(pretext_scale=30.0), _model(pretext_scale=30.0, pretext_scale_learned=True)
    assert "pretext.log_scale" not in fixed.state_dict()  # the faithful model's checkpoints are unchanged
    assert torch.allclose(learned.pretext.log_scale, torch.full((3,), math.log(30.0)))
    learned.load_state_dict(fixed.state_dict(), strict=False)
    params = fixed.sample_params(x, torch.Generator().manual_seed(1))
    loss_fixed, stats_fixed = fixed.loss_from_params(x, y, build_loss("ce"), params)
    loss_learned, stats_learned = learned.loss_from_params(x, y, build_loss("ce"), params)
    assert torch.allclose(loss_fixed, loss_learned, rtol=1e-5)  # at the start: the fixed scale's loss
    assert stats_learned["pretext_scale_lorot"].item() == pytest.approx(30.0)
    loss_learned.backward()
    assert learned.pretext.log_scale.grad is not None and learned.pretext.log_scale.grad.abs().min() > 0
    with torch.no_grad():
        learned.pretext.log_scale.fill_(0.0)  # scale 1: the reference's raw cosines
    xt, labels = learned.pretext.transform(x, params)
    cos = learned.pretext.heads["flip"](learned.backbone(xt))
    _, stats = learned.loss_from_params(x, y, build_loss("ce"), params)
    assert stats["ssl_flip"].item() == pytest.approx(F.cross_entropy(cos, labels["flip"]).item(), rel=1e-5)


def test_the_clean_class_loss_is_the_class_loss_of_a_second_pass_on_the_clean_image():
    x, y = _batch()
    model = _model(clean_class_loss=True)
    params = model.sample_params(x, torch.Generator().manual_seed(1))
    counter = (
        model.backbone.bn1
        if hasattr(model.backbone, "bn1")
        else next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    )
    before = int(counter.num_batches_tracked)
    loss, stats = model.loss_from_params(x, y, build_loss("ce"), params)
    assert int(counter.num_batches_tracked) == before + 2  # two forward passes
    model.eval()  # the same batch statistics are gone; compare in eval mode, one pass each
    logits, term, _ = model.class_and_pretext(x, params)
    assert torch.equal(logits, model(x))  # the clean image's logits
    transformed_logits = model.train_forward(x, params)[0]
    assert not torch.allclose(logits, transformed_logits)
    ce = F.cross_entropy(logits, y)
    assert torch.allclose(term.added_to(ce, {}), ce + term.value)


def test_ratio_zero_is_the_quadrant_transform_as_plain_augmentation():
    """The backbone's gradient is exactly the class loss's on the transformed batch; the heads get zero."""
    x, y = _batch()
    model = _model(ssl_ratio=0.0)
    params = model.sample_params(x, torch.Generator().manual_seed(1))
    loss, _ = model.loss_from_params(x, y, build_loss("ce"), params)
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    xt, _ = model.pretext.transform(x, params)
    F.cross_entropy(model.classifier(model.backbone(xt)), y).backward()
    for name, param in model.named_parameters():
        if name.startswith(("backbone.", "classifier.")):
            assert torch.equal(got[name], param.grad), name
    heads = [n for n in got if n.startswith("pretext.heads.")]
    assert len(heads) == 3 and all(not got[n].any() for n in heads)
    assert not any(n.startswith("pretext.gate.") for n in got)  # the reference gate never has a gradient


@pytest.mark.parametrize(
    "preset, setting, fragment",
    [
        (
            "cifar10-lt0.01-ldam-drw",
            "ssl.clean_class_loss=true",
            r"ssl.clean_class_loss=true is a setting of the pretext tasks, but this run has none",
        ),
        ("cifar10-lt0.01-lorot", "ssl.gate=none", None),
        (
            "cifar10-simclr-gated-pretext",
            "ssl.clean_class_loss=true",
            r"ssl.clean_class_loss=true is not read by method simclr \(only by supervised\)",
        ),
        ("cifar10-dino-selfpatch-gated-vit", "ssl.clean_class_loss=true", r"not read by method dino"),
        (
            "cifar10-4000-fixmatch-gated-triple",
            "ssl.clean_class_loss=true",
            r"not read by method fixmatch \(only by supervised\)",
        ),
        ("cifar10-lt0.01-sla-sd", "ssl.pretext_scale=30", r"not read by method sla-sd"),
    ],
)
def test_a_pretext_setting_nothing_reads_is_refused(preset, setting, fragment):
    sets = [parse_set(setting)]
    if fragment is None:  # lorot with the gate off: no pretext term, so the scale has nothing to scale
        sets.append(parse_set("ssl.pretext_scale=30"))
        fragment = r"ssl.pretext_scale=30.0 is a setting of the pretext tasks, but this run has none"
    with pytest.raises(ConfigError, match=fragment):
        resolve(preset, sets=sets)


def test_the_refusal_exits_2_and_the_readers_accept_them(tmp_path, capsys):
    argv = ["train", "--preset", "cifar10-lt0.01-ldam-drw", "--set", "ssl.pretext_scale_learned=true"]
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    assert "remove ssl.pretext_scale_learned (default false)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert resolve("cifar10-4000-fixmatch-gated-triple", sets=[parse_set("ssl.pretext_scale_learned=true")])
    cfg = resolve(
        "cifar10-lt0.01-gated-triple",
        sets=[parse_set("adv.attack=pgd"), parse_set("ssl.clean_class_loss=true")],
    )
    assert cfg.ssl.clean_class_loss  # adversarial training wraps the supervised step, which reads it


def test_each_variant_preset_is_the_gated_triple_with_its_one_setting():
    triple = resolve("cifar10-lt0.01-gated-triple").ssl
    changed = {
        "gated-triple-transform-only": {"ratio": 0.0},
        "gated-triple-scaled": {"pretext_scale": 30.0},
        "gated-triple-temperature": {"pretext_scale": 30.0, "pretext_scale_learned": True},
        "gated-triple-clean-cls": {"clean_class_loss": True},
    }
    assert set(changed) == set(VARIANTS)
    for name, settings in changed.items():
        ssl = resolve(f"cifar100-lt0.02-{name}").ssl
        differ = {k: v for k, v in vars(ssl).items() if vars(triple)[k] != v}
        assert differ == settings, name


def _fake_records(path: Path, root: Path, names=None) -> list:
    jobs = [job for job in sweep.jobs_from_file(path) if names is None or job.name in names]
    for i, job in enumerate(jobs):
        job.out = root / job.out
        job.run_dir.mkdir(parents=True)
        (job.run_dir / "config.yaml").write_text(to_yaml(job.resolved()))
        (job.run_dir / "summary.json").write_text(
            json.dumps({"test_acc": 60.0 + i, "best_test_acc": 61.0 + i})
        )
    return jobs


def test_the_sweep_reads_beside_the_faithful_records_in_one_table(tmp_path, capsys):
    sweeps = REPO / "configs" / "sweeps"
    faithful = _fake_records(sweeps / "cifar10-lt-45ep.yaml", tmp_path, {"ldam-drw", "lorot", "gated-triple"})
    pretext = _fake_records(sweeps / "cifar10-lt-45ep-pretext.yaml", tmp_path)
    assert len(pretext) == 33 and pretext[0].name == "transform-only"
    capsys.readouterr()
    folders = [str(tmp_path / "results" / name) for name in ("cifar10-lt-45ep", "cifar10-lt-45ep-pretext")]
    assert main(["table", *folders]) == 0
    rows = [
        line.split(" | ")[0][2:] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")
    ]
    rows = [r for r in rows if r not in ("method", "")]
    assert rows[0] == "ldam-drw"  # the baseline of every difference
    assert len(rows) == len(set(rows)) == 3 + 11  # one row per sweep row, none merged with another
    assert "gated-triple (ssl.ratio=0.5)" in rows and "gated-triple-scaled (ssl.ratio=1.0)" in rows
    assert "gated-lorot-channel (ssl.clean_class_loss=True, ssl.gate=uniform, ssl.ratio=10.0)" in rows
    assert "gated-lorot-channel (ssl.clean_class_loss=True, ssl.gate=learned, ssl.ratio=20.0)" in rows
    assert "gated-triple-clean-cls (ssl.pretext_scale=30.0, ssl.ratio=1.0)" in rows
    assert len(faithful) == 9


def test_the_variants_steps_make_no_host_values():
    """The learned temperature and the clean class pass stay on the device, as every gate's step does."""
    from test_fastpath import HostValues

    x, y = _batch()
    model = _model(pretext_scale=30.0, pretext_scale_learned=True, clean_class_loss=True)
    params = model.sample_params(x, torch.Generator().manual_seed(1))
    with HostValues() as host:
        loss, _ = model.loss_from_params(x, y, build_loss("ce"), params)
        loss.backward()
    assert host.found == [], sorted(set(host.found))
