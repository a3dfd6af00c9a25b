"""One run, one writer (gssl.runlock): a second process that would train a run another process is training
is refused before it writes anything, a sweep or campaign leaves such a run to its process, and a holder
killed with SIGKILL leaves no lock behind. Real `gssl train`, `gssl sweep`, `gssl campaign` and `gssl pack`
processes on the fake CIFAR-10 (ResNet-8, CPU)."""

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import TINY_SETTINGS, as_sets, set_flags, train_argv, wait_for
from gssl import rundir, runlock
from gssl.cli import main
from gssl.presets import resolve
from gssl.runconfig import to_yaml

TINY = {**TINY_SETTINGS, "device": "cpu", "compile": False, "diagnose_every": 0}


def _train_argv(data_root: Path, out: Path, epochs: int) -> list[str]:
    return train_argv(data_root, out, *as_sets({**TINY, "optim.epochs": epochs, "optim.base_epochs": epochs}))


@contextlib.contextmanager
def _held_by_another_process(run_dir: Path):
    """A second Python process holding run_dir's lock, as a training process would, until the block ends."""
    code = "import sys, time; from gssl import runlock\nwith runlock.claim(sys.argv[1]):\n    time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_dir)])
    try:
        wait_for(lambda: runlock.holder(run_dir) is not None, "the other process to hold the lock")
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_a_second_process_cannot_resume_or_force_a_run_while_it_trains(
    fake_cifar10, tmp_path, capsys, one_thread
):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "gssl", *_train_argv(fake_cifar10, run_dir, 20)]
    trainer = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        # the first epoch's checkpoint (written after its metrics row), then the trainer held mid-run, lock
        # and all, however slowly the tries below go
        wait_for(lambda: (run_dir / "checkpoints" / "last.pt").is_file(), "the first checkpoint", 180)
        trainer.send_signal(signal.SIGSTOP)
        assert trainer.poll() is None, "the run finished before the second process could try"
        config = (run_dir / "config.yaml").read_bytes()
        assert main(["train", "--resume", str(run_dir), "--quiet"]) == 2
        said = capsys.readouterr().err
        assert f"being trained by another process (pid {trainer.pid} on " in said and "--resume" in said
        assert main(_train_argv(fake_cifar10, run_dir, 2) + ["--force"]) == 2
        assert f"pid {trainer.pid}" in capsys.readouterr().err
        assert main(["train", "--resume", str(run_dir), "--dry-run"]) == 2
        assert f"pid {trainer.pid}" in capsys.readouterr().err
        # nothing was written: the forced run would have replaced the configuration and cleared checkpoints
        assert (run_dir / "config.yaml").read_bytes() == config
        assert (run_dir / "checkpoints" / "last.pt").is_file()
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
    # SIGKILL ran no clean-up: the lock file is still there, but the kernel dropped the lock with the process
    assert (run_dir / rundir.LOCK).is_file() and runlock.holder(run_dir) is None
    done = len(rundir.read_metrics(run_dir))
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert [row["epoch"] for row in rundir.read_metrics(run_dir)] == list(range(1, 21)) and done < 20


def test_resuming_a_held_run_names_its_trainer_before_anything_its_folder_lacks(tmp_path, capsys):
    """A run still in its first epoch has a config but no checkpoint: while it trains, --resume says who
    trains it (not "no checkpoint yet ... --force", advice that is the trainer's to take)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / rundir.CONFIG).write_text(to_yaml(resolve("cifar10-lt0.01-gated-triple")))
    with _held_by_another_process(run_dir) as holder:
        assert main(["train", "--resume", str(run_dir), "--quiet"]) == 2
        said = capsys.readouterr().err
    assert f"being trained by another process (pid {holder.pid} on " in said and "no checkpoint" not in said
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 2  # free now: the folder's own problem
    assert "no checkpoint yet" in capsys.readouterr().err


def test_a_claim_leaves_nothing_behind_and_a_lone_lock_file_is_no_run(tmp_path):
    fresh = tmp_path / "new" / "sweep" / "seed0"
    with runlock.claim(fresh):
        # flock locks an open file: a second claim fails even in the same process
        assert runlock.holder(fresh).startswith(f"pid {os.getpid()} on ")
    assert list(tmp_path.iterdir()) == []  # the folders made for the lock go with it when nothing was written
    kept = tmp_path / "kept"
    kept.mkdir()
    with runlock.claim(kept):
        assert (kept / rundir.LOCK).is_file()
    assert kept.is_dir() and not any(kept.iterdir())  # a folder it did not make stays, without the lock
    (kept / rundir.LOCK).write_text("pid 1 on a host whose process died with SIGKILL\n")
    assert runlock.holder(kept) is None and rundir.check_out(kept, force=False) == kept  # no run, no lock


def test_a_sweep_leaves_a_run_to_the_process_that_trains_it(fake_cifar10, tmp_path, capsys, one_thread):
    out = tmp_path / "sweep"
    runs = [{"name": name, "preset": "cifar10-lt0.01-gated-triple"} for name in ("held", "free")]
    settings = {"data.root": str(fake_cifar10), **TINY, "optim.epochs": 1, "optim.base_epochs": 1}
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"out": str(out), "seeds": [0], "set": settings, "runs": runs}))
    with _held_by_another_process(out / "held" / "seed0") as holder:
        assert main(["sweep", str(spec), "--dry-run"]) == 0
        plan = capsys.readouterr().out
        assert f"[being trained by another process: pid {holder.pid} on " in plan and "[new]" in plan
        assert main(["sweep", str(spec)]) == 0
        said = capsys.readouterr().out
        assert f"skipped held seed 0: being trained by another process (pid {holder.pid} on " in said
        assert "finished free seed 0" in said and "1 run(s) left to the processes training them" in said
        assert (out / "free/seed0/summary.json").is_file()
        assert [path.name for path in (out / "held/seed0").iterdir()] == [rundir.LOCK]  # the holder's only
    # once the other process has gone, the same sweep trains the run it left (a lone lock file is no run)
    assert main(["sweep", str(spec)]) == 0
    assert "1 finished already, 1 to run" in capsys.readouterr().out
    assert (out / "held/seed0/summary.json").is_file()


def test_two_sweeps_of_one_file_share_its_runs_and_neither_fails(fake_cifar10, tmp_path, capsys, monkeypatch):
    """Sweep A trains the long run; sweep B, started while it does, leaves that run to A and trains the
    short one; A, done with the long run, finds the short one finished and skips it (its plan, made at its
    start, had it as new: started again, it would have been refused as an existing run)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "shared"
    settings = {"data.root": str(fake_cifar10), **TINY}
    runs = [
        {
            "name": name,
            "preset": "cifar10-lt0.01-gated-triple",
            "set": {"optim.epochs": n, "optim.base_epochs": n},
        }
        for name, n in (("long", 30), ("short", 1))
    ]
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"out": str(out), "seeds": [0], "set": settings, "runs": runs}))
    first = subprocess.Popen(
        [sys.executable, "-m", "gssl", "sweep", str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: runlock.holder(out / "long" / "seed0") is not None, "sweep A to train the long run")
        assert main(["sweep", str(spec)]) == 0
        said = capsys.readouterr().out
        assert (
            "skipped long seed 0: being trained by another process" in said
            and "finished short seed 0" in said
        )
        said_first, _ = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0 and "FAILED" not in said_first, said_first
    assert "finished long seed 0" in said_first
    assert "skipped short seed 0: another process finished it meanwhile" in said_first
    assert [len(rundir.read_metrics(out / name / "seed0")) for name in ("long", "short")] == [30, 1]


def test_a_campaign_does_not_start_a_run_another_process_trains(fake_cifar10, tmp_path, capsys):
    out, export = tmp_path / "campaign", tmp_path / "export"
    settings = {"data.root": str(fake_cifar10), **TINY, "optim.epochs": 1, "optim.base_epochs": 1}
    runs = [{"name": name, "preset": "cifar10-lt0.01-gated-triple"} for name in ("held", "free")]
    spec = tmp_path / "campaign.yaml"
    spec.write_text(yaml.safe_dump({"out": str(out), "seeds": [0], "set": settings, "runs": runs}))
    argv = ["campaign", str(spec), "--budget-s", "120", "--reserve-s", "5", "--export", str(export)]
    with _held_by_another_process(out / "held" / "seed0") as holder:
        assert main(argv + ["--startup-s", "1", "--epoch-s", "1"]) == 0
    said = capsys.readouterr().out
    assert said.count(f"skipped held seed 0: being trained by another process (pid {holder.pid} on ") == 1
    assert "finished free seed 0" in said and "not started: held seed 0" in said
    assert (export / "free/seed0/summary.json").is_file() and not (out / "held/seed0/config.yaml").exists()


def test_a_pack_with_a_member_another_process_trains_writes_nothing(fake_cifar10, tmp_path, capsys):
    first, second = tmp_path / "pack/seed0", tmp_path / "pack/seed1"
    sets = set_flags(*as_sets({"data.root": fake_cifar10, **TINY}))
    argv = ["pack", "--preset", "cifar10-lt0.01-gated-triple", *sets, "--seeds", "0", "1"]
    with _held_by_another_process(second) as holder:
        assert main(argv + ["--out", str(first), str(second), "--quiet"]) == 2
        assert (
            f"{second} is being trained by another process (pid {holder.pid} on " in capsys.readouterr().err
        )
        assert not first.exists()  # the member claimed first was let go, and its empty folder removed
