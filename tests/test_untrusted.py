"""Untrusted input: dataset pickles, checkpoints and YAML that would run a command never do, and
bad image files are reported by name. Every refusal exits 2 and leaves the run directory as it was.

Reader-level tests of the restricted unpickler are in tests/test_data_pickle.py, and of unreadable,
truncated and mixed-size images in tests/test_data_errors.py; these go through the command line.
"""

import hashlib
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ONE_EPOCH_SETS, train_argv
from gssl import rundir
from gssl.cli import main
from gssl.config import parse_set
from gssl.data import DataError, fakes, load_dataset, pickle_safe
from gssl.presets import resolve
from gssl.runconfig import to_yaml

SRC = Path(__file__).resolve().parents[1] / "src" / "gssl"


class Touch:
    """Unpickling this runs `touch <path>`: the marker file shows whether the command ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _snapshot(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_malicious_dataset_pickle_is_refused_and_runs_nothing(tmp_path, capsys):
    folder, _ = fakes.write_cifar(tmp_path / "data")
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Touch(marker), b"labels": [0], b"filenames": [], b"batch_label": b""}, f)
    code = main(
        train_argv(tmp_path / "data", tmp_path / "run", *ONE_EPOCH_SETS, preset="cifar10-lt0.01-ldam-drw")
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "data_batch_3" in err and "refused to unpickle" in err and "system" in err
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def _run_dir(tmp_path, data_root) -> Path:
    """A run directory as `gssl train` leaves it, without training: config.yaml and checkpoints/."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = resolve(
        "cifar10-lt0.01-ldam-drw",
        sets=[
            parse_set(f"data.root={data_root}"),
            parse_set("model.backbone=resnet20"),
            parse_set("optim.epochs=2"),
            parse_set("data.imbalance=0.5"),
        ],
    )
    (run / "config.yaml").write_text(to_yaml(cfg))
    (run / "metrics.jsonl").write_text("")
    return run


@pytest.fixture
def cifar(tmp_path):
    fakes.write_cifar(tmp_path / "data", n_train=50, n_test=20)
    return tmp_path / "data"


@pytest.mark.parametrize("command", ["resume", "eval"])
def test_checkpoint_that_would_run_a_command_is_refused(tmp_path, cifar, capsys, command):
    run = _run_dir(tmp_path, cifar)
    marker = tmp_path / "pwned"
    torch.save(
        {"model": {}, "optimizer": {}, "epoch": 0, "best_acc": 0.0, "best_epoch": 0, "x": Touch(marker)},
        run / "checkpoints" / "last.pt",
    )
    before = _snapshot(run)
    argv = ["train", "--resume", str(run), "--quiet"] if command == "resume" else ["eval", str(run)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot be loaded safely" in err and "last.pt" in err
    assert not marker.exists()
    assert _snapshot(run) == before
    with pytest.raises(rundir.RunDirError, match="cannot be loaded safely"):
        rundir.load_checkpoint(run / "checkpoints" / "last.pt")
    assert not marker.exists()


class Call:
    """Unpickles as `f(*args)`: builds a pickle that chains calls through whatever globals it names."""

    def __init__(self, f, *args):
        self.f, self.args = f, args

    def __call__(self):  # pickle insists that the reduce callable be callable
        raise AssertionError("never called while pickling")

    def __reduce__(self):
        return (self.f, self.args)


def _attr(obj, *names):
    for name in names:
        obj = Call(getattr, obj, name)
    return obj


@pytest.mark.parametrize("protocol", [2, 4])  # getattr is __builtin__.getattr in 2, builtins.getattr in 4
def test_dataset_pickle_reaching_getattr_is_refused(tmp_path, protocol):
    """getattr on an admitted global reaches its module's globals and from there os.system."""
    folder, _ = fakes.write_cifar(tmp_path / "data")
    marker = tmp_path / "pwned"
    module_globals = _attr(np.dtype, "__globals__")  # np.dtype unpickles as pickle_safe._safe_dtype
    pickle_module = Call(_attr(module_globals, "get"), "pickle")
    os_module = Call(_attr(pickle_module, "sys", "modules", "get"), "os")
    touch = Call(_attr(os_module, "system"), f"touch {marker}")
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": touch, b"labels": [0]}, f, protocol=protocol)
    with pytest.raises(
        DataError, match=r"data_batch_3: refused to unpickle \(global '(__)?builtins?(__)?\.getattr'"
    ):
        load_dataset("cifar10", folder, "train", cache_dir=False)
    assert not marker.exists()


def test_the_dataset_unpickler_admits_exactly_the_globals_of_cifar_batches():
    assert set(pickle_safe._ALLOWED) == {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }


def test_checkpoint_reaching_getattr_is_refused(tmp_path):
    """getattr on torch's own rebuild function would hand back torch._utils' globals, os among them."""
    path = tmp_path / "last.pt"
    torch.save({"epoch": 0, "x": _attr(torch._utils._rebuild_tensor_v2, "__globals__")}, path)
    with pytest.raises(rundir.RunDirError, match=r"last\.pt cannot be loaded safely: it names getattr"):
        rundir.load_checkpoint(path)


def test_checkpoint_of_another_model_is_refused_by_name(tmp_path, cifar, capsys):
    run = _run_dir(tmp_path, cifar)
    torch.save(
        {
            "model": {"conv.weight": torch.zeros(3)},
            "optimizer": {},
            "epoch": 0,
            "best_acc": 1.0,
            "best_epoch": 0,
        },
        run / "checkpoints" / "last.pt",
    )
    before = _snapshot(run)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert re.search(r"checkpoint .*last\.pt does not fit this configuration", capsys.readouterr().err)
    assert _snapshot(run) == before
    torch.save({"weights": {}}, run / "checkpoints" / "last.pt")  # a plain dict, not a gssl checkpoint
    assert main(["eval", str(run)]) == 2
    assert "does not fit" in capsys.readouterr().err


EVIL_YAML = "seed: !!python/object/apply:os.system ['touch {marker}']\n"


def test_config_file_with_a_python_tag_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text("preset: quickstart\n" + EVIL_YAML.format(marker=marker))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "evil.yaml" in err and "python/object" in err and "safe loader" in err
    assert not marker.exists() and not (tmp_path / "run").exists()

    # the same tag on the command line is only text, and not an integer
    assert (
        main(
            [
                "train",
                "--preset",
                "quickstart",
                "--set",
                f"seed=!!python/object/apply:os.system ['touch {marker}']",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 2
    )
    assert "seed: expected an integer" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("command", ["resume", "eval"])
def test_tampered_run_config_is_refused(tmp_path, cifar, capsys, command):
    run = _run_dir(tmp_path, cifar)
    marker = tmp_path / "pwned"
    text = (run / "config.yaml").read_text()
    assert "\nseed: 0\n" in text
    (run / "config.yaml").write_text(text.replace("\nseed: 0\n", "\n" + EVIL_YAML.format(marker=marker)))
    torch.save({"model": {}}, run / "checkpoints" / "last.pt")
    before = _snapshot(run)
    argv = ["train", "--resume", str(run), "--quiet"] if command == "resume" else ["eval", str(run)]
    assert main(argv) == 2
    assert "config.yaml" in capsys.readouterr().err
    assert not marker.exists() and _snapshot(run) == before


def test_nothing_in_gssl_loads_untrusted_files_unsafely():
    """The rules behind the tests above, checked in every module (including ones added later)."""
    bad = {
        r"\bpickle\.(load|loads|Unpickler)\b": "pickle: use data.pickle_safe.safe_load",
        r"\btorch\.load\((?![^)]*weights_only=True)": "torch.load without weights_only=True",
        r"\byaml\.(load|unsafe_load|full_load|load_all|unsafe_load_all)\(|\bLoader\s*=": (
            "YAML without safe_load"
        ),
        r"allow_pickle\s*=\s*True": "numpy pickles",
        r"\bsafe_globals\b": "torch.load's allow-list widened (checkpoints hold tensors and plain values)",
    }
    found = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for pattern, why in bad.items():
            for m in re.finditer(pattern, text):
                if path.name == "pickle_safe.py" and why.startswith("pickle"):
                    continue  # the restricted unpickler itself
                found.append(f"{path.relative_to(SRC)}:{text[: m.start()].count(chr(10)) + 1}: {why}")
    assert not found, found


# ---- images: converted when 8-bit, refused by name otherwise --------------------------------------------


def _folder(tmp_path):
    root, _ = fakes.write_folder(tmp_path / "imgs", ["a", "b"], n_train=2, n_test=1, size=8)
    return root


@pytest.mark.parametrize(
    "mode, fmt",
    [
        ("1", "PNG"),
        ("L", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("CMYK", "JPEG"),
        ("RGB", "BMP"),
    ],
)
def test_eight_bit_modes_are_read_as_rgb(tmp_path, mode, fmt):
    root = _folder(tmp_path)
    p = root / "train" / "a" / "0000.png"
    p.unlink()
    Image.new(mode, (8, 8)).save(p.with_suffix("." + fmt.lower()), format=fmt)
    s = load_dataset("folder", root, "train", cache_dir=False).to_rgb()
    assert tuple(s.images.shape[1:]) == (3, 8, 8) and len(s.labels) == 4


@pytest.mark.parametrize("kind", ["text", "truncated", "16-bit", "float"])
def test_bad_image_files_are_named(tmp_path, capsys, kind):
    root = _folder(tmp_path)
    p = root / "train" / "b" / "0001.png"
    if kind == "text":
        p.write_text("this is not an image")
    elif kind == "truncated":
        p.write_bytes(p.read_bytes()[:40])
    elif kind == "16-bit":
        Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(p)
    else:
        p = p.with_suffix(".tif")
        Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(p)
    with pytest.raises(DataError, match=re.escape(p.name)):
        load_dataset("folder", root, "train", cache_dir=False)
    code = main(
        train_argv(
            root, tmp_path / "run", *ONE_EPOCH_SETS, "data.name=folder", preset="cifar10-lt0.01-ldam-drw"
        )
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"train/b/{p.name}" in err
    if kind in ("16-bit", "float"):
        assert "8 bits" in err
    assert not (tmp_path / "run").exists()
