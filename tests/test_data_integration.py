"""The real CIFAR-10 copy (shared/data/cifar-10-jpg.tar.gz), read in place and cached.

Located through $GSSL_SHARED_DATA (a folder holding the archives), default <repo>/../shared/data;
skipped when absent. The first read decodes 60,000 JPEGs (about 15 s on 2 cores) into a cache that
lives for the test session ($GSSL_CACHE if set, so CI can keep it between runs).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import session_cache
from gssl.data import MEAN_STD, channel_stats, load_dataset, long_tail_indices
from gssl.data.cifar import CIFAR10_CLASSES

SHARED = Path(
    os.environ.get("GSSL_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
CIFAR_JPG = SHARED / "cifar-10-jpg.tar.gz"
TINY = SHARED / "tiny-imagenet-200-64px.tar.gz"

needs_cifar = pytest.mark.skipif(
    not CIFAR_JPG.is_file(), reason=f"real CIFAR-10 copy not found at {CIFAR_JPG} (set GSSL_SHARED_DATA)"
)


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory) -> Path:
    """The session's cache: tests/test_e2e_cifar.py's run in the same process reads it, not decoding again."""
    return session_cache(tmp_path_factory)


@pytest.fixture(scope="session")
def cifar10(real_cache):
    t = time.perf_counter()
    train = load_dataset("cifar10", CIFAR_JPG, "train", cache_dir=real_cache)
    test = load_dataset("cifar10", CIFAR_JPG, "test", cache_dir=real_cache)
    return train, test, time.perf_counter() - t


@needs_cifar
def test_real_cifar10(cifar10):
    train, test, _ = cifar10
    assert train.images.shape == (50_000, 3, 32, 32) and test.images.shape == (10_000, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.classes == CIFAR10_CLASSES and len(test.classes) == 10
    assert train.class_counts() == [5000] * 10 and test.class_counts() == [1000] * 10
    mean, _ = channel_stats(train.images)
    assert np.allclose(mean, MEAN_STD["cifar10"][0], atol=0.01), mean


@needs_cifar
def test_real_cifar10_second_load_is_cached(cifar10, real_cache, monkeypatch):
    train, _, _ = cifar10

    def no_decoding(*a, **k):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr("gssl.data.folder.decode_all", no_decoding)
    again = load_dataset("cifar10", SHARED, "train", cache_dir=real_cache)  # the folder holding the archive
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)


@needs_cifar
def test_real_cifar10_long_tail(cifar10):
    train, _, _ = cifar10
    idx = long_tail_indices(train.labels.numpy(), 0.01)
    assert train.subset(idx).class_counts() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.mark.skipif(
    not TINY.is_file(), reason=f"needs the Tiny-ImageNet archive ({TINY}; CI points GSSL_SHARED_DATA at it)"
)
def test_real_tiny_imagenet(real_cache):
    train = load_dataset("tiny-imagenet", TINY, "train", cache_dir=real_cache)
    test = load_dataset("tiny-imagenet", TINY, "test", cache_dir=real_cache)
    assert train.images.shape == (100_000, 3, 64, 64) and test.images.shape == (10_000, 3, 64, 64)
    assert (
        len(train.classes) == 200 and set(train.class_counts()) == {500} and set(test.class_counts()) == {50}
    )


@needs_cifar
def test_gssl_data_describe_and_prepare_on_the_real_archive(tmp_path, monkeypatch, capsys):
    import json

    from gssl.cli import main

    monkeypatch.setenv("GSSL_CACHE", str(tmp_path / "cache"))
    assert main(["data", "describe", "cifar10", "--root", str(CIFAR_JPG)]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["splits"]["train"]["per_class"] == [5000] * 10
    assert described["splits"]["test"]["per_class"] == [1000] * 10 and described["classes"] == CIFAR10_CLASSES
    assert main(["data", "prepare", "cifar10", "--root", str(CIFAR_JPG)]) == 0
    assert "cifar10 train: 50000 images (3, 32, 32), 10 classes" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").glob("*.npy"))) >= 2  # both splits decoded into the cache


def test_gssl_data_download_of_a_dataset_without_a_source_is_refused(tmp_path, capsys):
    from gssl.cli import main

    assert main(["data", "download", "folder", "--dest", str(tmp_path / "d")]) == 2
    assert "no download source for 'folder'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
