"""One run, one writer: a process that trains into a run directory holds an exclusive lock on it.

Two processes training one run directory (a sweep started twice, a `--resume` typed while the run still
trains, a `--force` on someone's running job) would interleave their checkpoints and metrics and leave
a run that is neither. The lock is `flock` on RUN_DIR/.lock: the kernel drops it when its process ends,
however it ends (SIGKILL included), so a crash never leaves a run locked (at worst an unlocked file).
The file's text only names the holder for the message; it is removed when the run ends. On a network
file system where flock is not shared between hosts, the lock guards the processes of one host only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .rundir import LOCK, RunDirError, holds_nothing


def holder(run_dir: Path) -> str | None:
    """Who trains run_dir now ('pid 123 on host, since ...'), or None if no process holds its lock."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _named_holder(fd)
    finally:
        os.close(fd)  # closing drops the shared lock this probe may have taken
    return None


def refuse_if_held(run_dir: Path) -> None:
    """RunDirError (exit 2) if another process trains run_dir: for a dry run, which takes no lock."""
    who = holder(run_dir)
    if who is not None:
        raise RunDirError(_held_message(run_dir, who))


@contextlib.contextmanager
def claim(run_dir: Path) -> Iterator[None]:
    """Hold run_dir's lock while training; RunDirError (before anything is written) if another process
    holds it. The lock file goes when the lock does, and so do the folders made only to hold it."""
    run_dir = Path(run_dir)
    made = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]  # deepest first
    fd = _locked(run_dir)
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {since}\n".encode(), 0)
        yield
    finally:
        (run_dir / LOCK).unlink(missing_ok=True)  # still held: a process that opened it now finds it gone
        if made and holds_nothing(run_dir):
            for folder in made:
                with contextlib.suppress(OSError):  # not empty: another process's claim has taken it since
                    folder.rmdir()
        os.close(fd)


def _locked(run_dir: Path) -> int:
    """A descriptor of run_dir's lock file, locked: retried if the last holder removed the file between
    our open and our lock (a lock on a removed file guards nothing)."""
    path = run_dir / LOCK
    while True:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            problem = e.strerror or e
            raise RunDirError(f"cannot prepare {run_dir}: {problem}; choose a writable --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _named_holder(fd)
            os.close(fd)
            raise RunDirError(_held_message(run_dir, who)) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)


def _named_holder(fd: int) -> str:
    """The holder as its lock file names it ('pid 123 on host, since ...')."""
    return os.read(fd, 200).decode(errors="replace").strip() or "another process"


def _held_message(run_dir: Path, who: str) -> str:
    return (
        f"{run_dir} is being trained by another process ({who}); two processes writing one run would "
        "corrupt it: wait for that one to finish (or stop it and --resume), or choose another --out"
    )
