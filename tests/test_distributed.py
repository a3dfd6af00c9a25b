"""Data-parallel training under torchrun, on CPU with gloo and 2 processes."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import DINO_TINY, assert_runs_identical, initial_weights, train_tiny_run, two_ranks_batchnorm
from gssl import rundir
from gssl.data import DeviceLoader
from gssl.distributed import Dist, global_params
from gssl.method import GatedSSL

TINY = [
    "--preset",
    "cifar10-lt0.01-gated-triple",
    "--set",
    "optim.base_epochs=2",
    "--set",
    "model.backbone=resnet8",
    "--set",
    "data.imbalance=1.0",
    "--set",
    "optim.milestones=[]",
    "--set",
    "optim.warmup_epochs=0",
    "--set",
    "loss.name=ce",
    "--set",
    "loss.drw_epoch=null",
    "--set",
    "ssl.gate=learned",
    "--quiet",
]


def _torchrun(args, cwd, env_extra=None, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "gssl",
        "train",
        *args,
    ]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "n", [64, 70, 65]
)  # full batches only; a partial one split 3/3; one of 1 (< 2 ranks)
def test_ranks_split_every_global_batch_like_one_process(n):
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(n)
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, crop_padding=2, hflip=True, seed=3)
    one = list(DeviceLoader(images, labels, 16, **kw))
    ranks = [list(DeviceLoader(images, labels, 8, rank=r, world=2, **kw)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])  # every rank takes the same number of steps: no deadlock
    full = n // 16
    for i in range(len(ranks[0])):
        x = torch.cat([ranks[0][i][0], ranks[1][i][0]])
        y = torch.cat([ranks[0][i][1], ranks[1][i][1]])
        assert torch.equal(y, one[i][1]) and torch.equal(x, one[i][0])  # same images, crops and flips
    if n % 16 == 1:
        assert len(ranks[0]) == full  # a last batch smaller than the world is dropped on every rank
    elif n % 16:
        assert len(ranks[0]) == full + 1 and len(ranks[0][-1][1]) == len(ranks[1][-1][1]) == 3


def test_each_rank_gets_its_slice_of_the_global_pretext_draw():
    model = GatedSSL("resnet20", 10, tasks=["lorot", "flip", "channel"], gate="learned")
    x = torch.randn(16, 3, 8, 8)
    whole = model.sample_params(x, torch.Generator().manual_seed(5))
    for r in (0, 1):
        part = global_params(Dist(rank=r, world=2), model, x[:8], torch.Generator().manual_seed(5), 16, 8 * r)
        assert all(torch.equal(part[k], whole[k][8 * r : 8 * r + 8]) for k in whole)


def _weights(run):
    sd = rundir.load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    return {k: v for k, v in sd.items() if "running_" not in k and "num_batches" not in k}


def test_two_processes_with_batch_b_train_like_one_with_2b(fake_cifar10, tmp_path, monkeypatch):
    """Per-rank batch 8 on 2 ranks against batch 16 in one process whose batch norm normalises each half
    with its own statistics, as each rank does (PyTorch's SyncBatchNorm is GPU-only). 50 images: 3 full
    global batches and a last one of 2, split 1/1. Tolerance 1e-6: float rounding (measured 6e-8); at
    lr 0.1 over many steps the rounding grows chaotically (5e-3 after 13 steps), as between any two
    float orders of summation."""
    work = tmp_path / "work"
    work.mkdir()
    # NCHW: channels_last picks other convolution kernels for batches of 8 and 16, rounding apart by 2e-5
    few = ["--set", "data.max_per_class=5", "--set", "optim.lr=0.01", "--set", "channels_last=false"]
    r = _torchrun(
        [
            *TINY,
            *few,
            "--set",
            f"data.root={fake_cifar10}",
            "--set",
            "optim.epochs=1",
            "--set",
            "optim.batch_size=8",
            "--out",
            "ddp",
        ],
        cwd=work,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in work.iterdir()) == ["ddp"]  # rank 1 wrote nothing anywhere
    assert sorted(p.name for p in (work / "ddp").iterdir()) == [
        "checkpoints",
        "config.yaml",
        "metrics.jsonl",
        "resolved.json",
        "summary.json",
    ]
    assert json.loads((work / "ddp" / "resolved.json").read_text())["execution"]["world_size"] == 2
    assert "final test accuracy" in r.stdout and r.stdout.count("final test accuracy") == 1

    two_ranks_batchnorm(monkeypatch)
    sets = [a for a in TINY[2:] if a not in ("--set", "--quiet")]
    one = train_tiny_run(
        fake_cifar10,
        tmp_path / "one",
        1,
        *sets,
        "optim.batch_size=16",
        "data.max_per_class=5",
        "optim.lr=0.01",
        "channels_last=false",
    )
    a, b = _weights(work / "ddp"), _weights(one)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-6, f"largest parameter difference {worst:.2e}"
    m1 = rundir.read_metrics(work / "ddp")[0]
    m2 = rundir.read_metrics(one)[0]
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-5)  # metrics summed over ranks
    assert m1["gate_lorot"] == pytest.approx(m2["gate_lorot"], rel=1e-5)
    assert m1["train_acc"] == pytest.approx(m2["train_acc"])


def test_a_killed_rank_ends_the_job_and_resume_under_two_processes_is_exact(fake_cifar10, tmp_path):
    args = [
        *TINY,
        "--set",
        f"data.root={fake_cifar10}",
        "--set",
        "optim.epochs=2",
        "--set",
        "optim.batch_size=8",
    ]
    full = _torchrun([*args, "--out", "full"], cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _torchrun(
        [*args, "--out", "killed"], cwd=tmp_path, env_extra={"GSSL_FAULT": "kill-during-write:last.pt:2"}
    )
    assert killed.returncode != 0  # the job came down (no hang: the call has a timeout)
    assert rundir.load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["epoch"] == 0
    resumed = _torchrun(["--resume", "killed", "--quiet"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (
        rundir.load_checkpoint(tmp_path / r / "checkpoints" / "last.pt")["model"] for r in ("full", "killed")
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_torchrun_needs_an_explicit_run_directory(fake_cifar10, tmp_path):
    r = _torchrun([*TINY, "--set", f"data.root={fake_cifar10}", "--set", "optim.epochs=1"], cwd=tmp_path)
    assert r.returncode != 0 and "under torchrun, name the run directory with --out" in r.stderr


def test_sync_bn_on_cpu_is_refused_with_the_reason(fake_cifar10, tmp_path):
    r = _torchrun(
        [
            *TINY,
            "--set",
            f"data.root={fake_cifar10}",
            "--set",
            "optim.epochs=1",
            "--set",
            "distributed.sync_bn=true",
            "--out",
            "x",
        ],
        cwd=tmp_path,
    )
    assert r.returncode != 0 and "SyncBatchNorm is GPU-only" in r.stderr
    assert not (tmp_path / "x").exists()


def _contrast_rank(rank, world, init_file, z_full, out):
    import torch.distributed as dist

    from gssl.contrastive import gather_views, nt_xent

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    n = z_full.shape[1] // world
    z = z_full[:, rank * n : (rank + 1) * n].clone().requires_grad_(True)
    zs, w = gather_views(z)
    loss, correct = nt_xent(zs, 0.5, with_correct=True)
    loss.backward()
    torch.save(
        {"loss": loss.item(), "grad": z.grad, "world": w, "correct": correct.item() / w}, out / f"{rank}.pt"
    )
    dist.barrier()  # neither rank leaves while the other's last collective is in flight
    # gloo's teardown at interpreter exit sometimes aborts the process ("terminate called without an
    # active exception", SIGABRT) after the results are written; leave without running it.
    os._exit(0)


def test_nt_xent_under_two_ranks_sees_every_negative_and_has_the_one_process_gradient(tmp_path):
    """Each rank gathers the other's views; after DDP's average over ranks its gradient is the
    one-process gradient of the global batch's NT-Xent."""
    import torch.multiprocessing as mp

    from gssl.contrastive import nt_xent

    z_full = torch.randn(3, 8, 5, generator=torch.Generator().manual_seed(0))  # 3 views of 8 images
    mp.spawn(_contrast_rank, args=(2, tmp_path / "init", z_full, tmp_path), nprocs=2, join=True)
    z = z_full.clone().requires_grad_(True)
    loss, correct = nt_xent(z, 0.5, with_correct=True)
    loss.backward()
    parts = [torch.load(tmp_path / f"{r}.pt") for r in (0, 1)]
    for r, p in enumerate(parts):
        assert p["world"] == 2 and p["loss"] == pytest.approx(loss.item(), rel=1e-6)
        assert torch.allclose(
            p["grad"] / 2, z.grad[:, 4 * r : 4 * r + 4], atol=1e-7
        )  # DDP averages over 2 ranks
    assert sum(p["correct"] for p in parts) == pytest.approx(correct.item())


@pytest.mark.parametrize(
    "preset, sets",
    [
        (
            "cifar10-4000-fixmatch-gated-triple",
            [
                "semi.labels_per_class=4",
                "semi.mu=2",
                "semi.steps_per_epoch=3",
                "semi.threshold=0.5",
                "loss.name=ce",
                "optim.batch_size=4",
            ],
        ),
        (
            "cifar10-simclr-gated-pretext",
            [
                "contrastive.knn_k=5",
                "contrastive.linear_epochs=2",
                "optim.batch_size=8",
                "fusion.enabled=true",
                "data.max_per_class=9",
            ],
        ),
    ],
)
def test_fixmatch_and_simclr_presets_train_under_torchrun_and_resume_exactly(
    fake_cifar10, tmp_path, preset, sets
):
    """Both presets train under torchrun; a job killed while writing its second checkpoint and resumed
    ends bit for bit where the uninterrupted job ends (EMA, unlabelled stream, views, probes)."""
    args = [
        "--preset",
        preset,
        "--set",
        f"data.root={fake_cifar10}",
        "--set",
        "model.backbone=resnet8",
        "--set",
        "optim.epochs=2",
        "--set",
        "optim.base_epochs=2",
        "--set",
        "optim.warmup_epochs=0",
        "--quiet",
    ]
    for s in sets:
        args += ["--set", s]
    r = _torchrun([*args, "--out", "ddp"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # rank 1 wrote nothing anywhere
    rows = rundir.read_metrics(tmp_path / "ddp")
    assert len(rows) == 2 and all(0 <= row["train_acc"] <= 100 and row["loss"] > 0 for row in rows)
    assert r.stdout.count("final test accuracy") == 1
    if "semi" in sets[0]:
        assert all(0 <= row["mask_rate"] <= 1 for row in rows) and "ema" in rundir.load_checkpoint(
            tmp_path / "ddp" / "checkpoints" / "last.pt"
        )
    else:
        assert all(row["contrastive_loss"] > 0 for row in rows)
    killed = _torchrun(
        [*args, "--out", "killed"], cwd=tmp_path, env_extra={"GSSL_FAULT": "kill-during-write:last.pt:2"}
    )
    assert killed.returncode != 0
    assert rundir.load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["epoch"] == 0
    resumed = _torchrun(["--resume", "killed", "--quiet"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_runs_identical(tmp_path / "ddp", tmp_path / "killed")


@pytest.mark.exhaustive
def test_compiled_step_under_ddp_trains_like_the_eager_ddp_run(fake_cifar10, tmp_path):
    """compile=true under torchrun (gloo, inductor): the step compiles in the mode chosen for DDP (no CUDA
    graphs, docs/performance.md), runs compiled on every full batch without falling back, and moves the
    weights as the eager DDP run does (to rounding: inductor's batch-norm backward rounds differently)."""
    args = [
        *TINY,
        "--set",
        f"data.root={fake_cifar10}",
        "--set",
        "optim.epochs=1",
        "--set",
        "optim.batch_size=8",
        "--set",
        "model.backbone=resnet8",
        "--set",
        "data.max_per_class=8",
        "--set",
        "optim.lr=0.01",
    ]
    runs = {}
    for compiled in ("true", "false"):
        r = _torchrun([*args, "--set", f"compile={compiled}", "--out", f"c-{compiled}"], cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "torch.compile of the" not in r.stderr, r.stderr[-3000:]  # gssl's fallback warning
        runs[compiled] = tmp_path / f"c-{compiled}"
    s = json.loads((runs["true"] / "summary.json").read_text())
    assert s["compiled"] and s["compiled_steps"] == 5 and s["compile_fallbacks"] == 0  # 80 images / (2 x 8)
    a, b = _weights(runs["true"]), _weights(runs["false"])
    start = initial_weights(runs["false"])
    apart = torch.cat([(a[k] - b[k]).flatten() for k in a]).norm()
    travelled = torch.cat([(b[k] - start[k]).flatten() for k in a]).norm()
    assert 0 < apart < 0.05 * travelled, f"{apart / travelled:.1%} of the update apart"


def test_the_gated_dino_selfpatch_preset_trains_under_torchrun(fake_cifar10, tmp_path):
    """DINO + SelfPatch + LoRot-E under the learned gate, 2 ranks: the centres are averaged over the ranks
    (mean_over_ranks), each rank draws its own views; rank 0 alone writes the record and the probes."""
    sets = [f"data.root={fake_cifar10}", *DINO_TINY]
    args = ["--preset", "cifar10-dino-selfpatch-gated-vit", "--out", "ddp", "--quiet"]
    r = _torchrun([*args, *(a for s in sets for a in ("--set", s))], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
    rows = rundir.read_metrics(tmp_path / "ddp")
    assert len(rows) == 2 and all(row["loss"] > 0 and 0 <= row["test_acc"] <= 100 for row in rows)
    assert all(row["gate_lorot"] + row["gate_selfpatch"] == pytest.approx(1.0) for row in rows)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert {"knn_test_acc", "patch_knn_test_acc", "patch_linear_test_acc"} <= set(summary)
    assert r.stdout.count("final test accuracy") == 1
