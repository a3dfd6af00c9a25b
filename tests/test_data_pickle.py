"""The restricted unpickler admits exactly what CIFAR batches hold and executes nothing else."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from gssl.data import DataError, fakes, load_dataset
from gssl.data.pickle_safe import safe_load


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _Eval:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_pickle_raises_and_executes_nothing(tmp_path, protocol):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({b"data": _Touch(marker), b"labels": [0]}, protocol=protocol)
    with pytest.raises(
        DataError, match=r"refused to unpickle \(global '(posix|os)\.system' is not allowed\)"
    ):
        safe_load(blob, "evil")
    assert not marker.exists()
    with pytest.raises(DataError, match=r"(builtins|__builtin__)\.eval' is not allowed"):
        safe_load(pickle.dumps(_Eval(), protocol=protocol), "evil")


def test_malicious_batch_through_load_dataset(tmp_path):
    folder, _ = fakes.write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Touch(marker), b"labels": [], b"filenames": [], b"batch_label": b""}, f)
    with pytest.raises(DataError, match=r"data_batch_1: refused to unpickle.*not one\. Re-download"):
        load_dataset("cifar10", tmp_path, "train")
    assert not marker.exists()


def test_object_arrays_and_direct_ndarray_calls_refused():
    with pytest.raises(DataError, match="object dtypes are not allowed"):
        safe_load(pickle.dumps(np.array([1, "a"], dtype=object), protocol=2), "obj")
    # a pickle that calls numpy.ndarray(...) itself instead of going through _reconstruct
    blob = b"\x80\x02cnumpy\nndarray\nK\x03\x85\x85R."
    with pytest.raises(DataError, match="refused to unpickle"):
        safe_load(blob, "direct")
    evil_codec = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x06\x00\x00\x00base64\x86R."
    with pytest.raises(DataError, match="codec 'base64' is not allowed"):
        safe_load(evil_codec, "codec")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_real_structure_roundtrips(protocol):
    a = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [3, 7],
        b"data": a,
        b"filenames": [b"a.png", b"b.png"],
    }
    out = safe_load(pickle.dumps(batch, protocol=protocol), "ok")
    np.testing.assert_array_equal(out[b"data"], a)
    assert out[b"labels"] == [3, 7] and out[b"filenames"] == [b"a.png", b"b.png"]


def test_numpy1_spelling_and_python2_strings():
    """The published batches were written by Python 2 with numpy 1.x: `numpy.core.multiarray`
    globals and 8-bit strings (SHORT_BINSTRING), which must come back as bytes."""
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    blob = pickle.dumps({"data": a, "labels": [1]}, protocol=2)
    blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in blob
    out = safe_load(blob, "py2")
    np.testing.assert_array_equal(out["data"], a)
    # Python 2 str -> SHORT_BINSTRING opcode 'U'; read as bytes with encoding='bytes'
    py2 = b"\x80\x02}q\x00U\x06labelsq\x01]q\x02K\x05as."
    assert safe_load(py2, "py2") == {b"labels": [5]}


def test_meta_file_structure(tmp_path):
    folder, _ = fakes.write_cifar(tmp_path, "cifar100", n_train=100, n_test=100)
    with open(folder / "meta", "rb") as f:
        meta = safe_load(f, "meta")
    assert len(meta[b"fine_label_names"]) == 100 and len(meta[b"coarse_label_names"]) == 20
