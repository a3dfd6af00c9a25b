"""The decode cache: hit on the second load, rebuilt when the source changes or the cache is damaged."""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import pytest
import torch

from gssl.data import cache, decode, fakes, load_dataset


@pytest.fixture
def counting_decoder(monkeypatch):
    """Counts calls of the decoder (and can be told to fail, proving a load never decoded)."""
    calls = {"n": 0, "fail": False}
    real = decode.decode_all

    def wrapped(items, rgb, workers=None):
        if calls["fail"]:
            raise AssertionError("decoder called although the cache should have served this load")
        calls["n"] += 1
        return real(items, rgb, workers)

    for mod in ("gssl.data.folder", "gssl.data.tiny_imagenet"):
        monkeypatch.setattr(f"{mod}.decode_all", wrapped)
    return calls


def _entries(d):
    return sorted(p.name for p in d.iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize("packed", [False, True])
def test_second_load_hits_cache(tmp_path, counting_decoder, packed):
    root, arrays = fakes.write_folder(tmp_path / "f", ["a", "b"], size=8)
    src = fakes.make_tar(root, tmp_path / "f.tar.gz") if packed else root
    first = load_dataset("folder", src, "train", cache_dir=tmp_path / "c")
    assert counting_decoder["n"] == 1
    assert len(_entries(tmp_path / "c")) == 4  # train + test, .npy + .json each, from one decode
    counting_decoder["fail"] = True
    again = load_dataset("folder", src, "train", cache_dir=tmp_path / "c")
    test = load_dataset("folder", src, "test", cache_dir=tmp_path / "c")
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert again.classes == ["a", "b"] and again.source == str(src)
    np.testing.assert_array_equal(test.images.numpy(), arrays["test"][0])


def test_changed_source_is_rebuilt(tmp_path, counting_decoder, caplog):
    root, _ = fakes.write_folder(tmp_path / "f", ["a", "b"], size=8)
    load_dataset("folder", root, "train", cache_dir=tmp_path / "c")
    img = root / "train" / "a" / "0000.png"
    new = np.zeros((8, 8, 3), np.uint8)
    from PIL import Image

    Image.fromarray(new).save(img)
    os.utime(img, ns=(time.time_ns(), time.time_ns() + 10**9))  # mtime changes even on coarse clocks
    with caplog.at_level(logging.WARNING, logger="gssl.data.cache"):
        ims = load_dataset("folder", root, "train", cache_dir=tmp_path / "c")
    assert counting_decoder["n"] == 2 and "source changed" in caplog.text
    assert ims.images[0].sum() == 0
    # a new file is a change too; the same cache files are rewritten, not multiplied
    Image.fromarray(new).save(root / "train" / "b" / "0009.png")
    assert len(load_dataset("folder", root, "train", cache_dir=tmp_path / "c")) == 9
    assert counting_decoder["n"] == 3 and len(_entries(tmp_path / "c")) == 4


def test_changed_archive_is_rebuilt(tmp_path, counting_decoder):
    d, _ = fakes.write_tiny_imagenet(tmp_path / "src", n_classes=2, n_train=2, n_val=1)
    archive = fakes.make_tar(d, tmp_path / "tiny-imagenet-200.tar.gz")
    load_dataset("tiny-imagenet", archive, "train", cache_dir=tmp_path / "c")
    st = archive.stat()
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_dataset("tiny-imagenet", archive, "train", cache_dir=tmp_path / "c")
    assert counting_decoder["n"] == 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "record", "json-labels", "delete-npy", "version"])
def test_corrupt_cache_is_rebuilt(tmp_path, counting_decoder, caplog, monkeypatch, damage):
    root, arrays = fakes.write_folder(tmp_path / "f", ["a", "b"], size=8)
    load_dataset("folder", root, "train", cache_dir=tmp_path / "c")
    npy = cache.cache_file(tmp_path / "c", "folder-dir", root, "train")
    rec = npy.with_suffix(".json")
    if damage == "truncate":
        npy.write_bytes(npy.read_bytes()[:-7])
    elif damage == "flip":  # same length, one pixel changed: only the checksum can tell
        raw = bytearray(npy.read_bytes())
        raw[-3] ^= 0xFF
        npy.write_bytes(bytes(raw))
    elif damage == "record":
        rec.write_text(rec.read_text()[:20])
    elif damage == "json-labels":
        meta = json.loads(rec.read_text())
        meta["labels"][0] = 1 - meta["labels"][0]
        rec.write_text(json.dumps(meta))
    elif damage == "delete-npy":
        npy.unlink()
    elif damage == "version":
        monkeypatch.setattr(cache, "READER_VERSION", cache.READER_VERSION + 1)
    with caplog.at_level(logging.WARNING, logger="gssl.data.cache"):
        ims = load_dataset("folder", root, "train", cache_dir=tmp_path / "c")
    assert counting_decoder["n"] == 2, "a damaged cache must be rebuilt, not used"
    assert "stale or corrupt" in caplog.text
    np.testing.assert_array_equal(ims.images.numpy(), arrays["train"][0])
    np.testing.assert_array_equal(ims.labels.numpy(), arrays["train"][1])
    counting_decoder["fail"] = True  # and the rebuilt entry is valid
    load_dataset("folder", root, "train", cache_dir=tmp_path / "c")


def test_cache_disabled_and_env_default(tmp_path, monkeypatch, counting_decoder):
    root, _ = fakes.write_folder(tmp_path / "f", ["a"], size=8)
    monkeypatch.setenv("GSSL_CACHE", str(tmp_path / "envcache"))
    load_dataset("folder", root, "train", cache_dir=False)
    assert not (tmp_path / "envcache").exists()
    load_dataset("folder", root, "train")
    assert len(_entries(tmp_path / "envcache")) == 4
    assert cache.default_cache_dir() == tmp_path / "envcache"


def test_unwritable_cache_dir_still_loads(tmp_path, counting_decoder):
    root, arrays = fakes.write_folder(tmp_path / "f", ["a"], size=8)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    ims = load_dataset("folder", root, "train", cache_dir=blocker / "sub")
    np.testing.assert_array_equal(ims.images.numpy(), arrays["train"][0])
