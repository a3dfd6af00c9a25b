"""Downloads: offline fails at once with a way forward; checksums are enforced; writes are atomic."""

from __future__ import annotations

import time

import numpy as np
import pytest

from gssl.data import DataError, download, fakes, load_dataset
from gssl.data import downloads as dl

UNREACHABLE = "http://127.0.0.1:9/nothing-listens-here.tar.gz"  # discard port: connection refused


def _patch(monkeypatch, name, urls, md5=None):
    folder, resources = dl.SOURCES[name]
    new = tuple(
        dl.Resource(r.filename, tuple(urls(r)), md5(r) if md5 else r.md5, r.extract) for r in resources
    )
    monkeypatch.setitem(dl.SOURCES, name, (folder, new))


def _leftovers(d):
    return [p.name for p in d.rglob("*") if p.name.startswith(".") or p.suffix == ".part"]


@pytest.mark.parametrize("name", ["cifar10", "fashion-mnist", "tiny-imagenet"])
def test_offline_fails_at_once_with_local_copy_hint(tmp_path, monkeypatch, name):
    _patch(monkeypatch, name, lambda r: [UNREACHABLE] * len(r.urls))
    t = time.monotonic()
    with pytest.raises(
        DataError,
        match=r"could not download .*offline.*data\.root \(`gssl train`/`sweep`: --set data\.root=DIR"
        r".*GSSL_DATA",
    ) as e:
        download(name, tmp_path / "dest", timeout=2)
    assert time.monotonic() - t < 5
    if name == "fashion-mnist":
        assert "apt-get install dataset-fashion-mnist" in str(e.value)
    assert _leftovers(tmp_path) == []


def test_checksum_mismatch_keeps_nothing(tmp_path, monkeypatch):
    bogus = tmp_path / "cifar-10-python.tar.gz"
    bogus.write_bytes(b"not the real archive")
    _patch(monkeypatch, "cifar10", lambda r: [bogus.as_uri()])
    with pytest.raises(DataError, match=r"checksum mismatch .* expected c58f30108f718f92721af3b95e74349a"):
        download("cifar10", tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []


def test_download_verifies_extracts_and_loads(tmp_path, monkeypatch):
    folder, arrays = fakes.write_cifar(tmp_path / "src")
    archive = fakes.make_tar(folder, tmp_path / "src" / "cifar-10-python.tar.gz")
    _patch(monkeypatch, "cifar10", lambda r: [UNREACHABLE, archive.as_uri()], lambda r: dl.md5sum(archive))
    path = download("cifar10", tmp_path / "dest")
    assert path == tmp_path / "dest" / "cifar-10-batches-py" and (path / "data_batch_1").is_file()
    assert _leftovers(tmp_path / "dest") == []
    np.testing.assert_array_equal(load_dataset("cifar10", path, "train").images.numpy(), arrays["train"][0])
    # already there: no network needed the second time
    _patch(monkeypatch, "cifar10", lambda r: [UNREACHABLE], lambda r: dl.md5sum(archive))
    assert download("cifar10", tmp_path / "dest") == path


def test_fashion_mnist_mirror_fallback(tmp_path, monkeypatch):
    src, arrays = fakes.write_fashion_mnist(tmp_path / "src")
    _patch(
        monkeypatch,
        "fashion-mnist",
        lambda r: [UNREACHABLE, (src / r.filename).as_uri()],
        lambda r: dl.md5sum(src / r.filename),
    )
    path = download("fashion-mnist", tmp_path / "dest")
    assert path == tmp_path / "dest" / "fashion-mnist"
    np.testing.assert_array_equal(
        load_dataset("fashion-mnist", path, "test").images.numpy(), arrays["test"][0]
    )


def test_unknown_name():
    with pytest.raises(DataError, match="no download source for 'folder'"):
        download("folder", "x")
