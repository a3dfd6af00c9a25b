"""Tiny on-disk datasets in each supported format, for tests (ours and the rest of gssl's).

Each writer produces the real layout with random pixels and returns the root to pass to
`load_dataset` together with the arrays the reader must give back. Images are PNG (lossless) so
tests can compare pixels exactly; JPEG is available where a test wants it.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 N x C x H x W, int64 labels)


def _images(rng: np.random.Generator, n: int, c: int, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)


def write_cifar(
    root: Path,
    name: str = "cifar10",
    n_train: int = 50,
    n_test: int = 20,
    seed: int = 0,
    protocol: int = 2,
    bytes_keys: bool = True,
    tint: float = 0.0,
) -> tuple[Path, Arrays]:
    """`cifar-10-batches-py/` (5 train batches) or `cifar-100-python/` with the real dict structure.

    tint > 0 blends each image towards a colour of its class, so a model can learn the labels."""
    rng = np.random.default_rng(seed)
    k = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    ncls = 10 if name == "cifar10" else 100
    folder = Path(root) / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    out: Arrays = {}
    palette = rng.integers(0, 256, (ncls, 3)) if tint else None
    for split, n in (("train", n_train), ("test", n_test)):
        x = _images(rng, n, 3, 32, 32)
        y = (np.arange(n) % ncls).astype(np.int64)
        rng.shuffle(y)
        if tint:
            x = ((1 - tint) * x + tint * palette[y][:, :, None, None]).astype(np.uint8)
        out[split] = (x, y)
    names = [f"class_{i:02d}" for i in range(ncls)]
    if name == "cifar10":
        names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        files = {
            f"data_batch_{i + 1}": ("train", part)
            for i, part in enumerate(np.array_split(np.arange(n_train), 5))
        }
        files["test_batch"] = ("test", np.arange(n_test))
        meta = (
            "batches.meta",
            {k("label_names"): names, k("num_cases_per_batch"): 10000, k("num_vis"): 3072},
        )
        label_key = "labels"
    else:
        files = {"train": ("train", np.arange(n_train)), "test": ("test", np.arange(n_test))}
        meta = (
            "meta",
            {k("fine_label_names"): names, k("coarse_label_names"): [f"super_{i}" for i in range(20)]},
        )
        label_key = "fine_labels"
    for fname, (split, idx) in files.items():
        x, y = out[split]
        batch = {
            k("batch_label"): f"{fname} of fakes".encode(),
            k(label_key): [int(v) for v in y[idx]],
            k("data"): x[idx].reshape(len(idx), -1),
            k("filenames"): [f"img_{i}.png".encode() for i in idx],
        }
        if name == "cifar100":
            batch[k("coarse_labels")] = [int(v) // 5 for v in y[idx]]
        with open(folder / fname, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    with open(folder / meta[0], "wb") as f:
        pickle.dump(meta[1], f, protocol=protocol)
    return folder, out


def _save(arr_chw: np.ndarray, path: Path, fmt: str) -> None:
    img = arr_chw[0] if arr_chw.shape[0] == 1 else arr_chw.transpose(1, 2, 0)
    Image.fromarray(img).save(path, format=fmt)


def write_folder(
    root: Path,
    classes: list[str],
    n_train: int = 4,
    n_test: int = 2,
    size: int = 32,
    channels: int = 3,
    fmt: str = "PNG",
    seed: int = 0,
) -> tuple[Path, Arrays]:
    """`<root>/{train,test}/<class>/NNNN.png`; returned arrays are in the reader's order."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    out: Arrays = {}
    ext = {"PNG": "png", "JPEG": "jpg"}.get(fmt, fmt.lower())
    for split, n in (("train", n_train), ("test", n_test)):
        xs, ys = [], []
        for ci, c in enumerate(sorted(classes)):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            x = _images(rng, n, channels, size, size)
            for i in range(n):
                _save(x[i], root / split / c / f"{i:04d}.{ext}", fmt)
            xs.append(x)
            ys.append(np.full(n, ci, np.int64))
        out[split] = (np.concatenate(xs), np.concatenate(ys))
    return root, out


def write_tiny_imagenet(
    root: Path, n_classes: int = 3, n_train: int = 3, n_val: int = 2, size: int = 64, seed: int = 0
) -> tuple[Path, Arrays]:
    """`tiny-imagenet-200/` with train/<wnid>/images, val/images + val_annotations.txt, a test/ folder,
    and one greyscale training image (the first image of the first class)."""
    rng = np.random.default_rng(seed)
    d = Path(root) / "tiny-imagenet-200"
    wnids = [f"n{1000000 + 37 * i:08d}" for i in range(n_classes)]
    (d / "val" / "images").mkdir(parents=True, exist_ok=True)
    (d / "test" / "images").mkdir(parents=True, exist_ok=True)
    (d / "wnids.txt").write_text(
        "\n".join(reversed(wnids)) + "\n"
    )  # file order != sorted order, as in the real one
    xs, ys = [], []
    for ci, w in enumerate(wnids):
        (d / "train" / w / "images").mkdir(parents=True)
        (d / "train" / w / f"{w}_boxes.txt").write_text("")
        x = _images(rng, n_train, 3, size, size)
        if ci == 0:
            x[0] = x[0, :1]  # greyscale: saved as mode L, read back as three equal channels
        for i in range(n_train):
            _save(
                x[i, :1] if (ci == 0 and i == 0) else x[i],
                d / "train" / w / "images" / f"{w}_{i}.JPEG",
                "PNG",
            )
        xs.append(x)
        ys.append(np.full(n_train, ci, np.int64))
    out: Arrays = {"train": (np.concatenate(xs), np.concatenate(ys))}
    xv = _images(rng, n_classes * n_val, 3, size, size)
    yv = np.arange(n_classes * n_val, dtype=np.int64) % n_classes
    lines = []
    for i in range(len(xv)):
        _save(xv[i], d / "val" / "images" / f"val_{i}.JPEG", "PNG")
        lines.append(f"val_{i}.JPEG\t{wnids[yv[i]]}\t0\t0\t{size - 1}\t{size - 1}")
    (d / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    _save(_images(rng, 1, 3, size, size)[0], d / "test" / "images" / "test_0.JPEG", "PNG")
    out["test"] = (xv, yv)
    return d, out


def _idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def write_fashion_mnist(
    root: Path, n_train: int = 30, n_test: int = 10, seed: int = 0
) -> tuple[Path, Arrays]:
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out: Arrays = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = _images(rng, n, 1, 28, 28)
        y = (np.arange(n) % 10).astype(np.int64)
        _idx(root / f"{prefix}-images-idx3-ubyte.gz", x[:, 0])
        _idx(root / f"{prefix}-labels-idx1-ubyte.gz", y)
        out[split] = (x, y)
    return root, out


def make_tar(src: Path, archive: Path, arcname: str | None = None) -> Path:
    """`src` packed as `archive` (.tar.gz), under top folder `arcname` (default: src's name)."""
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname=arcname if arcname is not None else Path(src).name)
    return archive
