"""Faults: a run killed at chosen points (mid-write included), a non-finite loss, failed writes.

Each killed run is resumed and must end bit for bit where an uninterrupted run ends (CPU, one
thread in every process). The kills are exact: GSSL_FAULT (see rundir._fault_hook) makes the
process SIGKILL itself halfway through writing a named file. A kill at a random moment is in
tests/test_resume.py; a resume with a changed configuration is refused there too.
"""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from conftest import LEARNED_GATE_SETS, train_argv
from gssl import rundir
from gssl.cli import main
from gssl.method import GatedSSL

EPOCHS = 3
TIMING = {"seconds", "images_per_second"}
SUMMARY_VOLATILE = {"wall_seconds", "wall_seconds_this_process", "images_per_second", "command"}


def _args(root, out, *extra):
    """3 epochs of ResNet-8 with the gated triple on 140 tinted images: 4 steps an epoch."""
    return [*train_argv(root, out, f"optim.epochs={EPOCHS}", *LEARNED_GATE_SETS), *extra]


def _main(argv):
    """In-process runs use one thread, as the subprocesses do: the same float sums, bit for bit."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(argv)
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def reference(fake_cifar10, tmp_path_factory):
    """The uninterrupted run every faulted run is compared with."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    assert _main(_args(fake_cifar10, out)) == 0
    return out


def _killed_run(root, out, fault):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GSSL_FAULT": fault}
    r = subprocess.run(
        [sys.executable, "-m", "gssl", *_args(root, out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == -signal.SIGKILL, f"the fault {fault} did not fire: {r.stderr[-2000:]}"
    assert not (out / "summary.json").exists() or fault.startswith("kill-during-write:summary.json")


def _rows(run):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rundir.read_metrics(run)]


def _temp_files(run):
    return sorted(p.name for d in (run, run / "checkpoints") for p in d.glob(".*.tmp"))


def _same_run(a, b):
    assert _rows(a) == _rows(b)
    for name in ("last", "best"):
        ca, cb = (rundir.load_checkpoint(r / "checkpoints" / f"{name}.pt") for r in (a, b))
        assert (ca["epoch"], ca["best_acc"], ca["best_epoch"]) == (
            cb["epoch"],
            cb["best_acc"],
            cb["best_epoch"],
        )
        assert ca["model"].keys() == cb["model"].keys()
        assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"]), name
        sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
        assert all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (a, b))
    assert {k: v for k, v in sa.items() if k not in SUMMARY_VOLATILE} == {
        k: v for k, v in sb.items() if k not in SUMMARY_VOLATILE
    }


# (fault, epoch that last.pt must hold after the kill, metrics rows left after the kill)
KILLS = [
    ("kill-during-write:last.pt:2", 0, 2),  # mid-checkpoint, second epoch
    ("kill-during-write:metrics.jsonl:4", 1, 2),  # mid-metrics, third epoch (write 1 is the empty file)
    ("kill-during-write:summary.json:1", 2, 3),  # every epoch done, the summary half written
]


@pytest.mark.parametrize("fault, kept_epoch, rows", KILLS, ids=[k[0].split(":", 1)[1] for k in KILLS])
def test_kill_mid_write_keeps_the_previous_checkpoint_and_resume_is_exact(
    fake_cifar10, reference, tmp_path, fault, kept_epoch, rows
):
    run = tmp_path / "run"
    _killed_run(fake_cifar10, run, fault)
    target = fault.split(":")[1]
    assert any(n.startswith(f".{target}.") for n in _temp_files(run)), "the kill did not happen mid-write"
    assert rundir.load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == kept_epoch
    assert len(rundir.read_metrics(run)) == rows
    assert not (run / "summary.json").exists()
    # and what a copy made by a tool that is not atomic could add: a torn last line, another stray temp file
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 7, "lr": 0.')
    (run / ".config.yaml.abc123.tmp").write_text("seed: 9")

    assert _main(["train", "--resume", str(run), "--quiet"]) == 0
    assert _temp_files(run) == []
    _same_run(run, reference)


def test_kill_during_the_first_checkpoint_leaves_nothing_to_resume(fake_cifar10, tmp_path, capsys):
    run = tmp_path / "run"
    _killed_run(fake_cifar10, run, "kill-during-write:best.pt:1")
    assert not (run / "checkpoints" / "best.pt").exists() and not (run / "checkpoints" / "last.pt").exists()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "no checkpoint yet" in capsys.readouterr().err


@pytest.mark.parametrize("epoch, step", [(1, 2), (0, 1)])
def test_non_finite_loss_stops_with_epoch_step_and_terms(
    fake_cifar10, tmp_path, monkeypatch, capsys, epoch, step
):
    """A NaN injected at (0-based) epoch, step: exit 1, message, the last good checkpoint kept."""
    steps_per_epoch, calls = 4, []
    real = GatedSSL.loss_from_params

    def poisoned(self, *a, **kw):
        loss, stats = real(self, *a, **kw)
        calls.append(1)
        if len(calls) == epoch * steps_per_epoch + step + 1:
            nan = torch.tensor(float("nan"))
            stats = {**stats, "cls_loss": nan, "loss": nan}
            loss = loss + nan
        return loss, stats

    monkeypatch.setattr(GatedSSL, "loss_from_params", poisoned)
    run = tmp_path / "run"
    assert _main(_args(fake_cifar10, run)) == 1
    err = capsys.readouterr().err
    assert f"non-finite loss at epoch {epoch + 1}/{EPOCHS}, step {step + 1}/{steps_per_epoch}" in err
    assert "cls_loss=nan" in err and "ssl_lorot=" in err and "gate_flip=" in err and "aux=" in err
    assert not (run / "summary.json").exists()
    assert len(rundir.read_metrics(run)) == epoch
    if epoch:
        assert "last good checkpoint (after epoch 1)" in err
        assert rundir.load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == epoch - 1
    else:
        assert "no checkpoint was written" in err and not (run / "checkpoints" / "last.pt").exists()


def test_forced_resume_with_a_config_the_checkpoint_cannot_fit_changes_nothing(reference, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for p in reference.rglob("*"):
        if p.is_file():
            (run / p.relative_to(reference)).parent.mkdir(parents=True, exist_ok=True)
            (run / p.relative_to(reference)).write_bytes(p.read_bytes())
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    change = ["--set", "model.backbone=resnet32", "--set", "optim.epochs=4", "--quiet"]
    assert main(["train", "--resume", str(run), *change]) == 2
    assert "differs from the run's saved one in: model.backbone, optim.epochs" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), *change, "--force"]) == 2
    assert re.search(r"checkpoint .*last\.pt does not fit this configuration", capsys.readouterr().err)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def _failing_fsync(monkeypatch, prefix, nth, err):
    """os.fsync fails (as on a full disk) on the nth temporary file whose name starts with prefix."""
    real, seen = os.fsync, []

    def fsync(fd):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) if isinstance(fd, int) else ""
        if name.startswith(prefix):
            seen.append(name)
            if len(seen) == nth:
                raise OSError(err, os.strerror(err))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_disk_full_mid_run_stops_cleanly_and_resumes_exactly(
    fake_cifar10, reference, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    _failing_fsync(monkeypatch, ".last.pt.", 2, errno.ENOSPC)
    assert _main(_args(fake_cifar10, run)) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "last.pt" in err and f"--resume {run}" in err
    assert _temp_files(run) == []
    assert rundir.load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 0
    assert not (run / "summary.json").exists()

    monkeypatch.undo()
    assert _main(["train", "--resume", str(run), "--quiet"]) == 0
    _same_run(run, reference)


@pytest.mark.parametrize(
    "where, err",
    [("fsync", errno.ENOSPC), ("replace", errno.EACCES), ("mkstemp", errno.EACCES), ("write", errno.ENOSPC)],
)
def test_a_failed_write_is_a_clear_error_and_leaves_the_old_file(tmp_path, monkeypatch, where, err):
    target = tmp_path / "last.pt"
    target.write_bytes(b"previous checkpoint")

    def fail(*a, **kw):
        raise OSError(err, os.strerror(err))

    if where == "mkstemp":
        monkeypatch.setattr(rundir.tempfile, "mkstemp", fail)
    elif where == "write":  # the bytes do not fit: the failure surfaces when the buffer is flushed
        real_fdopen = os.fdopen

        class Full:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                raise OSError(err, os.strerror(err))

        monkeypatch.setattr(rundir.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    else:
        monkeypatch.setattr(rundir.os, where, fail)
    with pytest.raises(rundir.RunDirError, match=re.escape(f"cannot write {target}: {os.strerror(err)}")):
        rundir.save_checkpoint(target, {"epoch": 1})
    assert target.read_bytes() == b"previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_unwritable_output_directory_exits_2(fake_cifar10, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert main(_args(fake_cifar10, blocker / "run")) == 2
    assert (
        "cannot prepare" in capsys.readouterr().err
        and blocker.read_text() == "a file where a folder should be"
    )


def _snapshot(run):
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_damaged_last_checkpoint_is_named_with_its_fix(tiny_run, tmp_path, capsys):
    """Truncated last.pt: "damaged", not "unsafe"; the intact best.pt is offered, and it does work."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = _snapshot(run)
    r = subprocess.run([sys.executable, "-m", "gssl", "eval", str(run)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert re.search(r"^gssl: error: checkpoint \S+/checkpoints/last\.pt is damaged \(truncated", r.stderr)
    assert "safely" not in r.stderr
    assert f"{run}/checkpoints/best.pt loads: `gssl eval/report/analyze {run} --checkpoint best`" in r.stderr
    assert _snapshot(run) == before
    (run / "summary.json").unlink()  # an interrupted run: a finished one has nothing to resume
    before = _snapshot(run)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "last.pt is damaged" in capsys.readouterr().err
    assert _snapshot(run) == before
    assert main(["eval", str(run), "--checkpoint", "best"]) == 0  # the fix offered
    (run / "checkpoints" / "best.pt").unlink()
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"no other checkpoint: `gssl train --config {run}/config.yaml --out {run} --force`" in err
