"""Stopping gssl with a signal (`kill`, a closed terminal, a GPU window's `timeout`) works as Ctrl-C does: a
training run keeps its last checkpoint and exits 130 saying how to resume, and a sweep or a campaign stops
its runs too (they train in sessions of their own, which no signal to the parent reaches). Real processes
on the fake CIFAR-10, and the handlers themselves in this process."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from conftest import TINY_SETTINGS, as_sets, train_argv, wait_for
from gssl import interrupts, rundir, runlock, sweep
from gssl.cli import main

LONG = {**TINY_SETTINGS, "device": "cpu", "compile": False, "optim.epochs": 300, "optim.base_epochs": 300}


def _spec(tmp_path, data_root, out):
    spec = tmp_path / "spec.yaml"
    runs = [{"name": "long", "preset": "cifar10-lt0.01-gated-triple"}]
    spec.write_text(
        yaml.safe_dump(
            {"out": str(out), "seeds": [0], "set": {"data.root": str(data_root), **LONG}, "runs": runs}
        )
    )
    return spec


def _start(argv: list[str]) -> subprocess.Popen:
    """`gssl ARGV` as `nohup` would start it: SIGHUP ignored."""
    return subprocess.Popen(
        [sys.executable, "-m", "gssl", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
    )


def _trainer_pid(run_dir) -> int:
    """The pid of the process training run_dir, from its lock ("pid N on HOST, since ...")."""
    return int(runlock.holder(run_dir).split()[1])


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_sigterm_stops_a_sweep_and_its_run_and_the_same_command_resumes_it(fake_cifar10, tmp_path, capsys):
    out = tmp_path / "sweep"
    spec = _spec(tmp_path, fake_cifar10, out)
    run_dir = out / "long" / "seed0"
    sweep = _start(["sweep", str(spec)])
    try:
        wait_for(lambda: (run_dir / "checkpoints" / "last.pt").is_file(), "the run's first checkpoint", 180)
        trainer = _trainer_pid(run_dir)
        sweep.send_signal(signal.SIGHUP)  # ignored, as under nohup: the sweep and its run go on
        time.sleep(1)
        assert sweep.poll() is None and not _gone(trainer)
        sweep.send_signal(signal.SIGTERM)
        _, said = sweep.communicate(timeout=60)
    finally:
        sweep.kill()
    assert sweep.returncode == 130, said
    assert "gssl: interrupted by SIGTERM; the same `gssl sweep` command resumes each unfinished run" in said
    assert _gone(trainer) and runlock.holder(run_dir) is None  # the run stopped with its sweep
    done = len(rundir.read_metrics(run_dir))
    time.sleep(1)
    assert len(rundir.read_metrics(run_dir)) == done < 300  # nothing trains it any more
    assert main(["sweep", str(spec), "--dry-run"]) == 0
    assert f"[resume: {done} of 300 epochs done]" in capsys.readouterr().out


def test_sigterm_stops_a_campaign_which_still_hands_back_its_records(fake_cifar10, tmp_path):
    out, export = tmp_path / "campaign", tmp_path / "export"
    spec = _spec(tmp_path, fake_cifar10, out)
    run_dir = out / "long" / "seed0"
    argv = ["campaign", str(spec), "--budget-s", "600", "--startup-s", "1", "--epoch-s", "0.01"]
    campaign = _start([*argv, "--export", str(export)])
    try:
        wait_for(lambda: (run_dir / "checkpoints" / "last.pt").is_file(), "the run's first checkpoint", 180)
        trainer = _trainer_pid(run_dir)
        campaign.send_signal(signal.SIGTERM)
        told, said = campaign.communicate(timeout=60)
    finally:
        campaign.kill()
    assert campaign.returncode == 130, said
    assert "stopped long seed 0 on SIGTERM" in told and f"records of every run written to {export}" in told
    assert "the same `gssl campaign` command resumes" in said
    assert _gone(trainer) and runlock.holder(run_dir) is None
    # what a GPU window's `timeout` leaves: the unfinished run's records and checkpoint, handed back
    exported = export / "long" / "seed0"
    assert (exported / "config.yaml").is_file() and (exported / "checkpoints" / "last.pt").is_file()
    assert len(rundir.read_metrics(exported)) == len(rundir.read_metrics(run_dir)) >= 1


def test_sigterm_stops_gssl_train_as_ctrl_c_does_and_resume_goes_on(fake_cifar10, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train = _start(train_argv(fake_cifar10, run_dir, *as_sets(LONG)))
    try:
        wait_for(lambda: (run_dir / "checkpoints" / "last.pt").is_file(), "the run's first checkpoint", 180)
        train.send_signal(signal.SIGTERM)
        _, said = train.communicate(timeout=60)
    finally:
        train.kill()
    assert train.returncode == 130, said  # not -15: it unwound as from Ctrl-C
    assert (
        "gssl: interrupted by SIGTERM; `gssl train --resume RUN_DIR` continues from the last checkpoint"
        in said
    )
    assert runlock.holder(run_dir) is None
    done = len(rundir.read_metrics(run_dir))
    assert 1 <= done < 300
    assert main(["train", "--resume", str(run_dir), "--dry-run"]) == 0
    planned = capsys.readouterr().out
    assert f"resume: {done} of 300 epochs done" in planned, planned


def test_a_signal_inside_a_deferred_block_interrupts_once_the_block_has_run():
    assert threading.current_thread() is threading.main_thread()  # where Python lets handlers be set
    before = signal.getsignal(signal.SIGTERM)
    ran = []
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with interrupts.interrupted_by_signals(), interrupts.deferred():
            signal.raise_signal(signal.SIGTERM)
            ran.append("the rest of the block")  # a sweep's bookkeeping of the run it just started
    assert ran == ["the rest of the block"]
    with pytest.raises(KeyboardInterrupt, match="SIGHUP"):
        with interrupts.interrupted_by_signals():
            signal.raise_signal(signal.SIGHUP)
            ran.append("never")  # outside a deferred block the interrupt comes at once
    assert ran == ["the rest of the block"]
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are put back


def test_stopping_several_runs_waits_once_for_all_and_kills_those_that_ignore_the_signal():
    """A campaign stops every run at its deadline, so the wait for them is shared: four processes that
    ignore SIGTERM are killed after one grace period, not four in a row (the old one-by-one stop could
    overrun a window's budget by 15 s a run); one that obeys is gone at once, with its exit code."""
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); "
        "time.sleep(600)"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", stubborn], stdout=subprocess.PIPE, start_new_session=True)
        for _ in range(4)
    ]
    obedient = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    for process in processes:
        assert process.stdout.readline() == b"1\n"  # its handler is set before the signal comes
    started = time.monotonic()
    sweep.stop_runs([obedient, *processes], grace_s=2.0)
    took = time.monotonic() - started
    assert obedient.returncode == -signal.SIGTERM
    assert [process.returncode for process in processes] == [-signal.SIGKILL] * 4
    assert 2.0 <= took < 6.0, took  # one shared grace period, not 4 x 2 s
    sweep.stop_runs(processes)  # stopping what has already ended is a no-op
