"""The package's layers (issue 45): the configuration is a pure schema that loads no torch, each way of
training owns its settings and switch in its folder, and no top-level module shares a name with a part of
a method (the import-linter contract in pyproject.toml checks the layers themselves)."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gssl.config import Config, ConfigError, parse
from gssl.methods.registry import SCENARIOS, WRAPPERS
from gssl.methods.settings import SETTINGS, SWITCHES
from gssl.runconfig import from_dict

SRC = Path(__file__).resolve().parents[1] / "src" / "gssl"


def test_parsing_a_configuration_loads_no_torch():
    code = (
        "import json, sys\n"
        "from gssl.config import parse\n"
        "cfg = parse({'semi': {'labels_per_class': 4}, 'dino': {'local_crops': 2}, 'adv': {'eps': 0.1}})\n"
        "torch = sorted(m for m in sys.modules if m.split('.')[0] == 'torch')\n"
        "print(json.dumps([cfg.semi.labels_per_class, torch]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    labels, torch_modules = json.loads(out)
    assert labels == 4 and torch_modules == []


def test_each_method_owns_its_sections_in_its_folder():
    for section, settings in SETTINGS.items():
        assert settings.__module__.startswith("gssl.methods.") and settings.__module__.endswith(".settings")
        assert isinstance(getattr(Config(), section), settings), section
    # the sections a scenario or wrapper reads are its own or the common ones
    own = {s for cls in (*SCENARIOS.values(), *WRAPPERS.values()) for s in cls.sections}
    assert set(SETTINGS) <= own | {"selfpatch", "fusion"} and own - set(SETTINGS) == {"loss"}


def test_the_switches_are_derived_from_the_settings():
    assert list(SWITCHES) == [
        "sla.transform",
        "pretrain.epochs",
        "adv.attack",
        "semi.labels_per_class",
        "contrastive.views",
        "fusion.enabled",
    ]
    for key, is_on in SWITCHES.items():
        section, name = key.split(".")
        default = Config()
        assert not is_on(default), key
        field = next(f for f in dataclasses.fields(SETTINGS[section]) if f.name == name)
        assert field.metadata["help"], key
    on = parse({"semi": {"labels_per_class": 4}, "adv": {"attack": "pgd"}})
    assert [key for key, is_on in SWITCHES.items() if is_on(on)] == ["adv.attack", "semi.labels_per_class"]
    # each scenario's and wrapper's trigger is a switch, and claims or applies by it
    for cls in (*SCENARIOS.values(), *WRAPPERS.values()):
        assert not cls.trigger or cls.trigger in SWITCHES, cls
    assert SCENARIOS["fixmatch"].claims(on) and WRAPPERS["adversarial"].applies(on)
    assert not SCENARIOS["simclr"].claims(on) and not WRAPPERS["ssp"].applies(on)


def test_the_schema_alone_does_not_check_methods_a_run_does():
    values = {"method": "supervised", "semi": {"labels_per_class": 4}}
    assert parse(values).method == "supervised"  # the schema: every value valid
    with pytest.raises(ConfigError, match="semi.labels_per_class is set, which is fixmatch's"):
        from_dict(values)  # a run's configuration: its method checked
    with pytest.raises(ConfigError, match="did you mean 'semi.labels_per_class'"):
        parse({"semi": {"label_per_class": 4}})  # the same did-you-mean from a method's own section


def test_no_top_level_module_shares_a_name_with_a_part_of_a_method():
    top = {p.stem for p in SRC.glob("*.py")} - {"__init__", "__main__"}
    method_parts = {p.stem for p in (SRC / "methods").rglob("*.py")} - {"__init__"}
    folders = {p.name for p in (SRC / "methods").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert not top & (method_parts | folders)
    assert folders == {"supervised", "sla_sd", "fixmatch", "simclr", "dino", "adversarial", "ssp"}


@pytest.mark.parametrize(
    "values, shape, fragment",
    [
        ({"sla": {"transform": "rotation"}}, (3, 32, 48), "sla.transform=rotation needs square images"),
        ({"sla": {"transform": "channel"}}, (1, 28, 28), "sla.transform=channel needs 3-channel images"),
        (
            {"contrastive": {"views": 2}, "fusion": {"enabled": True, "patch": 5}},
            (3, 32, 32),
            "fusion.patch=5 must divide the image sides",
        ),
    ],
)
def test_a_methods_own_image_needs_are_its_scenarios(values, shape, fragment):
    """build.check_shapes names no method; the registry adds the run's scenario's check_images."""
    from gssl.build import check_shapes as backbone_and_pretext_checks
    from gssl.methods.registry import check_shapes

    cfg = from_dict({**values, "data": {"name": "cifar10"}})
    backbone_and_pretext_checks(cfg, *shape)  # not the method's concern there
    with pytest.raises(ConfigError, match=fragment):
        check_shapes(cfg, *shape)
    check_shapes(cfg, *((3, 32, 32) if shape != (3, 32, 32) else (3, 30, 30)))  # the same method, fitting
