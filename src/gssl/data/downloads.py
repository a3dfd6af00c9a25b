"""`gssl data download`: fetch a dataset from its official source, verify it, unpack it atomically.

Every file is streamed to a temporary name, checked against its published MD5, and only then
renamed into place; archives are unpacked into a temporary folder that is renamed when complete,
so an interrupted run never leaves something that looks usable. Offline, the first failed
connection (short timeout) ends the command with a message saying how to use a local copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .imageset import ROOT_OPTIONS, DataError

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0
_FASHION = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)


@dataclass(frozen=True)
class Resource:
    filename: str
    urls: tuple[str, ...]  # mirrors, tried in order
    md5: str
    extract: bool


SOURCES: dict[str, tuple[str, tuple[Resource, ...]]] = {  # name -> (folder load_dataset reads, files)
    "cifar10": (
        "cifar-10-batches-py",
        (
            Resource(
                "cifar-10-python.tar.gz",
                ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                "c58f30108f718f92721af3b95e74349a",
                True,
            ),
        ),
    ),
    "cifar100": (
        "cifar-100-python",
        (
            Resource(
                "cifar-100-python.tar.gz",
                ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
                "eb9058c3a382ffc7106e4002c42a8d85",
                True,
            ),
        ),
    ),
    "fashion-mnist": (
        "fashion-mnist",
        tuple(
            Resource(f, tuple(m + f for m in _FASHION), md5, False)
            for f, md5 in (
                ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
                ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
                ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
            )
        ),
    ),
    "tiny-imagenet": (
        "tiny-imagenet-200",
        (
            Resource(
                "tiny-imagenet-200.zip",
                ("http://cs231n.stanford.edu/tiny-imagenet-200.zip",),
                "90528d7ca1a48142e341f4ef8d21d0de",
                True,
            ),
        ),
    ),
}


def md5sum(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _local_copy_hint(name: str) -> str:
    tip = (
        f"If this machine is offline, copy the dataset here by other means and point gssl at it: "
        f"data.root ({ROOT_OPTIONS}) or GSSL_DATA=DIR, DIR holding {SOURCES[name][0]}/ or "
        f"{SOURCES[name][1][0].filename}"
    )
    if name == "fashion-mnist":
        tip += ", or `apt-get install dataset-fashion-mnist` (read from /usr/share/datasets/fashion-mnist)"
    return tip + "."


def fetch(url: str, target: Path, md5: str, timeout: float = TIMEOUT_S) -> Path:
    """Download `url` to `target` via a temp file; raise DataError on a checksum mismatch.
    Network errors (OSError, including URLError and timeouts) propagate to the caller."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        h = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while block := resp.read(1 << 20):
                h.update(block)
                out.write(block)
        if h.hexdigest() != md5:
            raise DataError(
                f"checksum mismatch for {url}: md5 {h.hexdigest()}, expected {md5}. The download "
                "is corrupt or the file changed upstream; nothing was kept. Try again, or use a "
                "local copy (data.root or GSSL_DATA)."
            )
        os.replace(tmp, target)
        return target
    finally:
        Path(tmp).unlink(missing_ok=True)


def _extract(archive: Path, dest: Path) -> None:
    """Unpack into a temp folder inside `dest`, then rename each top-level entry into place."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:  # zipfile strips '..' and absolute paths itself
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tf:
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(tmp, filter="data")  # refuses links/paths escaping tmp
                else:  # pragma: no cover - Python without PEP 706
                    for m in tf.getmembers():
                        if (
                            m.name.startswith(("/", ".."))
                            or ".." in Path(m.name).parts
                            or m.issym()
                            or m.islnk()
                        ):
                            raise DataError(f"unsafe member {m.name!r} in {archive}; refusing to extract.")
                    tf.extractall(tmp)
        for entry in tmp.iterdir():
            if not (dest / entry.name).exists():
                os.replace(entry, dest / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download(name: str, dest: str | os.PathLike | None = None, *, timeout: float = TIMEOUT_S) -> Path:
    """Fetch dataset `name` into `dest` (default $GSSL_DATA or ./data); return the folder to pass as root.

    Files already present with the right checksum are not fetched again.
    """
    if name not in SOURCES:
        raise DataError(f"no download source for {name!r}; downloadable: {sorted(SOURCES)}.")
    dest = Path(dest if dest is not None else os.environ.get("GSSL_DATA") or "data").expanduser()
    folder, resources = SOURCES[name]
    final = dest / folder
    if final.exists() and not any(r.extract is False for r in resources):
        log.info("%s already present at %s", name, final)
        return final
    target_dir = dest if any(r.extract for r in resources) else final
    target_dir.mkdir(parents=True, exist_ok=True)
    for res in resources:
        target = target_dir / res.filename
        if not (target.is_file() and md5sum(target) == res.md5):
            errors = []
            for url in res.urls:
                log.info("downloading %s", url)
                try:
                    fetch(url, target, res.md5, timeout)
                    break
                except OSError as e:  # URLError, HTTPError, timeouts, refused connections
                    errors.append(f"{url}: {getattr(e, 'reason', e)}")
            else:
                raise DataError(
                    f"could not download {res.filename} ({'; '.join(errors)}). " + _local_copy_hint(name)
                )
        if res.extract:
            _extract(target, dest)
    if not final.exists():
        raise DataError(
            f"{resources[0].filename} did not contain {folder}/; the archive is not the expected one."
        )
    return final
