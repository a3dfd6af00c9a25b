"""Fashion-MNIST idx files (`{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`).

idx format: 2 zero bytes, a type code (0x08 = uint8), the number of dimensions, one big-endian
uint32 per dimension, then the raw data. Found in a user-given root, its `fashion-mnist/`
sub-folder, or Debian's /usr/share/datasets/fashion-mnist (package dataset-fashion-mnist).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from .imageset import ROOT_OPTIONS, DataError, ImageSet

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
HOW = (
    "expected train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz; install them with `apt-get install dataset-fashion-mnist` "
    "(to /usr/share/datasets/fashion-mnist), run `gssl data download fashion-mnist`, or point data.root "
    f"at them ({ROOT_OPTIONS})"
)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def find_idx_dir(root: Path) -> Path | None:
    for d in (root, root / "fashion-mnist", root / "FashionMNIST" / "raw"):
        if d.is_dir() and _find(d, FILES["train"][0]) and _find(d, FILES["test"][0]):
            return d
    return None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read '{path}': {e}; the file is truncated or not gzip. {HOW}.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        raise DataError(
            f"'{path}' is not a {ndim}-d uint8 idx file (header {raw[:4].hex()}, expected "
            f"000008{ndim:02x}); {HOW}."
        )
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(
            f"'{path}': header says {shape} ({int(np.prod(shape))} bytes) but holds {data.size}; "
            f"the file is truncated. {HOW}."
        )
    return data.reshape(shape)


def read_fashion_mnist(folder: Path, split: str) -> ImageSet:
    img_stem, lab_stem = FILES[split]
    img_path, lab_path = _find(folder, img_stem), _find(folder, lab_stem)
    if img_path is None or lab_path is None:
        raise DataError(f"'{folder}' lacks the {split} files {img_stem}.gz / {lab_stem}.gz; {HOW}.")
    images = read_idx(img_path, 3)
    labels = read_idx(lab_path, 1).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(
            f"'{img_path.name}' holds {len(images)} images but '{lab_path.name}' {len(labels)} "
            f"labels; expected equal counts (files from different versions?). {HOW}."
        )
    return ImageSet(images[:, None].copy(), labels, list(FASHION_CLASSES), str(folder))
