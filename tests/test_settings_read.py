"""Every ssl.* and model.* setting, under every method and wrapper, is either honoured (the built network
or its first step differs from the unchanged run's) or refused with a ConfigError naming it: never
silently ignored. The keys come from the config dataclasses, so a new key is covered without a line here."""

import dataclasses

import pytest
import torch

from conftest import DINO_TINY, TINY_FIXMATCH
from gssl import engine
from gssl.config import ConfigError, ModelConfig, SSLConfig, parse_set
from gssl.distributed import Dist
from gssl.methods import registry
from gssl.presets import resolve

SMALL = ["model.backbone=resnet8", "optim.batch_size=16", "compile=false"]
TRIPLE = "ssl.tasks=[lorot,flip,channel]"  # every pretext setting has a reader, the flip axis included

# the small run each method is checked on: its preset and settings (pretext tasks wherever it takes them)
BASES = {
    "supervised": ("cifar10-lt0.01-gated-triple", [*SMALL, "data.imbalance=0.5"]),
    "sla-sd": ("cifar10-lt0.01-sla-sd", [*SMALL, "data.imbalance=0.5"]),
    "fixmatch": ("cifar10-4000-fixmatch-gated-triple", [*SMALL, *TINY_FIXMATCH, TRIPLE]),
    "simclr": ("cifar10-simclr-gated-pretext", [*SMALL, TRIPLE, "contrastive.linear_epochs=0"]),
    "dino": ("cifar10-dino-selfpatch-gated-vit", [*DINO_TINY, "compile=false", TRIPLE]),
    "adversarial": ("cifar10-lt0.01-gated-triple", [*SMALL, "data.imbalance=0.5", "adv.attack=fgsm"]),
    "ssp": ("cifar10-lt0.01-gated-triple", [*SMALL, "data.imbalance=0.5", "pretrain.epochs=1"]),
}
KEYS = [
    (section, field)
    for section, cls in (("ssl", SSLConfig), ("model", ModelConfig))
    for field in dataclasses.fields(cls)
]
TASK_LISTS = [["lorot"], ["rotation"], ["lorot", "flip", "channel"]]


def other_value(field: dataclasses.Field, base):
    """A valid value unlike the run's, and unlike the default where there is a third: what "setting the key"
    means here."""
    default = field.default_factory() if field.default is dataclasses.MISSING else field.default
    if "choices" in field.metadata:
        candidates = list(field.metadata["choices"])
    elif isinstance(base, bool):
        candidates = [not base]
    elif isinstance(base, list):
        candidates = TASK_LISTS
    else:
        candidates = [base * 2 if base else 0.5, base * 3 if base else 0.25]
    unlike_base = [v for v in candidates if v != base]
    return next((v for v in unlike_base if v != default), unlike_base[0])


def yaml_text(value) -> str:
    if isinstance(value, list):
        return "[" + ",".join(value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def first_step(cfg, run_dir):
    """What a setting can change: the parameters' names and shapes, the module types, the first loss."""
    ctx = engine.build_context(cfg, run_dir, Dist(), "cpu", quiet=True)
    scenario = registry.build(ctx)
    scenario.start_epoch(0)
    x, y = next(iter(scenario.batches(0)[0]))
    generator = torch.Generator().manual_seed(engine.pretext_seed(cfg.seed, 0))
    loss, _ = scenario.loss(ctx.model, *scenario.prepare(x, y, generator, 0, 0))
    shapes = {name: tuple(value.shape) for name, value in ctx.model.state_dict().items()}
    return shapes, [type(m).__name__ for m in ctx.model.modules()], loss.item()


@pytest.mark.parametrize("method", sorted(BASES))
def test_every_ssl_and_model_key_is_honoured_or_refused(method, fake_cifar10, tmp_path):
    preset, sets = BASES[method]
    sets = [f"data.root={fake_cifar10}", *sets]
    base = resolve(preset, sets=[parse_set(s) for s in sets])
    wrappers = [name for name, wrapper in registry.WRAPPERS.items() if wrapper.applies(base)]
    assert method in (registry.method_of(base), *wrappers)  # the base runs what it is named for
    unchanged = first_step(base, tmp_path / "base")
    ignored = []
    for section, field in KEYS:
        key = f"{section}.{field.name}"
        value = other_value(field, getattr(getattr(base, section), field.name))
        try:
            cfg = resolve(preset, sets=[parse_set(s) for s in (*sets, f"{key}={yaml_text(value)}")])
            changed = first_step(cfg, tmp_path / key)
        except ConfigError as refused:
            assert key in str(refused), f"{key}={value} refused without naming it: {refused}"
            continue
        if changed == unchanged:
            ignored.append(f"{key}={value}")
    assert not ignored, f"method {method} silently ignores {ignored}"


# Settings a protocol file states for all its rows, read only where their part of the run exists
# (registry.READ_ONLY_WITH): the user's own value where nothing reads it is refused; the protocol's stays.
UNREAD = [
    ("cifar10-lt0.01-ldam-drw", "ssl.ratio=0.5"),  # no pretext tasks
    ("cifar10-simclr", "ssl.ratio=0.5"),
    ("cifar10-lt0.01-lorot", "ssl.flip_axis=W"),  # tasks, but not the flip task
    ("cifar10-lt0.01-ldam-drw", "ssl.flip_axis=W"),
    ("cifar10-simclr", "model.head=cosine"),  # no classifier, no pretext heads
    ("cifar10-dino-vit", "model.head=cosine"),
]
READ = [
    ("cifar10-lt0.01-lorot", "ssl.ratio=0.5"),
    ("cifar10-lt0.01-gated-triple", "ssl.flip_axis=W"),
    ("cifar10-lt0.01-ldam-drw", "model.head=linear"),  # the classifier reads it
    ("cifar10-simclr-gated-pretext", "model.head=cosine"),  # the pretext heads read it
]


@pytest.mark.parametrize("preset, setting", UNREAD)
def test_a_setting_given_where_nothing_reads_it_is_refused_and_nothing_is_written(
    preset, setting, tmp_path, capsys
):
    from gssl.cli import main

    out = tmp_path / "run"
    assert main(["train", "--preset", preset, "--set", setting, "--out", str(out)]) == 2
    key = setting.split("=")[0]
    error = capsys.readouterr().err
    assert f"{setting} changes nothing in this run" in error and "remove it" in error, error
    assert not out.exists()
    with pytest.raises(ConfigError, match=key):
        resolve(preset, sets=[parse_set(setting)])


@pytest.mark.parametrize("preset, setting", READ)
def test_the_same_setting_is_taken_where_something_reads_it(preset, setting):
    key, value = setting.split("=")
    section, name = key.split(".")
    assert str(getattr(getattr(resolve(preset, sets=[parse_set(setting)]), section), name)) == value


def test_the_protocols_own_value_stays_where_nothing_reads_it_and_a_saved_config_is_taken_again(tmp_path):
    """tiny-imagenet-baseline has no flip task, and its protocol flips left-right for the rows that do;
    a run's saved config.yaml, given back as a config file, changes nothing from its preset."""
    from gssl.config import load_yaml
    from gssl.runconfig import to_yaml

    cfg = resolve("tiny-imagenet-baseline")
    assert cfg.ssl.flip_axis == "W" and cfg.ssl.tasks == []
    simclr = resolve("cifar10-simclr")
    (tmp_path / "config.yaml").write_text(to_yaml(simclr))
    assert resolve(config=load_yaml(tmp_path / "config.yaml")) == simclr
