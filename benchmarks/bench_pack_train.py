"""Training throughput of packs, side by side in one run: aggregate training images/s of K runs of one
configuration trained as one pack (`gssl pack`), as K `gssl train` processes at once, and one run alone;
memory per member as the pack process's peak RSS / K (host memory: on CUDA the device memory is not
measured yet).

Every variant trains the gated triple (ResNet-32, LDAM-DRW, batch 128) for 2 epochs on generated
CIFAR-format data of --images training images; the figure is the second epoch's `images_per_second`
(training steps only, so start-up and evaluation are left out), summed over the K runs; K processes that
do not overlap exactly overstate that sum, so the wall-clock seconds of the whole variant (start-up,
2 epochs, evaluation) are printed beside it.

    python benchmarks/bench_pack_train.py [--ks 1 2 4 8 16] [--images 1280] [--device cpu|cuda]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gssl.data.fakes import write_cifar

PRESET = "cifar10-lt0.01-gated-triple"


def settings(root: Path, device: str) -> list[str]:
    sets = [
        f"data.root={root}",
        f"device={device}",
        "data.imbalance=1.0",
        "loss.drw_epoch=null",
        "optim.epochs=2",
        "optim.base_epochs=2",
        "optim.warmup_epochs=0",
        "optim.milestones=[]",
        "data.test_limit=100",
    ]
    return [a for s in sets for a in ("--set", s)]


def second_epoch_rate(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]["images_per_second"]


def run_waiting(commands: list[list[str]]) -> list[float]:
    """Start every command at once; each one's peak RSS in MiB once all have ended."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    procs = [
        subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands
    ]
    peaks = []
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"{' '.join(proc.args)} failed:\n{proc.stderr.read().decode()[-2000:]}")
        peaks.append(usage.ru_maxrss / 1024)
    return peaks


def measure(k: int, root: Path, work: Path, device: str) -> dict:
    gssl = [sys.executable, "-m", "gssl"]
    packed = [work / f"pack{k}" / f"seed{s}" for s in range(k)]
    command = gssl + ["pack", "--preset", PRESET, *settings(root, device), "--seeds", *map(str, range(k))]
    started = time.perf_counter()
    (peak,) = run_waiting([command + ["--out", *map(str, packed), "--quiet"]])
    pack_wall = time.perf_counter() - started
    alone = [work / f"alone{k}" / f"seed{s}" for s in range(k)]
    started = time.perf_counter()
    peaks = run_waiting(
        [
            gssl
            + [
                "train",
                "--preset",
                PRESET,
                *settings(root, device),
                "--set",
                f"seed={s}",
                "--out",
                str(out),
                "--quiet",
            ]
            for s, out in enumerate(alone)
        ]
    )
    alone_wall = time.perf_counter() - started
    return {
        "k": k,
        "pack": sum(second_epoch_rate(run) for run in packed),
        "processes": sum(second_epoch_rate(run) for run in alone),
        "pack_mib_per_member": peak / k,
        "process_mib": max(peaks),
        "pack_wall_s": pack_wall,
        "processes_wall_s": alone_wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--images", type=int, default=1280, help="training images (10 classes alike)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(
        f"gssl pack against K gssl train processes: {PRESET}, batch 128, {args.images} images, device "
        f"{args.device}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}, {os.cpu_count()} cores, "
        f"load average {load:.1f} at start"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        write_cifar(root, "cifar10", n_train=args.images, n_test=100, seed=0, tint=0.8)
        results = []
        for k in args.ks:
            results.append(measure(k, root, Path(tmp), args.device))
            print(json.dumps({key: round(v, 1) for key, v in results[-1].items()}), flush=True)
    one = next((r["processes"] for r in results if r["k"] == 1), None)
    print(
        "\n| K | pack img/s | K processes img/s | pack / one run | pack / K processes "
        "| wall s, pack / processes | MiB/member, pack |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        versus_one = f"{r['pack'] / one:.2f}" if one else "-"
        print(
            f"| {r['k']} | {r['pack']:.0f} | {r['processes']:.0f} | {versus_one} | "
            f"{r['pack'] / r['processes']:.2f} | {r['pack_wall_s']:.0f} / {r['processes_wall_s']:.0f} | "
            f"{r['pack_mib_per_member']:.0f} |"
        )
    print(
        "(a single process's peak RSS: "
        + ", ".join(f"K={r['k']} {r['process_mib']:.0f}" for r in results)
        + " MiB)"
    )


if __name__ == "__main__":
    main()
