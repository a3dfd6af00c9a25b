"""Property: any value of any type for any configuration key is either accepted or refused with
gssl's own ConfigError (exit code 2 at the command line), never another exception."""

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gssl.cli import main
from gssl.config import Config, ConfigError, all_keys, load_yaml, parse_set
from gssl.presets import resolve
from gssl.runconfig import from_dict

KEYS = all_keys()
SECTIONS = sorted({k.split(".")[0] for k in KEYS if "." in k})

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["lorot", "flip", "cifar10", "reference", "1/0", "8/255", "1e999", "nan"]),
    st.binary(max_size=4),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=3),
    ),
    max_leaves=8,
)
# YAML text as a user would type it after `--set key=`: plain words, numbers, flow lists and maps, tags
yaml_text = st.one_of(
    st.text(max_size=20),
    values.map(
        lambda v: yaml.safe_dump(v, default_flow_style=True).strip() if not isinstance(v, bytes) else "x"
    ),
    st.sampled_from(
        [
            "[",
            "]",
            "{a: 1",
            "2020-13-45",
            "2020-01-01",
            "!!python/object/apply:os.system [true]",
            "!!binary Zm9v",
            "!!set {a}",
            "&a [*a]",
            "1/0",
            "-1e999",
            ".nan",
            ".inf",
            "0x1F",
            "1_000",
            "[lorot, lorot]",
            "[3, 2]",
            "~",
            "''",
            "{}",
            "[]",
        ]
    ),
)


def _accepted_or_config_error(build):
    try:
        cfg = build()
    except ConfigError as e:
        assert str(e)  # a message, not an empty error
        return None
    assert isinstance(cfg, Config)
    return cfg


@settings(max_examples=400, deadline=None)
@given(key=st.sampled_from(KEYS), value=values)
def test_from_dict_any_value_for_any_key(key, value):
    parts = key.split(".")
    nested = value
    for p in reversed(parts):
        nested = {p: nested}
    cfg = _accepted_or_config_error(lambda: from_dict(nested))
    if cfg is not None:  # what is accepted must round-trip through YAML unchanged
        assert from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


@settings(max_examples=400, deadline=None)
@given(key=st.one_of(st.sampled_from(KEYS), st.sampled_from(SECTIONS), st.text(max_size=15)), text=yaml_text)
def test_parse_set_any_text_for_any_key(key, text):
    preset = "cifar10-lt0.01-gated-triple"
    _accepted_or_config_error(lambda: resolve(preset, None, [parse_set(f"{key}={text}")]))


@settings(max_examples=150, deadline=None)
@given(doc=values)
def test_whole_documents_and_sections(doc):
    _accepted_or_config_error(lambda: from_dict(doc))
    _accepted_or_config_error(lambda: from_dict({s: doc for s in SECTIONS}))
    _accepted_or_config_error(lambda: resolve(None, doc if isinstance(doc, dict) else {"preset": doc}))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=40), yaml_text))
def test_config_files_with_any_text(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    _accepted_or_config_error(lambda: resolve(None, load_yaml(path)))


def test_non_finite_and_out_of_range_numbers_are_refused_by_name():
    for key, bad in [
        ("optim.epochs", math.inf),
        ("optim.epochs", math.nan),
        ("optim.batch_size", 10**400),
        ("ssl.ratio", 10**400),
        ("data.imbalance", math.nan),
        ("seed", -1),
        ("seed", 2**64),
        ("data.crop_padding", math.inf),
    ]:
        section, _, name = key.rpartition(".")
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            from_dict({section: {name: bad}} if section else {name: bad})


def test_yaml_that_python_cannot_build_is_a_config_error(tmp_path):
    # a timestamp-shaped value that is not a date: PyYAML raises ValueError, not a YAMLError
    with pytest.raises(ConfigError, match="data.name"):
        resolve(sets=[parse_set("data.name=2020-13-45")])
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 2020-13-45\n")
    with pytest.raises(ConfigError, match="c.yaml"):
        load_yaml(path)


# The command line, lightly: random argument lists never end in a traceback. No dataset is reachable
# (data.root points nowhere), so nothing trains; `data` is left out because `download` needs the network.
words = st.one_of(
    st.sampled_from(
        [
            "train",
            "eval",
            "presets",
            "--preset",
            "--config",
            "--set",
            "--out",
            "--resume",
            "--force",
            "--quiet",
            "--print-config",
            "--dry-run",
            "--show",
            "--keys",
            "--checkpoint",
            "last",
            "best",
            "quickstart",
            "cifar10-lt0.01-gated-triple",
            "optim.lr=0.1",
            "ssl.tasks=[lorot]",
            "optim.epochs=0",
            "-h",
        ]
    ),
    st.sampled_from(KEYS).map(lambda k: f"{k}=1"),
    st.text(max_size=8),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(words, max_size=6), cmd=st.sampled_from(["train", "eval", "presets"]))
def test_cli_argument_fuzz_never_tracebacks(tmp_path, monkeypatch, capsys, argv, cmd):
    monkeypatch.chdir(tmp_path)
    argv = [cmd, *argv] + (["--set", f"data.root={tmp_path / 'no-data'}"] if cmd == "train" else [])
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
        code = e.code
    capsys.readouterr()
    assert code in (0, 2), argv
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir()), (
        "a refused run left a folder"
    )
