"""Shared fixtures: a small CIFAR-10-format dataset with a learnable signal, and the real data's location."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("GSSL_SHARED_DATA", REPO.parent / "shared" / "data"))


def write_fake_cifar10(root: Path, per_class_train: int = 20, per_class_test: int = 10, seed: int = 0) -> Path:
    """`cifar-10-batches-py/` in the real format; class c is tinted towards its own colour, so it is learnable."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(10, 3))
    out = root / "cifar-10-batches-py"
    out.mkdir(parents=True)

    def make(n_per_class):
        labels = np.repeat(np.arange(10), n_per_class)
        rng.shuffle(labels)
        noise = rng.integers(0, 256, size=(len(labels), 3, 32, 32))
        imgs = (0.4 * noise + 0.6 * palette[labels][:, :, None, None]).astype(np.uint8)
        return imgs.reshape(len(labels), -1), labels.tolist()

    data, labels = make(per_class_train)
    for i, (d, l) in enumerate(zip(np.array_split(data, 5), np.array_split(np.array(labels), 5)), start=1):
        with open(out / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"batch_label": f"training batch {i} of 5".encode(), b"labels": l.tolist(), b"data": d,
                         b"filenames": [f"img_{i}_{j}.png".encode() for j in range(len(l))]}, f)
    data, labels = make(per_class_test)
    with open(out / "test_batch", "wb") as f:
        pickle.dump({b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": data,
                     b"filenames": [f"t_{j}.png".encode() for j in range(len(labels))]}, f)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(out / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": 10000, b"num_vis": 3072}, f)
    return root


@pytest.fixture(scope="session")
def fake_cifar10(tmp_path_factory) -> Path:
    return write_fake_cifar10(tmp_path_factory.mktemp("fake-cifar10"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never write into the user's cache; one cache per test session."""
    if "GSSL_CACHE" not in os.environ:
        monkeypatch.setenv("GSSL_CACHE", str(tmp_path_factory.getbasetemp() / "gssl-cache"))


def train_tiny_run(data_root: Path, out: Path, epochs: int = 2, *sets: str) -> Path:
    """A real `gssl train` run on the fake CIFAR-10 (ResNet-20, gated LoRot-E + flip + channel, batch 16, constant lr)."""
    from gssl.cli import main
    args = ["train", "--preset", "cifar10-lt0.01-gated-triple", "--set", f"data.root={data_root}",
            "--set", f"optim.epochs={epochs}", "--set", f"optim.base_epochs={epochs}", "--set", "model.backbone=resnet20",
            "--set", "optim.batch_size=16", "--set", "data.imbalance=0.5", "--set", "optim.milestones=[]",
            "--set", "optim.warmup_epochs=0", "--out", str(out), "--quiet"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0, f"training the tiny run in {out} failed"
    return out


@pytest.fixture(scope="session")
def tiny_run(fake_cifar10, tmp_path_factory) -> Path:
    """A finished 2-epoch run with a learned gate, shared by the report tests (copy it before changing it)."""
    with pytest.MonkeyPatch.context() as mp:  # session fixtures start before the per-test cache fixture
        if "GSSL_CACHE" not in os.environ:
            mp.setenv("GSSL_CACHE", str(tmp_path_factory.getbasetemp() / "gssl-cache"))
        return train_tiny_run(fake_cifar10, tmp_path_factory.mktemp("tiny-run") / "run", 2, "ssl.gate=learned")
