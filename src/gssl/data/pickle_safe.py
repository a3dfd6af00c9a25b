"""Restricted unpickler for the CIFAR python batches.

`pickle.load` on a downloaded file runs whatever callables the file names. The CIFAR batches only
hold dicts, lists, strings/bytes, ints and numpy uint8 arrays, so we admit exactly the globals
needed to rebuild those (under both the numpy 1.x `numpy.core` and numpy 2.x `numpy._core`
spellings) and refuse everything else before it can be called.
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import Any, BinaryIO

import numpy as np

from .imageset import DataError


def _safe_dtype(*args: Any) -> np.dtype:
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError("object dtypes are not allowed")
    return dt


class _NdarrayType:
    """Stands in for `numpy.ndarray` so a pickle can name the type but never call it directly."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError("calling numpy.ndarray directly is not allowed")


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _NdarrayType:
        raise pickle.UnpicklingError("only plain numpy arrays are allowed")
    return np.ndarray.__new__(np.ndarray, shape, _safe_dtype(dtype))


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    # protocol-5 numpy pickles (numpy._core.numeric._frombuffer)
    dt = _safe_dtype(dtype)
    arr = np.frombuffer(bytes(buf), dtype=dt)
    return arr.reshape(shape, order="F" if order == "F" else "C")


def _safe_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 writes bytes as _codecs.encode(str, 'latin1') at protocol <= 2
    if codecs.lookup(encoding).name not in ("latin-1", "iso8859-1", "utf-8", "ascii"):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return codecs.encode(text, encoding, errors)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy", "ndarray"): _NdarrayType,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _safe_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in `_ALLOWED` (numpy arrays, dtypes, bytes)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def safe_load(f: BinaryIO | bytes, what: str) -> Any:
    """Unpickle a CIFAR batch; anything other than plain data raises DataError naming `what`."""
    if isinstance(f, (bytes, bytearray)):
        f = io.BytesIO(f)
    try:
        # encoding='bytes' reads Python 2 strings (the published batches) as bytes without guessing
        return RestrictedUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(
            f"{what}: refused to unpickle ({e}). A CIFAR batch holds only dicts, lists, "
            "strings and numpy uint8 arrays; this file is not one. Re-download it from "
            "https://www.cs.toronto.edu/~kriz/cifar.html (or `gssl data download`)."
        ) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as e:
        raise DataError(
            f"{what}: not a readable CIFAR python batch ({type(e).__name__}: {e}); the file "
            "is truncated or corrupt. Re-download it."
        ) from None
