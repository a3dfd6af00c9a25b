"""Golden outputs: short CPU runs of every scenario family give the numbers recorded in tests/golden/.

They were recorded before the loop was redesigned (one loop, scenarios as plug-ins), so that the
redesign can show it changed nothing it did not mean to. Timings, versions and the command line are
not compared. Re-record, after an intended change of numbers, with

    GSSL_RECORD_GOLDEN=1 python -m pytest tests/test_golden.py

and say in the commit which change moved which numbers.

Each run is a child process whose kernels round the same on every Intel CPU with AVX2 (PINNED_ENV,
PINNED_CHILD): ATen's baseline kernels rather than the AVX2 or AVX-512 ones the CPU would pick, MKL held to
its reproducible AVX2 branch, neither oneDNN nor NNPACK (whose kernels and blockings follow the CPU model
and its caches), and two threads (kernels split their sums by thread count). With the CPU's own kernels
the records differed between two CI hosts by percents after two epochs: these tiny runs turn a last-bit
difference into another run within a few steps. MKL's COMPATIBLE branch is not enough: its vector sqrt
(which torch.sqrt calls through MKL's VML, as it does exp and log) rounds by the CPU's approximate
reciprocal-square-root instruction, so SimCLR's crops, and through them its records, differed between an
Intel host and another host. The AVX2 branch uses exact instructions. MKL takes it only on a CPU it
recognises as Intel's: on an AMD CPU with AVX2 (the CI machines of December 4) it falls back to
COMPATIBLE, so the children there preload a two-function library, compiled here by the system's C
compiler, that answers MKL's vendor check with "Intel" (INTEL_SHIM); with it the records made on Intel
hosts are reproduced on an AMD EPYC to 1e-6. A probe checks the branch, and the comparison is skipped,
saying why, only where neither way gets it (no AVX2, or no C compiler). The pinned kernels matter for this
test only; users' runs keep the fast ones.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_FIXMATCH, TWO_EPOCHS_EVERY_EVENT
from gssl import rundir

GOLDEN = Path(__file__).parent / "golden"
PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "AVX2",
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
}
PINNED_CHILD = (
    "import sys, torch; torch.set_num_threads(2); torch.backends.mkldnn.enabled = False; "
    "torch.backends.nnpack.set_flags(False); from gssl.cli import main; sys.exit(main(sys.argv[1:]))"
)
TINY = [*TWO_EPOCHS_EVERY_EVENT, "compile=false"]
SEMI = TINY_FIXMATCH
SIMCLR = ["contrastive.knn_k=5", "contrastive.linear_epochs=3", "loss.drw_epoch=null", "optim.schedule=step"]
SCENARIOS = {
    "ldam-drw": ("cifar10-lt0.01-ldam-drw", []),
    "gated-triple-reference": ("cifar10-lt0.01-gated-triple", []),
    "gated-triple-learned": ("cifar10-lt0.01-gated-triple", ["ssl.gate=learned"]),
    "ungated-triple": ("cifar10-lt0.01-ungated-triple", []),
    "lorot-i": ("cifar10-lt0.01-lorot-i", []),
    "erm": ("cifar10-lt0.01-erm", []),
    "ssp": ("cifar10-lt0.01-ssp", ["pretrain.epochs=1"]),
    "sla-sd": ("cifar10-lt0.01-sla-sd", []),
    "adversarial": (
        "cifar10-lt0.01-gated-triple",
        ["adv.attack=pgd", "adv.steps=2", "adv.eval_steps=2", "adv.eps=8/255"],
    ),
    "fixmatch": ("cifar10-4000-fixmatch-gated-triple", [*SEMI, "optim.batch_size=8"]),
    "simclr": ("cifar10-simclr-gated-pretext", SIMCLR),
    "simclr-fusion": ("cifar10-simclr-fusion", SIMCLR),
}
NOT_COMPARED = {
    "seconds",
    "images_per_second",
    "wall_seconds",
    "wall_seconds_this_process",
    "command",
    "versions",
}


def _numbers(obj):
    """The run's record without what legitimately varies between two identical runs."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items() if k not in NOT_COMPARED}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    return obj


def _record(run: Path) -> dict:
    rows = rundir.read_metrics(run)
    return _numbers({"metrics": rows, "summary": json.loads((run / "summary.json").read_text())})


def _differences(want, got, where=""):
    """Every place where got differs from want: floats to 1e-6 relative (another CPU's kernels may round
    the last bits differently; a changed computation moves them far more), anything else exactly."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{where}.{k}: missing" for k in want if k not in got]
        out += [f"{where}.{k}: new" for k in got if k not in want]
        return out + [d for k in want if k in got for d in _differences(want[k], got[k], f"{where}.{k}")]
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return [d for i, (a, b) in enumerate(zip(want, got)) for d in _differences(a, b, f"{where}[{i}]")]
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        same = math.isclose(want, got, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(want) and math.isnan(got))
        return [] if same else [f"{where}: {want!r} -> {got!r}"]
    return [] if want == got else [f"{where}: {want!r} -> {got!r}"]


@pytest.fixture(scope="module")
def golden_data(tmp_path_factory):
    from conftest import write_fake_cifar10

    return write_fake_cifar10(
        tmp_path_factory.mktemp("fake-cifar10-golden"), per_class_train=20, per_class_test=10
    )


# torch.sqrt over 4096 floats through MKL's VML: correctly rounded everywhere only on the AVX2 branch
SQRT_PROBE = (
    "import torch; torch.set_num_threads(2); "
    "x = torch.rand(4096, generator=torch.Generator().manual_seed(0)); "
    "print(int((x.sqrt() != x.double().sqrt().float()).sum()))"
)


# MKL's vendor check (exported by libtorch_cpu, which links MKL statically), answered "Intel" so that
# MKL_CBWR=AVX2 takes the AVX2 branch on any CPU with AVX2
INTEL_SHIM = "int mkl_serv_intel_cpu_true(void) { return 1; }\nint mkl_serv_intel_cpu(void) { return 1; }\n"


@pytest.fixture(scope="module")
def pinned_kernels(tmp_path_factory) -> dict:
    """The children's environment: PINNED_ENV, plus the Intel shim where MKL would not take the branch the
    records were made on without it. Skips, saying why, where it takes it neither way."""
    wrong = _wrong_square_roots(PINNED_ENV)
    if not wrong:
        return PINNED_ENV
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip(
            f"MKL did not take its AVX2 branch ({wrong} of 4096 square roots not correctly rounded) and "
            "no C compiler is here to build the shim for its vendor check; install gcc"
        )
    folder = tmp_path_factory.mktemp("intel-shim")
    (folder / "shim.c").write_text(INTEL_SHIM)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", folder / "shim.so", folder / "shim.c"], check=True)
    env = {**PINNED_ENV, "LD_PRELOAD": str(folder / "shim.so")}
    still_wrong = _wrong_square_roots(env)
    if still_wrong:
        pytest.skip(
            f"MKL did not take its AVX2 branch under MKL_CBWR=AVX2 on this CPU, with the Intel shim or "
            f"without ({still_wrong} of 4096 square roots not correctly rounded: a CPU without AVX2 gets "
            "MKL's COMPATIBLE branch, which rounds by the CPU's approximations); the golden records cannot "
            "be compared here"
        )
    return env


def _wrong_square_roots(env: dict) -> int:
    return int(run_pinned(SQRT_PROBE, [], env).split()[-1])


def run_pinned(code: str, args: list[str], env: dict) -> str:
    """Python `code` with ARGS in a child process under `env` (PINNED_ENV, with the shim or not): its
    stdout."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_reproduces_its_golden_record(pinned_kernels, golden_data, tmp_path, name):
    preset, sets = SCENARIOS[name]
    args = [
        "train",
        "--preset",
        preset,
        "--set",
        f"data.root={golden_data}",
        "--out",
        str(tmp_path / name),
        "--quiet",
    ]
    for s in (*TINY, *sets):
        args += ["--set", s]
    run_pinned(PINNED_CHILD, args, pinned_kernels)
    got = _record(tmp_path / name)
    path = GOLDEN / f"{name}.json"
    if os.environ.get("GSSL_RECORD_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(path.read_text())
    diffs = _differences(want, got)
    assert not diffs, f"{len(diffs)} differences from {path.name}, first: " + "; ".join(diffs[:8])


def test_the_comparison_sees_a_changed_number_and_ignores_timings():
    rec = {"metrics": [{"epoch": 0, "loss": 2.302585, "test_acc": 10.0}], "summary": {"test_acc": 10.0}}
    assert _differences(rec, json.loads(json.dumps(rec))) == []
    moved = {"metrics": [{"epoch": 0, "loss": 2.3026, "test_acc": 10.0}], "summary": {"test_acc": 10.0}}
    assert _differences(rec, moved) == [".metrics[0].loss: 2.302585 -> 2.3026"]
    assert _numbers({"seconds": 3.0, "images_per_second": 9.0, "loss": 1.0}) == {"loss": 1.0}
