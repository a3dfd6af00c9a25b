"""Stream the regular files out of a .tar(.gz/.bz2/.xz) or .zip archive without unpacking it.

Datasets are read in place from the archive users download (or the copy in shared/data): nothing
is extracted into the working tree, and decoded arrays go to the cache instead.
"""

from __future__ import annotations

import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from .imageset import DataError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz", ".zip")


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def iter_archive(path: Path, dirs: bool = False) -> Iterator[tuple[str, bytes | None]]:
    """Yield (member name, contents) in archive order; directories as (name, None) if `dirs`."""
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if info.is_dir():
                        if dirs:
                            yield info.filename.rstrip("/"), None
                    else:
                        yield info.filename, zf.read(info)
            return
        with tarfile.open(path, mode="r|*") as tf:  # streaming: one sequential pass, no seeks
            for m in tf:
                if m.isfile():
                    f = tf.extractfile(m)
                    yield m.name, (f.read() if f is not None else b"")
                elif dirs and m.isdir():
                    yield m.name.rstrip("/"), None
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DataError(
            f"cannot read archive '{path}': {type(e).__name__}: {e}. Expected a complete "
            ".tar.gz/.zip file; it is probably truncated, so download or copy it again."
        ) from None


def find_archive(root: Path, names: tuple[str, ...]) -> Path | None:
    """`root` itself if it is one of the archives `names`, or the first of them inside `root`."""
    if root.is_file():
        return root if is_archive(root) else None
    for n in names:
        if (root / n).is_file():
            return root / n
    return None
