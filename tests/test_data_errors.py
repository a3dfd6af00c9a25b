"""Bad input: every case is a DataError that names what was expected and how to fix it."""

from __future__ import annotations

import gzip
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from gssl.data import DataError, fakes, load_dataset
from gssl.data.cifar import CIFAR10_CLASSES


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*--root.*GSSL_DATA"):
        load_dataset("cifar10", tmp_path / "nope", "train")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "tiny-imagenet", "fashion-mnist", "folder"])
def test_wrong_layout(tmp_path, name):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "readme.txt").write_text("not a dataset")
    with pytest.raises(DataError, match=r"found none.*To fix: point data\.root at"):
        load_dataset(name, tmp_path, "train")


def test_no_root_and_nothing_found(tmp_path, monkeypatch):
    monkeypatch.setenv("GSSL_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"looked in .*gssl data download cifar10"):
        load_dataset("cifar10", None, "train")


def test_unknown_name_and_split(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", tmp_path, "train")
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_dataset("cifar10", tmp_path, "val")


@pytest.mark.parametrize("packed", [False, True])
def test_unreadable_image_is_named(tmp_path, packed):
    root, _ = fakes.write_folder(tmp_path / "f", ["a", "b"], n_train=3, size=8)
    (root / "train" / "b" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    src = fakes.make_tar(root, tmp_path / "f.tar.gz") if packed else root
    with pytest.raises(DataError, match=r"cannot read image '.*train/b/0001\.png'.*replace it"):
        load_dataset("folder", src, "train", cache_dir=False)


def test_truncated_jpeg_is_named(tmp_path):
    root, _ = fakes.write_folder(tmp_path / "f", ["a"], n_train=2, size=32, fmt="JPEG")
    p = root / "train" / "a" / "0000.jpg"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(DataError, match="0000.jpg"):
        load_dataset("folder", root, "train", cache_dir=False)


@pytest.mark.parametrize("packed", [False, True])
def test_empty_class_folder(tmp_path, packed):
    root, _ = fakes.write_folder(tmp_path / "f", ["a", "b"], size=8)
    (root / "train" / "empty").mkdir()
    src = fakes.make_tar(root, tmp_path / "f.tar.gz") if packed else root
    with pytest.raises(DataError, match=r"class folder '.*train/empty'.*holds no images"):
        load_dataset("folder", src, "train", cache_dir=False)


def test_split_class_mismatch(tmp_path):
    root, _ = fakes.write_folder(tmp_path / "f", ["a", "b"], size=8)
    shutil.rmtree(root / "test" / "b")
    with pytest.raises(DataError, match=r"test split's class folders differ.*missing \['b'\]"):
        load_dataset("folder", root, "train", cache_dir=False)


def test_mixed_image_sizes(tmp_path):
    root, _ = fakes.write_folder(tmp_path / "f", ["a"], size=8)
    Image.new("RGB", (9, 8)).save(root / "train" / "a" / "0002.png")
    with pytest.raises(DataError, match=r"0002.png' is 9x8 .* same size"):
        load_dataset("folder", root, "train", cache_dir=False)


def test_cifar10_folder_with_other_classes(tmp_path):
    root, _ = fakes.write_folder(tmp_path / "f", [f"c{i}" for i in range(10)], n_train=1, n_test=1, size=32)
    with pytest.raises(DataError, match=r"not CIFAR-10's.*use dataset 'folder'"):
        load_dataset("cifar10", root, "train", cache_dir=False)


def test_cifar_label_count_mismatch(tmp_path):
    folder, _ = fakes.write_cifar(tmp_path)
    with open(folder / "data_batch_3", "rb") as f:
        batch = pickle.load(f)
    batch[b"labels"] = batch[b"labels"][:-1]
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(
        DataError, match=r"data_batch_3: 10 images but 9 labels; expected one label per image"
    ):
        load_dataset("cifar10", tmp_path, "train")


def test_cifar_missing_batch_and_wrong_content(tmp_path):
    folder, _ = fakes.write_cifar(tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match=r"missing '.*test_batch'.*re-download"):
        load_dataset("cifar10", tmp_path, "test")
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({b"data": np.zeros((3, 10), np.uint8), b"labels": [0, 1, 2]}, f)
    with pytest.raises(DataError, match=r"data_batch_2: 'data' is uint8 \(3, 10\), expected uint8 N x 3072"):
        load_dataset("cifar10", tmp_path, "train")
    fakes.write_cifar(tmp_path)  # intact again
    (folder / "data_batch_4").write_bytes(b"\x80\x02}q\x00(")  # truncated pickle
    with pytest.raises(DataError, match=r"data_batch_4.*truncated or corrupt"):
        load_dataset("cifar10", tmp_path, "train")


def test_idx_label_count_mismatch_and_bad_header(tmp_path):
    root, _ = fakes.write_fashion_mnist(tmp_path, n_train=30)
    fakes._idx(root / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8))
    with pytest.raises(DataError, match=r"30 images but .* 29 labels; expected equal counts"):
        load_dataset("fashion-mnist", root, "train")
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")  # 1-d header where 3-d is expected
    with pytest.raises(DataError, match=r"not a 3-d uint8 idx file.*apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", root, "test")


def test_idx_truncated(tmp_path):
    root, _ = fakes.write_fashion_mnist(tmp_path)
    p = root / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(DataError, match="truncated"):
        load_dataset("fashion-mnist", root, "test")


def test_tiny_annotation_mismatch(tmp_path):
    d, _ = fakes.write_tiny_imagenet(tmp_path, n_classes=2, n_train=1, n_val=2)
    ann = d / "val" / "val_annotations.txt"
    ann.write_text("".join(ann.read_text().splitlines(True)[:-1]))  # one val image loses its label
    with pytest.raises(
        DataError, match=r"labels 3 images but val/images holds 4.*unlabelled files \['val_3.JPEG'\]"
    ):
        load_dataset("tiny-imagenet", tmp_path, "test", cache_dir=False)
    ann.write_text(ann.read_text() + "val_3.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"wnids with no train folder: \['n99999999'\]"):
        load_dataset("tiny-imagenet", tmp_path, "test", cache_dir=False)


def test_tiny_missing_annotations(tmp_path):
    d, _ = fakes.write_tiny_imagenet(tmp_path, n_classes=2, n_train=1, n_val=1)
    (d / "val" / "val_annotations.txt").unlink()
    with pytest.raises(
        DataError, match=r"missing '.*val_annotations.txt'.*standard tiny-imagenet-200/ layout"
    ):
        load_dataset("tiny-imagenet", tmp_path, "train", cache_dir=False)


def test_truncated_archive(tmp_path):
    root, _ = fakes.write_folder(tmp_path / "cifar-10-jpg", CIFAR10_CLASSES, n_train=2, n_test=1)
    archive = fakes.make_tar(root, tmp_path / "cifar-10-jpg.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cannot read archive .*truncated"):
        load_dataset("cifar10", archive, "train", cache_dir=False)
