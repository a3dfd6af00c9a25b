"""Configuration: presets, overrides, validation errors, schedule scaling."""

from pathlib import Path

import pytest
import yaml

from gssl.cli import main
from gssl.config import Config, ConfigError, all_keys, parse_set
from gssl.presets import PRESETS, RATIOS, preset_dict, resolve
from gssl.runconfig import diff, from_dict, to_yaml
from gssl.schedule import scaled_schedule

ROOT = Path(__file__).resolve().parents[1]


def test_every_preset_loads_validates_and_round_trips():
    for name in PRESETS:
        cfg = resolve(name)
        assert cfg.preset == name
        again = from_dict(yaml.safe_load(to_yaml(cfg)))
        assert diff(again, cfg) == [] and to_yaml(again) == to_yaml(cfg), name


def test_presets_cover_table1_and_table2():
    methods = [
        "ldam-drw",
        "lorot",
        "gated-lorot-flip",
        "gated-lorot-channel",
        "gated-triple",
        "ungated-triple",
    ]
    for ds in ("cifar10", "cifar100"):
        for r in RATIOS:
            for m in methods:
                cfg = resolve(f"{ds}-lt{r}-{m}")
                assert cfg.data.name == ds and cfg.data.imbalance == r
                assert (
                    cfg.loss.name == "ldam"
                    and cfg.model.head == "cosine"
                    and cfg.model.backbone == "resnet32"
                )
    for m in [
        "baseline",
        "lorot",
        "gated-lorot-flip",
        "gated-lorot-channel",
        "gated-triple",
        "ungated-triple",
    ]:
        cfg = resolve(f"tiny-imagenet-{m}")
        assert cfg.model.backbone == "resnet18" and cfg.optim.batch_size == 256
        assert cfg.optim.milestones == [75, 150, 225] and cfg.optim.gamma == 0.1
    assert PRESETS["cifar10-lt0.01-gated-triple"].paper_acc == 81.67
    assert PRESETS["tiny-imagenet-gated-triple"].paper_acc == 48.99


def test_ldam_drw_protocol_is_exact():
    c = resolve("cifar10-lt0.01-ldam-drw")
    o = c.optim
    assert (o.epochs, o.batch_size, o.lr, o.momentum, o.nesterov, o.weight_decay) == (
        200,
        128,
        0.1,
        0.9,
        False,
        2e-4,
    )
    assert (o.warmup_epochs, o.milestones, o.gamma) == (5, [160, 180], 0.01)
    assert (c.loss.drw_epoch, c.loss.drw_beta, c.loss.max_margin, c.loss.scale) == (160, 0.9999, 0.5, 30.0)
    assert c.ssl.tasks == [] and c.ssl.gate == "none"
    gated = resolve("cifar10-lt0.01-gated-triple")
    assert gated.ssl.tasks == ["lorot", "flip", "channel"] and gated.ssl.gate == "reference"
    assert gated.optim.epochs == 300 and gated.ssl.ratio == 0.1 and gated.ssl.flip_axis == "H"
    assert resolve("cifar10-lt0.01-ungated-triple").ssl.gate == "uniform"


def test_shortening_epochs_scales_the_schedule():
    c = resolve("cifar10-lt0.01-ldam-drw", sets=[parse_set("optim.epochs=20")])
    warm, miles, drw = scaled_schedule(c.optim, c.loss.drw_epoch)
    assert (warm, miles, drw) == (0, [16, 18], 16)
    c = resolve("cifar10-lt0.01-gated-triple", sets=[parse_set("optim.epochs=30")])
    assert scaled_schedule(c.optim, c.loss.drw_epoch) == (0, [16, 18], 16)
    c = resolve("cifar10-lt0.01-ldam-drw", sets=[parse_set("optim.epochs=400")])
    assert scaled_schedule(c.optim, c.loss.drw_epoch) == (10, [320, 360], 320)


def test_set_overrides_parse_lists_numbers_and_fractions():
    cfg = resolve(
        "cifar10-lt0.01-ldam-drw",
        sets=[
            parse_set("ssl.tasks=[lorot,flip,channel]"),
            parse_set("data.imbalance=0.02"),
            parse_set("ssl.ratio=1/10"),
        ],
    )
    assert cfg.ssl.tasks == ["lorot", "flip", "channel"]
    assert cfg.data.imbalance == 0.02 and cfg.ssl.ratio == pytest.approx(0.1)
    assert resolve(sets=[parse_set("ssl.tasks=lorot")]).ssl.tasks == ["lorot"]


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("optim.lrr=0.1", "did you mean 'optim.lr'"),
        ("data.imbalanse=0.1", "did you mean 'data.imbalance'"),
        ("ssl.task=[lorot]", "did you mean 'ssl.tasks'"),
        ("optimizer.lr=0.1", "did you mean 'optim.lr'"),
    ],
)
def test_unknown_key_names_the_closest_valid_key(item, fragment):
    with pytest.raises(ConfigError, match=fragment):
        resolve(sets=[parse_set(item)])


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("data.imbalance=0", "data.imbalance.*\\(0, 1\\]"),
        ("data.imbalance=1.5", "data.imbalance"),
        ("ssl.ratio=-1", "ssl.ratio.*>= 0"),
        ("ssl.ratio=abc", "ssl.ratio: expected a number"),
        ("ssl.gate=moe", "ssl.gate.*reference"),
        ("ssl.tasks=[lorot,puzzle]", "ssl.tasks.*lorot, flip, channel"),
        ("ssl.tasks=[lorot,jigsaw]", "ssl.tasks.*one region"),
        ("optim.batch_size=0", "optim.batch_size.*>= 1"),
        ("optim.epochs=0", "optim.epochs.*>= 1"),
        ("optim.epochs=2.5", "optim.epochs: expected an integer"),
        ("model.backbone=vgg", "model.backbone.*resnet32"),
        ("data.hflip=maybe", "data.hflip: expected true or false"),
    ],
)
def test_invalid_values_name_the_key_and_what_is_allowed(item, fragment):
    with pytest.raises(ConfigError, match=fragment):
        resolve("cifar10-lt0.01-gated-triple", sets=[parse_set(item)])


def test_unknown_preset_suggests_one():
    with pytest.raises(ConfigError, match="did you mean 'quickstart'"):
        preset_dict("quickstrat")


def test_diff_lists_changed_keys():
    a = resolve("cifar10-lt0.01-gated-triple")
    b = resolve(
        "cifar10-lt0.01-gated-triple", sets=[parse_set("optim.lr=0.05"), parse_set("ssl.gate=learned")]
    )
    assert diff(a, b) == ["optim.lr", "ssl.gate"]
    assert diff(a, a) == []


def test_all_keys_are_dotted_and_complete():
    keys = all_keys()
    assert "optim.lr" in keys and "ssl.tasks" in keys and "seed" in keys
    assert len(keys) == len(set(keys))
    assert Config(method="supervised") == from_dict({})


def _value(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize(
    "key, value, doc, says",
    [
        ("loss.drw_beta", 0.9999, "docs/design.md", "beta 0.9999"),
        ("ssl.ratio", 0.1, "README.md", "with lambda = 0.1"),
        ("data.crop_padding", 4, "docs/design.md", "`RandomCrop(32, padding=4)`"),
    ],
)
def test_the_documented_defaults(key, value, doc, says):
    """What a config file that leaves the key out trains with, as the documentation says."""
    assert says in (ROOT / doc).read_text()
    assert _value(from_dict({}), key) == value
    assert _value(Config(), key) == value


def test_presets_keys_prints_every_key_with_its_type_default_and_meaning(capsys):
    assert main(["presets", "--keys"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == ["KEY", "TYPE", "DEFAULT", "MEANING"]
    assert [line.split()[0] for line in lines] == all_keys()
    start = [header.index(c) for c in ("TYPE", "DEFAULT", "MEANING")]
    for line in lines:
        key = line.split()[0]
        type_text, default, meaning = (line[a:b].strip() for a, b in zip(start, [*start[1:], None]))
        assert type_text and meaning, line
        printed = from_dict(parse_set(f"{key}={default}"))  # as `--set` reads it back
        expected = _value(Config(method="supervised"), key)
        if isinstance(expected, float):  # printed to six digits (8/255)
            expected = pytest.approx(expected, rel=1e-5)
        assert _value(printed, key) == expected, line
    assert any(
        line.split()[:3] == ["model.head", "str", "cosine"] and line.endswith("(linear|cosine)")
        for line in lines
    )


@pytest.mark.parametrize(
    "preset, method",
    [
        ("cifar10-lt0.01-gated-triple", "supervised"),
        ("cifar10-lt0.01-sla-sd", "sla-sd"),
        ("cifar10-4000-fixmatch-gated-triple", "fixmatch"),
        ("cifar10-simclr", "simclr"),
    ],
)
def test_the_method_is_named_in_every_resolved_config(preset, method):
    cfg = resolve(preset)
    assert cfg.method == method
    assert yaml.safe_load(to_yaml(cfg))["method"] == method


def test_old_config_files_without_method_load_with_the_method_their_sections_ask_for():
    assert from_dict({"semi": {"labels_per_class": 4}}).method == "fixmatch"
    assert from_dict({"contrastive": {"views": 2}}).method == "simclr"
    assert from_dict({"sla": {"transform": "rotation"}, "ssl": {"tasks": []}}).method == "sla-sd"
    assert from_dict({"adv": {"attack": "pgd"}}).method == "supervised"  # a wrapper, not a method


@pytest.mark.parametrize(
    "values, match",
    [
        ({"method": "fixmatch"}, r"method fixmatch needs semi\.labels_per_class"),
        (
            {"method": "supervised", "semi": {"labels_per_class": 4}},
            r"semi\.labels_per_class is set.*set method=fixmatch",
        ),
        ({"method": "moco"}, r"'moco' is not a gssl method; choose one of \['supervised'"),
        ({"semi": {"labels_per_class": 4}, "contrastive": {"views": 2}}, r"ask for two methods at once"),
        (
            {"method": "fixmatch", "semi": {"labels_per_class": 4}, "adv": {"attack": "pgd"}},
            "does not combine with FixMatch",
        ),
    ],
)
def test_a_method_its_settings_contradict_is_refused(values, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(values)


def test_config_yaml_holds_only_the_sections_the_run_uses():
    sections = lambda preset: {
        k for k, v in yaml.safe_load(to_yaml(resolve(preset))).items() if isinstance(v, dict)
    }
    common = {"data", "model", "ssl", "optim", "distributed"}
    assert sections("cifar10-lt0.01-gated-triple") == common | {"loss"}
    assert sections("cifar10-4000-fixmatch-gated-triple") == common | {"loss", "semi"}
    assert sections("cifar10-simclr") == common | {"contrastive", "fusion"}
    assert sections("cifar10-lt0.01-sla-sd") == common | {"loss", "sla"}
    adversarial = resolve("cifar10-lt0.01-gated-triple", sets=[parse_set("adv.attack=pgd")])
    assert "adv" in yaml.safe_load(to_yaml(adversarial)) and "semi" not in yaml.safe_load(
        to_yaml(adversarial)
    )
