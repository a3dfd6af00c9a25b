"""What a run records and says about itself (issue 46): the schedule and execution as resolved, file modes
that follow the umask, a finished run left alone by --resume, the code's revision, --print-config and
--dry-run. One real 3-epoch `gssl train` process (ResNet-8 on the fake CIFAR-10) is shared."""

import fcntl
import json
import os
import pty
import re
import stat
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import yaml

from gssl import rundir

SRC = Path(__file__).resolve().parents[1] / "src"
SMALL = [
    "model.backbone=resnet8",
    "optim.batch_size=32",
    "data.imbalance=0.5",
    "device=cpu",
    "compile=false",
]


def gssl(*args: str, umask: int | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "gssl", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )


def train_args(root: Path, *sets: str) -> list[str]:
    args = ["train", "--preset", "cifar10-lt0.01-ldam-drw"]
    for s in (f"data.root={root}", *SMALL, *sets):
        args += ["--set", s]
    return args


@pytest.fixture(scope="module")
def shortened(fake_cifar10, tmp_path_factory):
    """A 200-epoch protocol shortened to 3 epochs, trained under umask 027: (run dir, the process)."""
    out = tmp_path_factory.mktemp("records") / "run"
    done = gssl(*train_args(fake_cifar10, "optim.epochs=3"), "--out", str(out), umask=0o027)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_the_schedule_and_execution_as_applied_are_recorded_and_printed_first(shortened):
    run, done = shortened
    # decays at 160 and 180 and DRW at 160 of 200, scaled by 3/200: 2.4 -> 2, 2.7 -> 3, 2.4 -> 2
    schedule = {"epochs": 3, "base_epochs": 200, "warmup_epochs": 0, "milestones": [2, 3], "drw_epoch": 2}
    resolved = json.loads((run / rundir.RESOLVED).read_text())
    assert {k: resolved["schedule"][k] for k in schedule} == schedule
    assert resolved["schedule"]["last_lr"] == pytest.approx(1e-3)
    execution = {"device": "cpu", "precision": "fp32", "compiled": False, "channels_last": True, "threads": 1}
    assert {k: resolved["execution"][k] for k in execution} == execution
    assert json.loads((run / rundir.SUMMARY).read_text())["resolved"] == resolved
    # config.yaml keeps the settings as given (a sweep recognises its runs by them)
    saved = yaml.safe_load((run / rundir.CONFIG).read_text())
    assert saved["optim"]["milestones"] == [160, 180] and saved["loss"]["drw_epoch"] == 160
    assert saved["device"] == "cpu" and saved["precision"] is None
    assert done.stdout.splitlines()[:3] == [
        "notice: optim.epochs=3 scales the 200-epoch protocol (optim.base_epochs) by 0.015: warm-up "
        "5 -> 0 epochs; lr decays from epochs 161, 181 -> 3, 4; DRW from epoch 161 -> 3. To keep them "
        "unscaled, set optim.base_epochs=3",
        "schedule: 3 epochs, warm-up 0, lr decays from epoch 3, 4, DRW from epoch 3; lr 0.1 -> 0.001",
        "execution: cpu (1 threads), fp32, eager, channels_last",
    ]


def test_an_unscaled_schedule_gives_no_notice(fake_cifar10, tmp_path):
    done = gssl(*train_args(fake_cifar10, "optim.epochs=200"), "--print-config", cwd=tmp_path)
    assert done.returncode == 0 and "notice" not in done.stdout + done.stderr
    shortened = gssl(*train_args(fake_cifar10, "optim.epochs=3"), "--print-config", cwd=tmp_path)
    assert "\n# notice: optim.epochs=3 scales the 200-epoch protocol" in shortened.stdout


def test_run_files_follow_the_umask(shortened):
    run, _ = shortened
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "resolved.json",
        "last.pt",
    }
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o640" for p in files}


def test_an_atomic_write_under_a_permissive_umask_is_group_writable(tmp_path):
    old = os.umask(0o002)
    try:
        rundir.write_json(tmp_path / "eval-last.json", {"top1": 1.0})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "eval-last.json").stat().st_mode) == 0o664


def test_resuming_a_finished_run_says_so_and_changes_nothing(shortened):
    run, _ = shortened
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    done = gssl("train", "--resume", str(run))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{run} is finished (3 epochs") and "nothing changed" in done.stdout
    assert "resuming" not in done.stdout + done.stderr
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()} == before


def test_version_and_the_summary_name_the_code_revision(shortened):
    run, _ = shortened
    done = gssl("--version")
    assert done.returncode == 0 and done.stdout.startswith("gssl 0.")
    recorded = json.loads((run / rundir.SUMMARY).read_text())["versions"]["revision"]
    head = subprocess.run(["git", "-C", str(SRC), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        assert recorded is None and "no git checkout" in done.stdout
        return
    assert recorded.removesuffix("+changes") == head.stdout.strip()
    assert f"(revision {recorded})" in done.stdout


def test_print_config_prints_a_usable_config_and_runs_nothing(fake_cifar10, tmp_path):
    done = gssl(*train_args(fake_cifar10, "optim.epochs=3"), "--out", "run", "--print-config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    assert printed["optim"]["epochs"] == 3 and printed["optim"]["milestones"] == [160, 180]
    assert done.stdout.splitlines()[-1].startswith("# schedule as applied: 3 epochs, warm-up 0, lr decays")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "printed.yaml").write_text(done.stdout)  # usable as --config
    again = gssl("train", "--config", "printed.yaml", "--print-config", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout == done.stdout


def test_dry_run_loads_data_and_decides_the_execution_but_writes_nothing(fake_cifar10, tmp_path):
    done = gssl(*train_args(fake_cifar10, "optim.epochs=3"), "--out", "run", "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "execution: cpu (1 threads), fp32, eager, channels_last" in done.stdout
    assert "dry run: nothing trained or written" in done.stdout
    assert list(tmp_path.iterdir()) == []
    missing = gssl(*train_args(tmp_path / "nowhere"), "--out", "run", "--dry-run", cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert list(tmp_path.iterdir()) == []


def test_epoch_lines_give_the_run_clock_and_a_log_gets_no_bars(shortened):
    _, done = shortened
    lines = done.stdout.splitlines()[3:6]
    pattern = r"epoch {}/3 lr \S+ loss \S+ train \S+% test \S+%  \(\d+ img/s\) \[\d+s elapsed, \d+s left\]"
    assert [bool(re.fullmatch(pattern.format(k), line)) for k, line in enumerate(lines, 1)] == [True] * 3, (
        lines
    )
    assert lines[-1].endswith(", 0s left]")
    assert "\r" not in done.stdout + done.stderr and "it/s" not in done.stderr


def test_run_clock_counts_every_process_and_paces_by_this_one():
    from gssl.engine import run_clock

    history = [{"seconds": 10.0}, {"seconds": 20.0}, {"seconds": 30.0}]  # the first from an earlier process
    assert run_clock(history, 5, 2) == "[1m00s elapsed, 50s left]"
    assert run_clock(history * 40, 300, 120) == "[40m00s elapsed, 1h00m left]"  # 180 x 20 s


def test_a_terminal_sees_the_test_pass_and_the_final_evaluation(fake_cifar10, tmp_path):
    """stderr on a pseudo-terminal (80 columns): bars for training, each test pass and the final
    evaluation; stdout (a pipe) has the epoch lines."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    args = train_args(fake_cifar10, "optim.epochs=1", "optim.base_epochs=1")
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(
        [sys.executable, "-m", "gssl", *args, "--out", str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=follower,
        env=env,
        text=True,
    ) as process:
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            seen += chunk
        stdout = process.stdout.read()
    assert process.returncode == 0
    bars = seen.decode(errors="replace")
    for what in ("epoch 1/1", "epoch 1/1 test", "final evaluation"):
        assert re.search(rf"\r{what}: +\d+%\|", bars), (what, bars[-600:])
    assert "final evaluation on 100 test images" in stdout and "%|" not in stdout


def test_one_numbering_of_epochs_in_the_console_the_records_eval_and_table(shortened, tmp_path):
    run, done = shortened
    rows = rundir.read_metrics(run)
    summary = json.loads((run / rundir.SUMMARY).read_text())
    assert [json.loads(line)["epoch"] for line in (run / rundir.METRICS).read_text().splitlines()] == [
        1,
        2,
        3,
    ]
    best = max(rows, key=lambda r: r["test_acc"])  # the first epoch of the best accuracy
    assert summary["best_epoch"] == best["epoch"] and summary[rundir.EPOCHS_FROM] == 1
    assert f"at epoch {best['epoch']} (chosen on the test set)" in done.stdout
    evaluated = gssl("eval", str(run))
    assert evaluated.returncode == 0 and "checkpoint last (epoch 3) on 100 test images" in evaluated.stdout
    assert json.loads((run / "eval-last.json").read_text())["epoch"] == 3
    table = gssl("table", str(run), "--per-run")
    assert f"{summary['best_test_acc']:.2f} ({best['epoch']})" in table.stdout

    # a record written before epochs were counted from 1 reads the same
    old = tmp_path / "old"
    old.mkdir()
    (old / rundir.CONFIG).write_bytes((run / rundir.CONFIG).read_bytes())
    (old / rundir.RESOLVED).write_bytes((run / rundir.RESOLVED).read_bytes())
    (old / rundir.METRICS).write_text(
        "".join(json.dumps({**r, "epoch": r["epoch"] - 1}) + "\n" for r in rows)
    )
    legacy = {k: v for k, v in summary.items() if k != rundir.EPOCHS_FROM}
    (old / rundir.SUMMARY).write_text(json.dumps({**legacy, "best_epoch": summary["best_epoch"] - 1}))
    assert rundir.read_metrics(old) == rows
    assert gssl("table", str(old), "--per-run").stdout.replace(str(old), "") == table.stdout.replace(
        str(run), ""
    )
