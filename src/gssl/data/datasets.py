"""Dataset registry: find a dataset under a root (folder or archive), read it, cache it, check it.

`load_dataset(name, root, split)` is the one entry point the rest of gssl uses. A root may be the
dataset folder itself, a folder containing it, or the downloaded archive; with root=None we look in
$GSSL_DATA, then ./data, then (Fashion-MNIST only) Debian's /usr/share/datasets/fashion-mnist.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from . import cache
from .archive import find_archive, is_archive
from .cifar import CIFAR10_CLASSES, LAYOUT, find_pickle_dir, read_pickle_archive, read_pickle_dir
from .folder import NoImageTree, has_folder_layout, read_folder_archive, read_folder_dir
from .idx import DEBIAN_DIR, find_idx_dir, read_fashion_mnist
from .imageset import ROOT_OPTIONS, DataError, ImageSet, MissingSplitError
from .tiny_imagenet import (
    ARCHIVES as TINY_ARCHIVES,
)
from .tiny_imagenet import (
    FOLDER as TINY_FOLDER,
)
from .tiny_imagenet import (
    find_tiny_dir,
    read_tiny_archive,
    read_tiny_dir,
)

DATASETS = frozenset({"cifar10", "cifar100", "tiny-imagenet", "fashion-mnist", "folder"})
SPLITS = ("train", "test")

_CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # LDAM-DRW uses these for both CIFARs
MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": _CIFAR_STATS,
    "cifar100": _CIFAR_STATS,
    "tiny-imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet statistics
    "fashion-mnist": ((0.2860,), (0.3530,)),  # measured on its 60,000 training images
}

# name -> (expected channels, image size or None, number of classes or None); Tiny-ImageNet subsets are fine
_EXPECT = {
    "cifar10": (3, 32, 10),
    "cifar100": (3, 32, 100),
    "tiny-imagenet": (3, None, None),
    "fashion-mnist": (1, 28, 10),
}

_JPG_NAMES = {
    "cifar10": ("cifar-10-jpg", ("cifar-10-jpg.tar.gz",)),
    "cifar100": ("cifar-100-jpg", ("cifar-100-jpg.tar.gz",)),
}


@dataclass
class Source:
    """Where a dataset was found and how to read it: `build` (decoded, cached) or `direct` (fast).
    `kind` names the reader; it is part of the cache key ("rgb-" readers force 3 channels)."""

    name: str
    kind: str
    path: Path
    build: Callable[[], dict[str, ImageSet]] | None = None
    direct: Callable[[str], ImageSet] | None = None


def _match(name: str, r: Path) -> Source | None:
    if name in ("cifar10", "cifar100"):
        py_archive = LAYOUT[name][1]
        jpg_dir, jpg_archives = _JPG_NAMES[name]
        if (d := find_pickle_dir(name, r)) is not None:
            return Source(name, "pickle-dir", d, direct=partial(read_pickle_dir, name, d))
        if r.is_file() and is_archive(r):
            if "python" in r.name:
                return Source(name, f"{name}-python", r, build=partial(read_pickle_archive, name, r))
            return Source(name, "rgb-folder-archive", r, build=partial(read_folder_archive, r, True))
        for d in (r, r / jpg_dir):
            if has_folder_layout(d):
                return Source(name, "rgb-folder-dir", d, build=partial(read_folder_dir, d, True))
        if (a := find_archive(r, jpg_archives)) is not None:
            return Source(name, "rgb-folder-archive", a, build=partial(read_folder_archive, a, True))
        if (a := find_archive(r, (py_archive,))) is not None:
            return Source(name, f"{name}-python", a, build=partial(read_pickle_archive, name, a))
    elif name == "tiny-imagenet":
        if (d := find_tiny_dir(r)) is not None:
            return Source(name, "tiny-dir", d, build=partial(read_tiny_dir, d))
        if (a := find_archive(r, TINY_ARCHIVES)) is not None:
            return Source(name, "tiny-archive", a, build=partial(read_tiny_archive, a))
    elif name == "fashion-mnist":
        if (d := find_idx_dir(r)) is not None:
            return Source(name, "idx", d, direct=partial(read_fashion_mnist, d))
    elif name == "folder":
        if is_archive(r):
            return Source(name, "folder-archive", r, build=partial(read_folder_archive, r, False))
        if has_folder_layout(r):
            return Source(name, "folder-dir", r, build=partial(read_folder_dir, r, False))
    return None


_LOOKED_FOR = {
    "cifar10": "cifar-10-batches-py/, cifar-10-jpg/{train,test}/<class>/, {train,test}/<class>/, "
    "cifar-10-jpg.tar.gz or cifar-10-python.tar.gz",
    "cifar100": "cifar-100-python/, cifar-100-jpg/{train,test}/<class>/, {train,test}/<class>/ or "
    "cifar-100-python.tar.gz",
    "tiny-imagenet": f"{TINY_FOLDER}/ (train/<wnid>/images/, val/val_annotations.txt) "
    f"or one of {TINY_ARCHIVES}",
    "fashion-mnist": "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz (directly or under fashion-mnist/)",
    "folder": "{train,test}/<class>/<image>, or a .tar.gz/.zip archive holding that tree",
}


def _how_to_fix(name: str) -> str:
    tips = [
        f"point data.root at the dataset folder, a folder containing it or its archive ({ROOT_OPTIONS})",
        "set GSSL_DATA=DIR",
    ]
    if name != "folder":
        tips.append(f"download it with `gssl data download {name} --dest DIR`")
    if name == "fashion-mnist":
        tips.append("`apt-get install dataset-fashion-mnist`")
    return "; or ".join(tips)


def resolve(name: str, root: str | os.PathLike | None = None) -> Source:
    """Find dataset `name` under `root` (or the default places); DataError saying how to fix if absent."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}.")
    if root is not None:
        r = Path(root).expanduser()
        if not r.exists():
            raise DataError(
                f"{name}: root '{r}' does not exist. Expected {_LOOKED_FOR[name]} there. "
                f"To fix: {_how_to_fix(name)}."
            )
        candidates = [r]
    else:
        candidates = [Path(p).expanduser() for p in (os.environ.get("GSSL_DATA"), "data") if p]
        if name == "fashion-mnist":
            candidates.append(DEBIAN_DIR)
    for r in candidates:
        if r.exists() and (src := _match(name, r)) is not None:
            return src
    where = ", ".join(f"'{c}'" for c in candidates) or "(no root given and GSSL_DATA unset)"
    hint = next((h for c in candidates if (h := _nearby(name, c))), "")
    raise DataError(
        f"{name}: looked in {where} for {_LOOKED_FOR[name]} and found none.{hint} "
        f"To fix: {_how_to_fix(name)}."
    )


def _nearby(name: str, r: Path, limit: int = 100) -> str:
    """A mis-laid dataset: `r` holds another known dataset, or `name` sits a folder or two below `r`."""
    if not r.is_dir():
        return ""
    for other in ("cifar10", "cifar100", "tiny-imagenet", "fashion-mnist"):
        if other != name and _match(other, r) is not None:
            return f" '{r}' holds {other}, not {name}: is data.name right?"
    subs = [p for p in itertools.islice(r.iterdir(), limit) if p.is_dir()]
    subs += [q for p in subs[:10] for q in itertools.islice(p.iterdir(), limit) if q.is_dir()]
    for d in sorted(subs)[:limit]:
        if _match(name, d) is not None:
            return f" It seems to be in '{d}': pass that as the root (data.root={d})."
    return ""


def _check(name: str, ims: ImageSet, src: Source) -> ImageSet:
    if name not in _EXPECT:
        return ims
    c, size, n_cls = _EXPECT[name]
    _, ch, h, w = ims.images.shape
    if ch != c or (size is not None and (h, w) != (size, size)) or (n_cls and len(ims.classes) != n_cls):
        raise DataError(
            f"{name} at '{src.path}': found {len(ims.classes)} classes of {ch}x{h}x{w} images, "
            f"expected {n_cls} classes of {c}x{size or 'H'}x{size or 'W'}. Is data.root pointing "
            "at the right dataset?"
        )
    if name == "cifar10" and "folder" in src.kind and ims.classes != CIFAR10_CLASSES:
        raise DataError(
            f"cifar10 at '{src.path}': class folders {ims.classes} are not CIFAR-10's "
            f"{CIFAR10_CLASSES}; use dataset 'folder' for other image folders."
        )
    return ims


def load_dataset(
    name: str,
    root: str | os.PathLike | None,
    split: str,
    *,
    cache_dir: str | os.PathLike | None | bool = None,
) -> ImageSet:
    """One split of a dataset as uint8 N x C x H x W + int64 labels (see module docstring for `root`).

    Decoded image datasets (JPEG folders and archives) are cached under `cache_dir` (default
    $GSSL_CACHE or ~/.cache/gssl; False disables it). Pickle and idx sources load directly.
    """
    if split not in SPLITS:
        raise DataError(
            f"unknown split {split!r}; expected one of {SPLITS} (the test split of "
            "tiny-imagenet is its labelled val set)."
        )
    src = resolve(name, root)
    try:
        if src.direct is not None:
            ims = src.direct(split)
        else:
            assert src.build is not None
            ims = cache.cached(src.kind, src.path, split, src.build, cache_dir)
    except NoImageTree as e:  # e.g. some other archive given as CIFAR-10's
        if name == "folder":
            raise
        raise DataError(
            f"{name}: '{src.path}' is not a {name} dataset ({e}) Expected {_LOOKED_FOR[name]}."
        ) from None
    return _check(name, ims, src)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std in [0, 1] units of uint8 N x C x H x W images.

    Computed exactly from each channel's 256-bin histogram: fast, and no float accumulation error."""
    values = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        p = hist / hist.sum()
        m = float((p * values).sum())
        mean.append(m)
        std.append(float((p * (values - m) ** 2).sum().sqrt()))
    return tuple(mean), tuple(std)


def mean_std(name: str, train: ImageSet | None = None, channels: int | None = None):
    """Normalisation constants: MEAN_STD[name], else measured on `train`; repeated to `channels`
    (e.g. 3 for Fashion-MNIST after `ImageSet.to_rgb()`)."""
    if name in MEAN_STD:
        mean, std = MEAN_STD[name]
    elif train is not None:
        mean, std = channel_stats(train.images)
    else:
        raise DataError(f"no published mean/std for {name!r}; pass its training ImageSet to measure them.")
    if channels is not None and channels != len(mean):
        if len(mean) != 1:
            raise DataError(
                f"{name} has {len(mean)}-channel statistics; cannot use them for {channels} channels."
            )
        mean, std = mean * channels, std * channels
    return tuple(mean), tuple(std)


def describe(
    name: str, root: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None | bool = None
) -> dict:
    """What `gssl data describe` prints: source, per-split counts, image shape, classes, cache."""
    src = resolve(name, root)
    splits, loaded = {}, {}
    for split in SPLITS:
        try:
            loaded[split] = ims = load_dataset(name, src.path, split, cache_dir=cache_dir)
        except MissingSplitError:  # a folder dataset may lack a test split
            continue
        splits[split] = {"count": len(ims), "per_class": ims.class_counts()}
    cdir = None
    if src.build is not None and cache_dir is not False:
        base = cache.default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)
        cdir = str(cache.cache_file(base, src.kind, src.path, "train").parent)
    return {
        "name": name,
        "source": str(src.path),
        "format": src.kind,
        "splits": splits,
        "image_shape": list(ims.image_shape),
        "num_classes": len(ims.classes),
        "classes": ims.classes,
        "mean_std": mean_std(name, loaded.get("train")),
        "cache": cdir,
    }
