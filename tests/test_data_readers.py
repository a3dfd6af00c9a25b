"""Every reader, on small datasets written by gssl.data.fakes: pixels, labels and classes come back exact."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from gssl.data import DATASETS, MEAN_STD, DataError, ImageSet, describe, fakes, load_dataset, mean_std
from gssl.data.cifar import CIFAR10_CLASSES
from gssl.data.idx import DEBIAN_DIR


def check(ims: ImageSet, x: np.ndarray, y: np.ndarray) -> None:
    assert ims.images.dtype == torch.uint8 and ims.labels.dtype == torch.int64
    assert ims.images.is_contiguous() and ims.images.device.type == "cpu"
    np.testing.assert_array_equal(ims.images.numpy(), x)
    np.testing.assert_array_equal(ims.labels.numpy(), y)


@pytest.mark.parametrize("protocol,bytes_keys", [(2, True), (4, False), (5, True)])
def test_cifar10_pickles(tmp_path, protocol, bytes_keys):
    folder, arrays = fakes.write_cifar(tmp_path, "cifar10", protocol=protocol, bytes_keys=bytes_keys)
    for root in (tmp_path, folder):  # the folder itself or its parent
        for split in ("train", "test"):
            ims = load_dataset("cifar10", root, split, cache_dir=False)
            check(ims, *arrays[split])
            assert ims.classes == CIFAR10_CLASSES


def test_cifar100_pickles_and_archive(tmp_path):
    folder, arrays = fakes.write_cifar(tmp_path / "d", "cifar100", n_train=200, n_test=100)
    ims = load_dataset("cifar100", tmp_path / "d", "train", cache_dir=False)
    check(ims, *arrays["train"])
    assert len(ims.classes) == 100 and ims.classes[7] == "class_07"
    archive = fakes.make_tar(folder, tmp_path / "cifar-100-python.tar.gz")
    for root in (archive, tmp_path):  # the downloaded archive, read in place
        check(load_dataset("cifar100", root, "test", cache_dir=tmp_path / "cache"), *arrays["test"])


def test_cifar10_python_archive(tmp_path):
    folder, arrays = fakes.write_cifar(tmp_path / "src")
    archive = fakes.make_tar(folder, tmp_path / "cifar-10-python.tar.gz")
    check(load_dataset("cifar10", archive, "train", cache_dir=tmp_path / "c"), *arrays["train"])


def test_image_folder_png_exact(tmp_path):
    root, arrays = fakes.write_folder(tmp_path / "f", ["zebra", "ant", "moth"], n_train=3, n_test=2, size=16)
    for split in ("train", "test"):
        ims = load_dataset("folder", root, split, cache_dir=False)
        check(ims, *arrays[split])
        assert ims.classes == ["ant", "moth", "zebra"]  # sorted by name


def test_image_folder_greyscale_stays_one_channel_and_mixed_becomes_rgb(tmp_path):
    root, arrays = fakes.write_folder(tmp_path / "g", ["a", "b"], size=28, channels=1)
    check(load_dataset("folder", root, "train", cache_dir=False), *arrays["train"])
    # one RGB image among greyscale ones: everything becomes RGB, greyscale replicated
    rgb = np.random.default_rng(1).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "test" / "b" / "0001.png")
    ims = load_dataset("folder", root, "test", cache_dir=False)
    assert ims.images.shape == (4, 3, 28, 28)
    np.testing.assert_array_equal(ims.images[3].numpy(), rgb.transpose(2, 0, 1))
    x0 = arrays["test"][0][0]
    np.testing.assert_array_equal(ims.images[0].numpy(), np.repeat(x0, 3, axis=0))


def test_palette_and_rgba_images_convert_to_rgb(tmp_path):
    root, _ = fakes.write_folder(tmp_path / "p", ["a", "b"], size=8)
    rgba = np.random.default_rng(2).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / "train" / "a" / "0000.png")
    Image.fromarray(rgba[:, :, :3]).convert("P").save(root / "train" / "a" / "0001.png")
    ims = load_dataset("folder", root, "train", cache_dir=False)
    np.testing.assert_array_equal(ims.images[0].numpy(), rgba[:, :, :3].transpose(2, 0, 1))
    assert ims.images.shape[1] == 3


def test_jpeg_folder_as_cifar10_dir_archive_and_parent(tmp_path):
    root, arrays = fakes.write_folder(
        tmp_path / "cifar-10-jpg", CIFAR10_CLASSES, n_train=2, n_test=1, fmt="JPEG"
    )
    archive = fakes.make_tar(root, tmp_path / "cifar-10-jpg.tar.gz")
    results = []
    for r in (root, tmp_path, archive):  # {train,test}/ dir, dir holding cifar-10-jpg/, the archive
        ims = load_dataset("cifar10", r, "train", cache_dir=tmp_path / "cache")
        assert ims.images.shape == (20, 3, 32, 32) and ims.classes == CIFAR10_CLASSES
        np.testing.assert_array_equal(ims.labels.numpy(), arrays["train"][1])
        # JPEG is lossy: compare with PIL's own decoding of each file, in the reader's order
        files = [f for c in CIFAR10_CLASSES for f in sorted((root / "train" / c).iterdir())]
        expected = np.stack([np.asarray(Image.open(f).convert("RGB")).transpose(2, 0, 1) for f in files])
        np.testing.assert_array_equal(ims.images.numpy(), expected)
        results.append(ims.images)
    assert torch.equal(results[0], results[2])  # same decoder, same pixels from dir and archive
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / archive.name).symlink_to(archive)
    assert torch.equal(
        load_dataset("cifar10", tmp_path / "only", "test", cache_dir=False).images,
        load_dataset("cifar10", root, "test", cache_dir=False).images,
    )


def test_archive_without_top_folder(tmp_path):
    root, arrays = fakes.write_folder(tmp_path / "x", ["a", "b"], size=8)
    archive = fakes.make_tar(root, tmp_path / "flat.tar.gz", arcname=".")
    check(load_dataset("folder", archive, "test", cache_dir=False), *arrays["test"])


@pytest.mark.parametrize("packed", [False, True])
def test_tiny_imagenet(tmp_path, packed):
    d, arrays = fakes.write_tiny_imagenet(tmp_path / "src", n_classes=3, n_train=3, n_val=2)
    root = fakes.make_tar(d, tmp_path / "tiny-imagenet-200-64px.tar.gz") if packed else tmp_path / "src"
    for split in ("train", "test"):
        ims = load_dataset("tiny-imagenet", root, split, cache_dir=tmp_path / "cache")
        check(ims, *arrays[split])
        assert ims.classes == sorted(ims.classes) and len(ims.classes) == 3
    grey = load_dataset("tiny-imagenet", root, "train", cache_dir=tmp_path / "cache").images[0]
    assert grey.shape == (3, 64, 64) and torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_fashion_mnist_idx(tmp_path, monkeypatch):
    root, arrays = fakes.write_fashion_mnist(tmp_path / "fm")
    for split in ("train", "test"):
        ims = load_dataset("fashion-mnist", root, split)
        check(ims, *arrays[split])
        assert ims.image_shape == (1, 28, 28) and ims.classes[9] == "Ankle boot"
    monkeypatch.setenv("GSSL_DATA", str(tmp_path))  # root=None looks in $GSSL_DATA (and its fashion-mnist/)
    (tmp_path / "fm").rename(tmp_path / "fashion-mnist")
    check(load_dataset("fashion-mnist", None, "test"), *arrays["test"])


@pytest.mark.skipif(
    not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_debian_default(monkeypatch, tmp_path):
    monkeypatch.delenv("GSSL_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data here
    ims = load_dataset("fashion-mnist", None, "test")
    assert ims.images.shape == (10000, 1, 28, 28) and ims.class_counts() == [1000] * 10
    mean = ims.images.double().mean().item() / 255
    assert abs(mean - MEAN_STD["fashion-mnist"][0][0]) < 0.01


def test_imageset_subset_to_rgb_and_mean_std(tmp_path):
    root, arrays = fakes.write_fashion_mnist(tmp_path)
    ims = load_dataset("fashion-mnist", root, "train")
    sub = ims.subset(np.array([3, 1]))
    np.testing.assert_array_equal(sub.images.numpy(), arrays["train"][0][[3, 1]])
    assert sub.labels.tolist() == arrays["train"][1][[3, 1]].tolist()
    assert len(ims.subset(ims.labels == 2)) == 3
    rgb = ims.to_rgb()
    assert rgb.images.shape == (30, 3, 28, 28) and torch.equal(rgb.images[:, 2], ims.images[:, 0])
    assert mean_std("fashion-mnist", channels=3) == ((0.2860,) * 3, (0.3530,) * 3)
    m, s = mean_std("folder", ims)
    assert abs(m[0] - ims.images.double().mean().item() / 255) < 1e-9
    assert abs(s[0] - (ims.images.double() / 255).std(unbiased=False).item()) < 1e-9
    assert set(MEAN_STD) | {"folder"} == set(DATASETS)


def test_describe(tmp_path):
    root, _ = fakes.write_folder(tmp_path / "f", ["a", "b", "c"], n_train=2, n_test=1, size=8)
    info = describe("folder", root, cache_dir=tmp_path / "cache")
    assert info["splits"] == {
        "train": {"count": 6, "per_class": [2, 2, 2]},
        "test": {"count": 3, "per_class": [1, 1, 1]},
    }
    assert info["image_shape"] == [3, 8, 8] and info["classes"] == ["a", "b", "c"]
    assert info["cache"] == str(tmp_path / "cache") and info["format"] == "folder-dir"
    assert len(info["mean_std"][0]) == 3
    info = describe("cifar10", fakes.write_cifar(tmp_path / "c")[0], cache_dir=False)
    assert info["splits"]["train"]["count"] == 50 and info["cache"] is None
    assert info["mean_std"] == MEAN_STD["cifar10"]


def test_folder_without_test_split(tmp_path):
    root, arrays = fakes.write_folder(tmp_path / "f", ["a", "b"], size=8)
    shutil.rmtree(root / "test")
    check(load_dataset("folder", root, "train", cache_dir=tmp_path / "c"), *arrays["train"])
    with pytest.raises(DataError, match="no test split"):
        load_dataset("folder", root, "test", cache_dir=tmp_path / "c")
    assert list(describe("folder", root, cache_dir=False)["splits"]) == ["train"]
