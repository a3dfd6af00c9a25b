"""Shared fixtures: a small CIFAR-10-format dataset with a learnable signal, and the real data's location."""

import os
import sys
import time
from pathlib import Path

import pytest

from gssl.data.fakes import write_cifar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from gpu_check import DINO_TOY_SETS  # noqa: E402  (one home for the toy ViT's sizes)


def shared_data_dir() -> Path:
    return Path(os.environ.get("GSSL_SHARED_DATA", REPO.parent / "shared" / "data"))


def write_fake_cifar10(
    root: Path, per_class_train: int = 20, per_class_test: int = 10, seed: int = 0
) -> Path:
    """`cifar-10-batches-py/` in the real format; each class is tinted towards its own colour, so it is
    learnable."""
    write_cifar(
        root, "cifar10", n_train=10 * per_class_train, n_test=10 * per_class_test, seed=seed, tint=0.8
    )
    return root


def pytest_configure(config):
    """Under pytest-xdist (the README's `-n 2`) each worker takes its share of the cores, in torch's
    threads and, through OMP_NUM_THREADS, in the processes its tests start: two workers of two threads
    each on two cores would oversubscribe them (an OpenMP thread waiting for a busy core spins). An
    OMP_NUM_THREADS set by the caller is kept."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers is None or "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // int(workers))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fake_cifar10(tmp_path_factory) -> Path:
    return write_fake_cifar10(tmp_path_factory.mktemp("fake-cifar10"))


def session_cache(tmp_path_factory) -> Path:
    """The data cache of this test session (of this xdist worker): $GSSL_CACHE if set, so CI can keep it."""
    return Path(os.environ.get("GSSL_CACHE", tmp_path_factory.getbasetemp() / "gssl-cache"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never write into the user's cache; one cache per test session."""
    monkeypatch.setenv("GSSL_CACHE", str(session_cache(tmp_path_factory)))


# Two epochs of the ViT gpu_check compiles under --smoke (small DINO / SelfPatch heads, 2 local views),
# with a second block (DINO's tests).
DINO_TINY = [
    *DINO_TOY_SETS,
    "vit.depth=2",
    "dino.linear_epochs=2",
    "optim.epochs=2",
    "optim.base_epochs=2",
    "optim.warmup_epochs=0",
]


# Two epochs of ResNet-8 that cross every schedule event: warm-up, a decay and DRW at epoch 1.
TWO_EPOCHS_EVERY_EVENT = [
    "model.backbone=resnet8",
    "optim.batch_size=16",
    "optim.epochs=2",
    "optim.base_epochs=2",
    "optim.warmup_epochs=1",
    "optim.milestones=[1]",
    "optim.gamma=0.5",
    "data.imbalance=0.5",
    "loss.drw_epoch=1",
]

# FixMatch at toy scale: 4 labels per class, 2 x the batch unlabelled, 3 steps an epoch
TINY_FIXMATCH = [
    "semi.labels_per_class=4",
    "semi.mu=2",
    "semi.steps_per_epoch=3",
    "semi.threshold=0.5",
    "data.imbalance=1.0",
    "loss.drw_epoch=null",
    "optim.schedule=step",
]


# The small, fast run most CLI tests train: ResNet-8 on the fake CIFAR-10, batch 16 (9 steps an epoch at
# imbalance 0.5), a constant learning rate.
TINY_SETTINGS = {
    "model.backbone": "resnet8",
    "optim.batch_size": 16,
    "data.imbalance": 0.5,
    "optim.milestones": [],
    "optim.warmup_epochs": 0,
}


# The learned-gate run that resume and fault tests kill and continue: ResNet-8, batch 40 (4 steps an epoch
# at imbalance 0.5), epochs left to the caller.
LEARNED_GATE_SETS = [
    "model.backbone=resnet8",
    "optim.batch_size=40",
    "data.imbalance=0.5",
    "ssl.gate=learned",
]


# One epoch of ResNet-8: for the refusals, where a run must start (or be stopped) before training matters.
ONE_EPOCH_SETS = ["model.backbone=resnet8", "optim.epochs=1", "data.imbalance=0.5"]


def wait_for(condition, what: str, seconds: float = 120) -> None:
    """Poll `condition` until it holds; fail the test naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def as_sets(settings: dict) -> list[str]:
    """The KEY=VALUE strings `--set` takes, in the dict's order."""
    return [f"{key}={value}" for key, value in settings.items()]


def set_flags(*sets: str) -> list[str]:
    """`--set S` for each KEY=VALUE string, in order (a later --set of a key wins)."""
    return [flag for item in sets for flag in ("--set", item)]


def train_argv(
    data_root: Path, out: Path, *sets: str, preset: str = "cifar10-lt0.01-gated-triple"
) -> list[str]:
    """`gssl train --preset PRESET --out OUT --quiet --set data.root=DATA_ROOT --set S...` as main's argv, so
    `sets` can override what came before."""
    return [
        "train",
        "--preset",
        preset,
        "--out",
        str(out),
        "--quiet",
        *set_flags(f"data.root={data_root}", *sets),
    ]


def train_preset(preset: str, data_root: Path, out: Path, *sets: str) -> Path:
    """`gssl train` of `train_argv`: must succeed."""
    from gssl.cli import main

    assert main(train_argv(data_root, out, *sets, preset=preset)) == 0, (
        f"gssl train --preset {preset} into {out} failed"
    )
    return out


def train_tiny_run(data_root: Path, out: Path, epochs: int = 2, *sets: str) -> Path:
    """A real `gssl train` run on the fake CIFAR-10 (TINY_SETTINGS, the gated triple), on the CPU unless
    `sets` name another device: on a GPU machine the default `auto` would train in bf16 on CUDA, outside
    the tolerances the CPU comparisons were written for."""
    from gssl.cli import main

    settings = {**TINY_SETTINGS, "optim.epochs": epochs, "optim.base_epochs": epochs, "device": "cpu"}
    assert main(train_argv(data_root, out, *as_sets(settings), *sets)) == 0, (
        f"training the tiny run in {out} failed"
    )
    return out


@pytest.fixture(scope="session")
def tiny_run(fake_cifar10, tmp_path_factory) -> Path:
    """A finished 2-epoch run with a learned gate, shared by the report tests (copy it before changing it)."""
    with pytest.MonkeyPatch.context() as mp:  # session fixtures start before the per-test cache fixture
        mp.setenv("GSSL_CACHE", str(session_cache(tmp_path_factory)))
        return train_tiny_run(
            fake_cifar10, tmp_path_factory.mktemp("tiny-run") / "run", 2, "ssl.gate=learned"
        )


ANALYSIS_MISSING = (
    "{} is missing: the analysis extra draws the figures (pip install -e '.[test]' includes it)"
)


def needs_analysis() -> None:
    """Skip, saying why, where matplotlib or scikit-learn is absent (an install without the test extra)."""
    for module in ("matplotlib", "sklearn"):
        pytest.importorskip(module, reason=ANALYSIS_MISSING.format(module))


def initial_weights(run: Path) -> dict:
    """A run's model as the engine initialised it (its config, seed and build) before any step."""
    import torch

    from gssl.config import load_yaml
    from gssl.methods.registry import build_model
    from gssl.runconfig import from_dict

    cfg = from_dict(load_yaml(run / "config.yaml"))
    torch.manual_seed(cfg.seed)
    return build_model(cfg, 10, 3).state_dict()


TIMING_KEYS = {"seconds", "images_per_second"}


def assert_runs_identical(full: Path, resumed: Path) -> None:
    """Two runs of one config ended in the same place: logged rows (timing aside), every tensor of the
    last checkpoint (model, optimiser, EMA, gate state) and the summary's numbers, bit for bit."""
    import json

    import torch

    from gssl import rundir

    def rows(run):
        return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rundir.read_metrics(run)]

    assert rows(full) and rows(resumed) == rows(full)

    def tensors(tree, prefix=""):
        if isinstance(tree, torch.Tensor):
            yield prefix, tree
        elif isinstance(tree, dict):
            for key, value in tree.items():
                yield from tensors(value, f"{prefix}/{key}")
        elif isinstance(tree, (list, tuple)):
            for index, value in enumerate(tree):
                yield from tensors(value, f"{prefix}/{index}")

    a, b = (dict(tensors(rundir.load_checkpoint(run / "checkpoints" / "last.pt"))) for run in (full, resumed))
    assert a.keys() == b.keys() and len(a) > 0
    assert [key for key in a if not torch.equal(a[key], b[key])] == []
    summaries = [json.loads((run / "summary.json").read_text()) for run in (full, resumed)]
    results = [
        {k: v for k, v in s.items() if k.endswith("acc") or k in ("best_epoch", "gate_weights")}
        for s in summaries
    ]
    assert results[0] == results[1] and "test_acc" in results[0]


@pytest.fixture
def one_thread():
    """Tiny ops: a second OpenMP thread waiting for a busy core costs more than it saves."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def two_ranks_batchnorm(monkeypatch) -> None:
    """One process normalising each half of its batch on its own, as two DDP ranks do: what makes a
    one-process run comparable with a two-rank one."""
    import torch

    real = torch.nn.modules.batchnorm._BatchNorm.forward

    def per_half(self, x):
        if self.training and x.shape[0] >= 2:
            return torch.cat([real(self, c) for c in x.split((x.shape[0] + 1) // 2)])
        return real(self, x)

    monkeypatch.setattr(torch.nn.modules.batchnorm._BatchNorm, "forward", per_half)
