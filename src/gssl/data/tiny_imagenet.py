"""Tiny-ImageNet in its standard `tiny-imagenet-200/` layout, from the folder or an archive.

train: `train/<wnid>/images/*.JPEG` (500 per class); the labelled validation images
`val/images/*.JPEG` with labels in `val/val_annotations.txt` (tab-separated, column 2 is the wnid)
serve as the test split, as in the paper. The unlabelled `test/` folder is ignored. About 2% of
the images are greyscale and are converted to RGB. Classes are the wnids sorted by name.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from .archive import iter_archive
from .decode import decode_all, is_image_name, stack_images
from .imageset import DataError, ImageSet

FOLDER = "tiny-imagenet-200"
ARCHIVES = ("tiny-imagenet-200-64px.tar.gz", "tiny-imagenet-200.tar.gz", "tiny-imagenet-200.zip")
HOW = (
    "expected the standard tiny-imagenet-200/ layout (train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
    "val/val_annotations.txt) as unpacked from http://cs231n.stanford.edu/tiny-imagenet-200.zip"
)


def find_tiny_dir(root: Path) -> Path | None:
    for d in (root, root / FOLDER):
        if (d / "train").is_dir() and (d / "val").is_dir():
            return d
    return None


def _parse_annotations(text: str, where: str) -> dict[str, str]:
    out = {}
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            cols = line.split("\t")
            if len(cols) < 2:
                raise DataError(f"{where} line {i}: expected '<file>\\t<wnid>\\t...', got {line!r}; {HOW}.")
            out[cols[0].strip()] = cols[1].strip()
    return out


def _build(
    train: list[tuple[str, str]],
    val: list[str],
    annotations: dict[str, str],
    arrays: list[np.ndarray],
    where: str,
) -> dict[str, ImageSet]:
    """train: (wnid, name) and val: name, both in decode order (train first, then val)."""
    classes = sorted({w for w, _ in train})
    if not classes:
        raise DataError(f"no training images found in '{where}'; {HOW}.")
    per_class = {c: 0 for c in classes}
    for w, _ in train:
        per_class[w] += 1
    index = {c: i for i, c in enumerate(classes)}
    order = sorted(range(len(train)), key=lambda k: (index[train[k][0]], train[k][1]))
    names = [train[k][1] for k in order]
    out = {
        "train": ImageSet(
            stack_images([arrays[k] for k in order], names, True),
            np.array([index[train[k][0]] for k in order], np.int64),
            classes,
            where,
        )
    }
    base = {PurePosixPath(n).name: k for k, n in enumerate(val)}
    missing = [f for f in annotations if f not in base]
    unlabelled = [f for f in base if f not in annotations]
    if missing or unlabelled:
        raise DataError(
            f"'{where}': val_annotations.txt labels {len(annotations)} images but val/images "
            f"holds {len(val)} (e.g. missing files {missing[:3]}, unlabelled files {unlabelled[:3]}); "
            f"the counts must match. {HOW}."
        )
    unknown = sorted({w for w in annotations.values() if w not in index})
    if unknown:
        raise DataError(
            f"'{where}': val_annotations.txt names wnids with no train folder: {unknown[:5]}; {HOW}."
        )
    if annotations:
        files = list(annotations)
        vk = [len(train) + base[f] for f in files]
        out["test"] = ImageSet(
            stack_images([arrays[k] for k in vk], files, True),
            np.array([index[annotations[f]] for f in files], np.int64),
            classes,
            where,
        )
    return out


def read_tiny_dir(folder: Path) -> dict[str, ImageSet]:
    train_dir = folder / "train"
    train = []
    for wdir in sorted(p for p in train_dir.iterdir() if p.is_dir()):
        img_dir = wdir / "images"
        imgs = sorted(p for p in img_dir.iterdir() if is_image_name(p.name)) if img_dir.is_dir() else []
        if not imgs:
            raise DataError(f"class folder '{img_dir}' holds no images; {HOW}.")
        train += [(wdir.name, str(p)) for p in imgs]
    ann_path = folder / "val" / "val_annotations.txt"
    if not ann_path.is_file():
        raise DataError(f"missing '{ann_path}'; {HOW}.")
    annotations = _parse_annotations(ann_path.read_text(), str(ann_path))
    val_dir = folder / "val" / "images"
    val = sorted(str(p) for p in val_dir.iterdir() if is_image_name(p.name)) if val_dir.is_dir() else []
    arrays = decode_all([(n, n) for _, n in train] + [(n, n) for n in val], rgb=True)
    return _build(train, val, annotations, arrays, str(folder))


def read_tiny_archive(archive: Path) -> dict[str, ImageSet]:
    train: list[tuple[str, str]] = []
    val: list[str] = []
    ann: list[str] = []
    prefixes: set[tuple[str, ...]] = set()
    stream: list[tuple[bool, int]] = []  # (is_val, position) of each decoded image, in archive order

    def members():
        for name, data in iter_archive(archive):
            p = PurePosixPath(name).parts
            if len(p) >= 4 and p[-4] == "train" and p[-2] == "images" and is_image_name(name):
                prefixes.add(p[:-4])
                train.append((p[-3], name))
                stream.append((False, len(train) - 1))
                yield name, data
            elif len(p) >= 3 and p[-3] == "val" and p[-2] == "images" and is_image_name(name):
                val.append(name)
                stream.append((True, len(val) - 1))
                yield name, data
            elif len(p) >= 2 and p[-2] == "val" and p[-1] == "val_annotations.txt":
                ann.append(data.decode("utf-8", "replace"))

    decoded = decode_all(members(), rgb=True)  # decodes while the archive is still being read
    if len(prefixes) > 1:
        raise DataError(
            f"archive '{archive}' holds more than one tiny-imagenet tree: {sorted(prefixes)}; {HOW}."
        )
    if not ann:
        raise DataError(f"archive '{archive}' has no val/val_annotations.txt; {HOW}.")
    arrays: list = [None] * len(decoded)  # _build wants train first, then val
    for (is_val, i), a in zip(stream, decoded):
        arrays[len(train) + i if is_val else i] = a
    return _build(
        train, val, _parse_annotations(ann[0], f"{archive}:val_annotations.txt"), arrays, str(archive)
    )
