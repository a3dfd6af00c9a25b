"""Cache of decoded datasets: per (source, split) a .npy of uint8 images and a .json record.

Decoding 60,000 JPEGs takes seconds to minutes; loading the decoded array takes well under a second.
A cache file records the identity of its source (resolved path, size and mtime of the archive, or
of every file under a directory), the reader version, and CRC-32 checksums of images and labels. On
load, any mismatch -- source changed, reader changed, file truncated or corrupt -- is reported and
the entry rebuilt; a stale or damaged cache is never used. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .imageset import ImageSet, MissingSplitError

log = logging.getLogger(__name__)

READER_VERSION = 1  # bump whenever a reader's output for the same source could change


def default_cache_dir() -> Path:
    env = os.environ.get("GSSL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gssl"


def fingerprint(source: Path) -> dict:
    """Identity of a file (size, mtime) or of a directory tree (every file's size and mtime)."""
    source = source.resolve()
    st = source.stat()
    if source.is_file():
        return {"path": str(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    h, n = hashlib.sha256(), 0
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for f in sorted(filenames):
            p = os.path.join(dirpath, f)
            s = os.stat(p)
            h.update(f"{os.path.relpath(p, source)}\0{s.st_size}\0{s.st_mtime_ns}\n".encode())
            n += 1
    return {"path": str(source), "files": n, "digest": h.hexdigest()}


def cache_file(cache_dir: Path, kind: str, source: Path, split: str) -> Path:
    """The images file of one cached split; its record (labels, checksums...) sits beside it as .json."""
    tag = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{kind}-{source.name}-{tag}-{split}.npy"


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B"))


def load(path: Path, fp: dict) -> ImageSet | None:
    """The cached split, or None (with a log line saying why) if absent, stale or corrupt."""
    record = path.with_suffix(".json")
    if not path.is_file() and not record.is_file():
        return None
    images = labels = None
    try:
        meta = json.loads(record.read_text())
        if meta.get("version") != READER_VERSION:
            problem = f"reader version {meta.get('version')} != {READER_VERSION}"
        elif meta.get("fingerprint") != fp:
            problem = "the source changed since it was cached"
        else:  # only now read the (possibly GB-sized) array
            images = np.load(path, allow_pickle=False)
            labels = np.asarray(meta["labels"], dtype=np.int64)
            if images.dtype != np.uint8 or list(images.shape) != meta["shape"] or len(labels) != len(images):
                problem = f"array {images.dtype}{images.shape} does not match the record {meta['shape']}"
            elif _crc(images) != meta["crc_images"] or _crc(labels) != meta["crc_labels"]:
                problem = "checksum mismatch"
            else:
                problem = None
    except Exception as e:  # a damaged file can raise nearly anything; none of it may escape
        problem = f"unreadable ({type(e).__name__}: {e})"
    if problem:
        log.warning("cache %s is stale or corrupt (%s); rebuilding it", path, problem)
        return None
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), meta["classes"], meta["source"])


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(path: Path, ims: ImageSet, fp: dict) -> None:
    """Images as a plain .npy (loads at disk speed), then the record; a crash in between leaves a
    record whose checksum no longer matches, which `load` treats as corrupt."""
    images = ims.images.numpy()
    meta = {
        "version": READER_VERSION,
        "fingerprint": fp,
        "shape": list(images.shape),
        "classes": ims.classes,
        "source": ims.source,
        "crc_images": _crc(images),
        "crc_labels": _crc(ims.labels.numpy()),
        "labels": ims.labels.tolist(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda fh: np.save(fh, images, allow_pickle=False))
    _atomic_write(path.with_suffix(".json"), lambda fh: fh.write(json.dumps(meta).encode()))


def cached(
    kind: str,
    source: Path,
    split: str,
    build: Callable[[], dict[str, ImageSet]],
    cache_dir: Path | str | None | bool = None,
) -> ImageSet:
    """`build()[split]`, served from the cache when a valid entry exists; `cache_dir=False` disables it.

    `build` returns every split it decoded (an archive is read in one pass anyway), and all of them
    are cached, so asking for the test split after the train split costs nothing.
    """
    if cache_dir is False:
        built = build()
    else:
        cdir = default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)
        fp = fingerprint(source)  # taken before building: a source edited meanwhile reads as stale next time
        hit = load(cache_file(cdir, kind, source, split), fp)
        if hit is not None:
            log.info("loaded %s %s from cache", source, split)
            return hit
        log.info("decoding %s (one-off; cached under %s)", source, cdir)
        built = build()
        for s, ims in built.items():
            try:
                save(cache_file(cdir, kind, source, s), ims, fp)
            except OSError as e:
                log.warning("could not write cache under %s (%s); continuing without it", cdir, e)
    if split not in built:
        raise MissingSplitError(
            f"'{source}' has no {split} split (found {sorted(built)}); expected "
            f"{split}/<class>/<image> next to train/."
        )
    return built[split]
