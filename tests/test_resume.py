"""Resume: a run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends (CPU)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import LEARNED_GATE_SETS, TINY_FIXMATCH, assert_runs_identical, train_argv
from gssl import rundir
from gssl.cli import main

TIMING = {"seconds", "images_per_second"}


def _cmd(root, out, *extra):
    return [
        sys.executable,
        "-m",
        "gssl",
        *train_argv(root, out, "optim.epochs=4", *LEARNED_GATE_SETS),
        *extra,
    ]


def _rows(run):
    rows = rundir.read_metrics(run)
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count in every process: same float sums


def test_sigkill_then_resume_matches_uninterrupted_run(fake_cifar10, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_cmd(fake_cifar10, full), check=True, env=_env(), capture_output=True)

    proc = subprocess.Popen(
        _cmd(fake_cifar10, killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        m = killed / "metrics.jsonl"
        if m.exists() and len(m.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()

    r = subprocess.run(
        _cmd(fake_cifar10, killed)[:4] + ["--resume", str(killed), "--quiet"],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert _rows(killed) == _rows(full)
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (full, killed))
    assert sa["test_acc"] == sb["test_acc"] and sa["per_class_acc"] == sb["per_class_acc"]


def test_resume_with_a_changed_config_is_refused_unless_forced(fake_cifar10, tmp_path, capsys):
    out = tmp_path / "run"
    args = _cmd(fake_cifar10, out)[3:]
    args[args.index("optim.epochs=4")] = "optim.epochs=1"
    assert main(args) == 0
    before = (out / "config.yaml").read_text()
    code = main(
        ["train", "--resume", str(out), "--set", "optim.lr=0.05", "--set", "optim.epochs=2", "--quiet"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "optim.epochs" in err and "optim.lr" in err and "--force" in err
    assert (out / "config.yaml").read_text() == before
    assert main(["train", "--resume", str(out), "--set", "optim.epochs=2", "--force", "--quiet"]) == 0
    rows = rundir.read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]


def test_resuming_in_another_memory_format_keeps_the_fused_sgd_update_exact(tmp_path):
    """A checkpoint written NCHW, resumed channels_last (a CPU run continued on a GPU): the momentum
    buffers take the parameters' strides, so the fused SGD step is the one the NCHW run would take
    (without that, fused SGD on CPU mis-updates: an error of order 0.1 instead of 1e-7)."""
    import copy

    import torch

    from gssl import rundir

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))

    def step(model, opt, x):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    x = torch.randn(4, 3, 10, 10)
    ref = net()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5, momentum=0.9, fused=True)
    step(ref, ref_opt, x)
    ck = copy.deepcopy(
        {
            "model": ref.state_dict(),
            "optimizer": ref_opt.state_dict(),
            "epoch": 0,
            "best_acc": 0.0,
            "best_epoch": 0,
        }
    )  # as written to disk: not the live tensors
    step(ref, ref_opt, x)  # the uninterrupted run's second step
    resumed = net().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(resumed.parameters(), lr=0.5, momentum=0.9, fused=True)
    rundir.restore(resumed, ck, tmp_path / "last.pt", opt)
    assert all(opt.state[p]["momentum_buffer"].stride() == p.stride() for p in resumed.parameters())
    step(resumed, opt, x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(resumed.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    "preset, sets",
    [
        ("cifar10-4000-fixmatch-gated-triple", [*TINY_FIXMATCH, "optim.batch_size=4", "semi.ema=0.5"]),
        (
            "cifar10-simclr-gated-pretext",
            [
                "contrastive.knn_k=5",
                "contrastive.linear_epochs=2",
                "optim.batch_size=8",
                "data.max_per_class=9",
            ],
        ),
    ],
)
def test_fixmatch_and_simclr_killed_mid_checkpoint_resume_bit_identical(fake_cifar10, tmp_path, preset, sets):
    """One process: killed while writing the second epoch's checkpoint, resumed, the run ends exactly as
    the uninterrupted one (FixMatch's EMA and unlabelled stream, SimCLR's views and its final probes)."""
    argv = [sys.executable, "-m", "gssl", "train", "--preset", preset, "--quiet"]
    for item in (f"data.root={fake_cifar10}", "model.backbone=resnet8", "optim.epochs=3", *sets):
        argv += ["--set", item]
    full = subprocess.run(
        [*argv, "--out", str(tmp_path / "full")], env=_env(), capture_output=True, text=True
    )
    assert full.returncode == 0, full.stderr[-3000:]
    fault = {**_env(), "GSSL_FAULT": "kill-during-write:last.pt:2"}
    killed = subprocess.run([*argv, "--out", str(tmp_path / "killed")], env=fault, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert rundir.load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["epoch"] == 0
    resume = [*argv[:4], "--resume", str(tmp_path / "killed"), "--quiet"]
    resumed = subprocess.run(resume, env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_runs_identical(tmp_path / "full", tmp_path / "killed")
