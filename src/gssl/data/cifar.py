"""CIFAR-10/100 in the python format users download (`cifar-10-batches-py/`, `cifar-100-python/`).

Each batch is a pickled dict {data: uint8 N x 3072 (R, G, B planes of 32x32), labels or
fine_labels, filenames, batch_label}; the meta file holds the class names. Batches are read
through the restricted unpickler, from the folder or straight out of the downloaded .tar.gz.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .archive import iter_archive
from .imageset import DataError, ImageSet
from .pickle_safe import safe_load

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

LAYOUT = {  # name -> (folder, archive, files per split, meta file, label key, class-name key, classes)
    "cifar10": (
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "batches.meta",
        "labels",
        "label_names",
        10,
    ),
    "cifar100": (
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        {"train": ["train"], "test": ["test"]},
        "meta",
        "fine_labels",
        "fine_label_names",
        100,
    ),
}


def _str(x: Any) -> str:
    return x.decode("latin1") if isinstance(x, (bytes, bytearray)) else str(x)


def _get(record: Any, key: str, what: str) -> Any:
    if not isinstance(record, dict):
        raise DataError(
            f"{what}: expected a pickled dict, found {type(record).__name__}; re-download the dataset."
        )
    for k in (key, key.encode()):
        if k in record:
            return record[k]
    raise DataError(
        f"{what}: no '{key}' entry (found {sorted(_str(k) for k in record)}); "
        "this is not a CIFAR batch of the expected kind. Re-download the dataset."
    )


def find_pickle_dir(name: str, root: Path) -> Path | None:
    folder, _, files, meta, *_ = LAYOUT[name]
    for d in (root, root / folder):
        if d.is_dir() and (d / meta).is_file() and (d / files["train"][0]).exists():
            return d
    return None


def _parse(name: str, split: str, read: Callable[[str], Any], where: str) -> ImageSet:
    _, _, files, meta_name, label_key, names_key, n_cls = LAYOUT[name]
    classes = [_str(c) for c in _get(read(meta_name), names_key, f"{where}/{meta_name}")]
    if len(classes) != n_cls:
        raise DataError(f"{where}/{meta_name}: {len(classes)} class names, expected {n_cls} for {name}.")
    images, labels = [], []
    for f in files[split]:
        what = f"{where}/{f}"
        batch = read(f)
        data = np.asarray(_get(batch, "data", what))
        lab = np.asarray(_get(batch, label_key, what), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(
                f"{what}: 'data' is {data.dtype} {data.shape}, expected uint8 N x 3072 "
                "(32x32 RGB planes); re-download the dataset."
            )
        if len(lab) != len(data):
            raise DataError(
                f"{what}: {len(data)} images but {len(lab)} labels; expected one label per "
                "image. The file is damaged: re-download the dataset."
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    return ImageSet(np.concatenate(images), np.concatenate(labels), classes, where)


def read_pickle_dir(name: str, folder: Path, split: str) -> ImageSet:
    def read(fname: str) -> Any:
        p = folder / fname
        if not p.is_file():
            raise DataError(
                f"missing '{p}': a {LAYOUT[name][0]}/ folder holds "
                f"{', '.join(sum(LAYOUT[name][2].values(), []))} and {LAYOUT[name][3]}. "
                "Re-extract the archive or re-download."
            )
        with open(p, "rb") as fh:
            return safe_load(fh, str(p))

    return _parse(name, split, read, str(folder))


def read_pickle_archive(name: str, archive: Path) -> dict[str, ImageSet]:
    """Both splits straight from the downloaded cifar-*-python.tar.gz (one pass over the archive)."""
    _, _, files, meta, *_ = LAYOUT[name]
    wanted = set(sum(files.values(), [])) | {meta}
    blobs: dict[str, bytes] = {}
    for member, data in iter_archive(archive):
        base = PurePosixPath(member).name
        if base in wanted and data is not None:
            blobs[base] = data
    missing = sorted(wanted - set(blobs))
    if missing:
        raise DataError(
            f"archive '{archive}' lacks {missing}; expected the official "
            f"{LAYOUT[name][1]} from https://www.cs.toronto.edu/~kriz/cifar.html."
        )
    read = lambda f: safe_load(blobs[f], f"{archive}:{f}")  # noqa: E731
    return {s: _parse(name, s, read, str(archive)) for s in files}
