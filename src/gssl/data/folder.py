"""Image-folder reader: `<root>/{train,test}/<class>/<image>`, from a directory or an archive.

Classes are the sorted folder names of the train split (torchvision's ImageFolder convention; for
CIFAR-10 the alphabetical order is also the official label order). Files within a class are read
in name order, so labels and image order never depend on the filesystem or the archive.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from .archive import iter_archive
from .decode import decode_all, is_image_name, stack_images
from .imageset import DataError, ImageSet

SPLITS = ("train", "test")


def has_folder_layout(root: Path) -> bool:
    return root.is_dir() and any((root / s).is_dir() for s in SPLITS)


def _list_split(split_dir: Path) -> dict[str, list[Path]]:
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"'{split_dir}' holds no class folders: expected {split_dir}/<class>/<image> "
            "(one sub-folder per class)."
        )
    files = {}
    for c in classes:
        imgs = sorted(p for p in (split_dir / c).iterdir() if p.is_file() and is_image_name(p.name))
        if not imgs:
            raise DataError(
                f"class folder '{split_dir / c}' holds no images (expected files such as "
                "0001.jpg or .png); add its images or delete the empty folder."
            )
        files[c] = imgs
    return files


class NoImageTree(DataError):
    """No train/<class>/<image> tree where one was expected (another dataset's folder or archive, say)."""


def _require_train(found: dict, where: str) -> None:
    """No train/<class>/<image> at all means another dataset, not a damaged one: say so first."""
    if "train" not in found:
        raise NoImageTree(
            f"no train split in '{where}': expected {where}/train/<class>/<image> (and test/<class>/<image>)."
        )


def _check_classes(found: dict[str, list[str]], where: str) -> list[str]:
    _require_train(found, where)
    classes = sorted(found["train"])
    for split, cs in found.items():
        if sorted(cs) != classes:
            extra, missing = sorted(set(cs) - set(classes)), sorted(set(classes) - set(cs))
            raise DataError(
                f"'{where}': the {split} split's class folders differ from train's "
                f"(extra {extra}, missing {missing}); every split needs the same class folders."
            )
    return classes


def read_folder_dir(root: Path, rgb: bool = True) -> dict[str, ImageSet]:
    """Every split present under `root` (at least train), decoded on all cores."""
    listing = {s: _list_split(root / s) for s in SPLITS if (root / s).is_dir()}
    classes = _check_classes({s: list(v) for s, v in listing.items()}, str(root))
    keys = [(s, i, str(p)) for s, files in listing.items() for i, c in enumerate(classes) for p in files[c]]
    arrays = decode_all(((n, n) for _, _, n in keys), rgb)
    return _assemble(keys, arrays, classes, rgb, str(root))


def _assemble(
    keys: list[tuple[str, int, str]], arrays: list[np.ndarray], classes: list[str], rgb: bool, source: str
) -> dict[str, ImageSet]:
    """Group decoded images by split, ordered by (label, name); one channel count for all splits."""
    colour = rgb or any(a.ndim == 3 for a in arrays)
    out = {}
    for split in SPLITS:
        sel = sorted((ci, n, k) for k, (s, ci, n) in enumerate(keys) if s == split)
        if sel:
            names = [n for _, n, _ in sel]
            imgs = stack_images([arrays[k] for _, _, k in sel], names, colour)
            out[split] = ImageSet(imgs, np.array([ci for ci, _, _ in sel], np.int64), classes, source)
    return out


def read_folder_archive(archive: Path, rgb: bool = True) -> dict[str, ImageSet]:
    """Same layout inside a tar/zip, optionally under one top folder (e.g. cifar-10-jpg/)."""
    prefix: tuple[str, ...] | None = None
    keys: list[tuple[str, str, str]] = []  # (split, class, member name) in archive order
    dir_parts: list[tuple[str, ...]] = []

    def members():
        nonlocal prefix
        for name, data in iter_archive(archive, dirs=True):
            parts = PurePosixPath(name).parts
            if data is None:  # directory: remembered so that empty class folders are reported
                dir_parts.append(parts)
                continue
            if len(parts) < 3 or parts[-3] not in SPLITS or not is_image_name(name):
                continue
            if prefix is None:
                prefix = parts[:-3]
            elif parts[:-3] != prefix:
                raise DataError(
                    f"archive '{archive}' holds more than one dataset root ('{'/'.join(prefix)}' "
                    f"and '{'/'.join(parts[:-3])}'); expected a single [top/]{{train,test}}/<class>/ tree."
                )
            keys.append((parts[-3], parts[-2], name))
            yield name, data

    arrays = decode_all(members(), rgb)
    found: dict[str, set[str]] = {}
    for split, cls, _ in keys:
        found.setdefault(split, set()).add(cls)
    where = f"{archive}:{'/'.join(prefix)}" if prefix else str(archive)
    _require_train(found, where)  # before the empty folders: another dataset's tree has "empty" ones
    for parts in dir_parts:
        if (
            len(parts) >= 2
            and parts[:-2] == (prefix or ())
            and parts[-2] in SPLITS
            and parts[-1] not in found.get(parts[-2], set())
        ):
            raise DataError(
                f"class folder '{'/'.join(parts)}' in '{archive}' holds no images; "
                "add its images or remove the empty folder from the archive."
            )
    classes = _check_classes({s: list(v) for s, v in found.items()}, where)
    index = {c: i for i, c in enumerate(classes)}
    return _assemble([(s, index[c], n) for s, c, n in keys], arrays, classes, rgb, str(archive))
