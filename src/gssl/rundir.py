"""The run directory: atomic writes, checkpoints loaded weights-only, metrics as JSON lines.

A run is hours of someone's compute, so nothing here writes a file in place: every write goes to a
temporary file in the same folder, is fsynced, and replaces the target with os.replace. A kill at
any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import collections
import io
import json
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

import torch

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
RESOLVED = "resolved.json"  # what the configuration left open, as decided (schedule, device, precision...)
CKPT_DIR = "checkpoints"
LOCK = ".lock"  # held by the process that trains the run (gssl.runlock); never cleared by --force
RUN_FILES = (
    CONFIG,
    METRICS,
    SUMMARY,
    RESOLVED,
    CKPT_DIR,
    "eval-last.json",
    "eval-best.json",
    "tensorboard",
    "report.html",
    "report",
    "analysis",
)  # what --force clears; anything else is kept


class RunDirError(OSError):
    """A run directory that cannot be created, read or written; the message says why and what to do."""


def write_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise RunDirError(
            f"cannot write {path}: {e.strerror or e}; check the folder exists, is writable and has space"
        ) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the run from colleagues
            _fault_hook(path, data, f)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise RunDirError(
            f"cannot write {path}: {e.strerror or e}; check the disk has space and the folder is writable"
        ) from None
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


_writes: collections.Counter = collections.Counter()


def _fault_hook(path: Path, data: bytes, f) -> None:
    """Test-only fault injection, so tests can kill a run at an exact point of a write.

    GSSL_FAULT=kill-during-write:<file name>:<n> makes the n-th write of that file (counted per
    process, from 1) put half its bytes into the temporary file and then SIGKILL the process.
    """
    kind, _, rest = os.environ.get("GSSL_FAULT", "").partition(":")
    name, _, n = rest.rpartition(":")
    if kind != "kill-during-write" or path.name != name or not n.isdigit():
        return
    _writes[name] += 1
    if _writes[name] == int(n):
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


def remove_temp_files(run_dir: Path) -> list[Path]:
    """Delete temporary files a killed write left behind (`.<name>.*.tmp`); nothing reads them."""
    run_dir = Path(run_dir)
    gone = [p for d in (run_dir, run_dir / CKPT_DIR) if d.is_dir() for p in d.glob(".*.tmp") if p.is_file()]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Epochs are counted from 1 in every record and line gssl writes: metrics.jsonl's `epoch`, summary.json's
# `best_epoch` and an eval report's `epoch` are the number of epochs trained (the checkpoint's own `epoch`
# key stays the loop's index, 0 for the first, so that earlier checkpoints resume). Records written before
# this counted from 0: their metrics start at epoch 0, their summaries and reports lack EPOCHS_FROM, and
# the readers below shift them, so old and new records read alike.
EPOCHS_FROM = "epochs_counted_from"


def trained_epochs(checkpoint: dict) -> int:
    """The epoch a checkpoint was written after, counted from 1."""
    return int(checkpoint["epoch"]) + 1


def epochs_from_one(record: dict) -> dict:
    """A summary or eval report with its epochs counted from 1, whenever it was written."""
    if not isinstance(record, dict) or record.get(EPOCHS_FROM) == 1:
        return record
    shifted = {k: v + 1 for k, v in record.items() if k in ("epoch", "best_epoch") and type(v) is int}
    return {**record, **shifted, EPOCHS_FROM: 1} if shifted else record


def write_json(path: Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"cannot read {path}: {e}") from None


def progress(run_dir: Path, epochs: int) -> str:
    """How far a run to be resumed got: "resume: N of M epochs done" (its metrics rows)."""
    return f"resume: {len(read_metrics(run_dir))} of {epochs} epochs done"


def trained_precision(run_dir: Path) -> str | None:
    """The precision the run trained in as its resolved.json records it (a config's `null` is decided by
    the device: fp32 on a CPU, bf16 on a GPU); None where it records none."""
    path = Path(run_dir) / RESOLVED
    return read_json(path).get("execution", {}).get("precision") if path.is_file() else None


def save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(
            f"cannot create {path.parent}: {e.strerror or e}; check the folder is writable"
        ) from None
    write_atomic(path, buf.getvalue())


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """weights_only loading: a checkpoint from elsewhere cannot run code on this machine."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"no checkpoint at {path}; was the run started, and did it finish an epoch?")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise RunDirError(_unloadable(path, e) + _fallback(path)) from None


def _unloadable(path: Path, e: Exception) -> str:
    """A refused global (tampered or foreign file) and a damaged file call for different fixes."""
    if refused := re.search(r"GLOBAL ([\w.]+)", str(e)):
        return (
            f"checkpoint {path} cannot be loaded safely: it names {refused.group(1)}, and a gssl "
            "checkpoint holds only tensors and plain values (refused unread; do not trust this file)"
        )
    reason = str(e).strip().split(". ")[0].splitlines()[0] if str(e).strip() else "no more detail"
    return f"checkpoint {path} is damaged (truncated or overwritten: {type(e).__name__}: {reason})"


def _fallback(path: Path) -> str:
    """The run's other checkpoint, when it loads: `--checkpoint` picks it in eval, report and analyze."""
    run = path.parent.parent
    again = f"`gssl train --config {run / CONFIG} --out {run} --force` trains the run again"
    other = {"last.pt": "best", "best.pt": "last"}.get(path.name)
    if other is None or not (alt := path.with_name(f"{other}.pt")).is_file():
        return f"; the run has no other checkpoint: {again}"
    try:
        torch.load(alt, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a second bad file: offer nothing
        return f"; {alt.name} does not load either: {again}"
    return (
        f"; {alt} loads: `gssl eval/report/analyze {run} --checkpoint {other}` reads it "
        f"(`--resume` needs last.pt: {again})"
    )


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a torn last line (the file is written atomically, so only from outside gssl)
            if not isinstance(row, dict):
                break
            rows.append(row)
    if rows and rows[0].get("epoch") == 0:  # written before epochs were counted from 1
        rows = [{**r, "epoch": r["epoch"] + 1} if type(r.get("epoch")) is int else r for r in rows]
    return rows


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    """Rewrite the whole file atomically (it is small: one line per epoch)."""
    write_atomic(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())


def holds_nothing(run_dir: Path) -> bool:
    """Whether run_dir is empty but for its lock: a run that was claimed and never written is no run."""
    return all(path.name == LOCK for path in Path(run_dir).iterdir())


def check_out(run_dir: Path, *, force: bool) -> Path:
    """Refuse an --out that cannot hold a new run, without touching it (called before any slow work)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} exists and is not a directory; choose another --out")
    if run_dir.exists() and not holds_nothing(run_dir) and not force:
        raise RunDirError(
            f"output directory {run_dir} already exists and is not empty; "
            "pass --force to replace that run, --resume to continue it, or choose another --out"
        )
    return run_dir


def prepare(run_dir: Path, *, force: bool) -> Path:
    """Create a fresh run directory; an existing run is kept unless force, which clears only gssl's files.

    The engine calls this only once the data has loaded and the configuration fits it, so a refused
    run never clears the run it would have replaced."""
    run_dir = check_out(run_dir, force=force)
    try:
        if run_dir.exists() and not holds_nothing(run_dir):
            remove_temp_files(run_dir)
            for name in RUN_FILES:
                p = run_dir / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        (run_dir / CKPT_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot prepare {run_dir}: {e.strerror or e}; choose a writable --out") from None
    return run_dir


def restore(model, ck, path: Path, opt=None) -> None:
    """Load a checkpoint's weights, or say plainly why they do not fit this configuration."""
    try:
        model.load_state_dict(ck["model"])
        if opt is not None:
            opt.load_state_dict(ck["optimizer"])
            match_parameter_layout(opt)
        int(ck["epoch"]), float(ck["best_acc"]), int(ck["best_epoch"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        saved = ck.get("model") if isinstance(ck, dict) else None
        hint = _head_kind_hint(model, saved) if isinstance(saved, dict) else ""
        raise RunDirError(
            f"checkpoint {path} does not fit this configuration ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300]}); "
            + (hint or "was model.* or ssl.* changed since it was written?")
        ) from None


PRETEXT_HEAD_KEY = re.compile(r"(?:^|\.)heads\.([^.]+)\.(weight|bias)$")


def _head_kind_hint(model, saved: dict) -> str:
    """The fix when the same pretext heads were saved linear (with a bias) and are now built cosine, or
    the other way: SimCLR built linear heads whatever `model.head` said until the second renovation
    (2026-12-06), so a SimCLR run of that time that left `model.head` at its default says cosine."""

    def heads(keys) -> dict[str, bool]:  # task -> whether its head has a bias (a linear head)
        found: dict[str, bool] = {}
        for key in keys:
            match = PRETEXT_HEAD_KEY.search(key)
            if match:
                found[match[1]] = found.get(match[1], False) or match[2] == "bias"
        return found

    saved_heads, built_heads = heads(saved), heads(model.state_dict())
    if not saved_heads or saved_heads.keys() != built_heads.keys() or saved_heads == built_heads:
        return ""
    kind = "linear" if any(saved_heads.values()) else "cosine"
    return (
        f"its pretext heads were saved {kind} and this configuration builds them "
        f"{'cosine' if kind == 'linear' else 'linear'}: set `model.head: {kind}` in the run's config.yaml "
        "(SimCLR runs written before gssl read model.head for SimCLR, 2026-12-06, have linear heads)"
    )


def match_parameter_layout(opt) -> None:
    """Give every optimiser buffer its parameter's strides. A checkpoint written in one memory format
    (NCHW on CPU, say) and resumed in another (channels_last on a GPU) would otherwise pair NHWC
    parameters with NCHW momentum buffers, which the fused SGD kernel rejects on CUDA and, on CPU,
    silently mis-updates."""
    for group in opt.param_groups:
        for p in group["params"]:
            for name, buf in opt.state.get(p, {}).items():
                if isinstance(buf, torch.Tensor) and buf.shape == p.shape and buf.stride() != p.stride():
                    opt.state[p][name] = torch.empty_like(p, dtype=buf.dtype).copy_(buf)
