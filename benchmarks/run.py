"""Every benchmark in one command: prints a table per section and writes one JSON file.

    python benchmarks/run.py                      # full sizes; CUDA if present
    python benchmarks/run.py --quick              # small sizes: a smoke check (CI runs it)
    python benchmarks/run.py --json out.json --sections step,epoch

Sections (ratios are always measured side by side in one run, repetitions interleaved):
  step      training step (fwd + bwd + SGD), images/s: plain, + LoRot-E, + gated triple; ResNet-32 at
            batch 128 (32 px) and ResNet-18 at batch 64 (64 px); eager, and compiled on CUDA
  transform pretext transform, vectorised against the reference's per-sample loop (bench_core)
  loader    DeviceLoader against a DataLoader with per-sample PIL transforms (bench_loader)
  epoch     one whole epoch of long-tailed CIFAR-10 (0.01) through `gssl train`, end to end
  sweep     total throughput of N = 1, 2, 4 runs at once (`gssl sweep --parallel N`)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_core  # noqa: E402
import bench_loader  # noqa: E402

from gssl.losses import build_loss  # noqa: E402
from gssl.method import GatedSSL  # noqa: E402
from gssl.step import Compiled  # noqa: E402

SHARED = Path(os.environ.get("GSSL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
VARIANTS = {"plain": ([], "none"), "+ LoRot-E": (["lorot"], "uniform"),
            "+ gated triple": (["lorot", "flip", "channel"], "reference")}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_fn(backbone, batch, side, tasks, gate, device, compiled, channels_last=None):
    torch.manual_seed(0)
    model = GatedSSL(backbone, 10, tasks=tasks, gate=gate).to(device)
    cuda = device.type == "cuda"
    channels_last = cuda if channels_last is None else channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, **({"fused": True} if cuda else {"foreach": True}))
    loss_fn = build_loss("ce").to(device)
    x = torch.randn(batch, 3, side, side, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(10, (batch,), device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    fn = Compiled(model.loss_from_params, enabled=compiled, batch=batch, mode="max-autotune-no-cudagraphs")

    def step():
        params = model.sample_params(x, gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss, _ = fn(x, y, loss_fn, params)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def bench_step(device, reps, quick):
    shapes = [("resnet32", 128, 32)] + ([] if quick else [("resnet18", 64, 64)])
    if quick:
        shapes = [("resnet32", 32, 32)]
    modes = [False, True] if device.type == "cuda" else [False]
    rows = []
    for backbone, batch, side in shapes:
        for compiled in modes:
            fns = {name: step_fn(backbone, batch, side, t, g, device, compiled) for name, (t, g) in VARIANTS.items()}
            if device.type == "cpu":  # is channels_last worth it on CPU? (the engine uses it on CUDA only)
                fns["+ gated triple, channels_last"] = step_fn(backbone, batch, side, *VARIANTS["+ gated triple"],
                                                               device, compiled, channels_last=True)
            inner = max(1, 20 if device.type == "cuda" else 1)  # steps per timed call (amortise the sync)

            def many(f):
                def run():
                    for _ in range(inner):
                        f()
                    _sync(device)
                return run
            times = bench_core.interleaved({k: many(f) for k, f in fns.items()}, reps, warmup=3 if compiled else 2)
            s = bench_core.summary(times, "plain")
            for name, r in s.items():
                rows.append({"model": backbone, "batch": batch, "px": side, "compiled": compiled, "variant": name,
                             "images_per_s": batch * inner / r["median_s"], "vs_plain_median": r["ratio_median"],
                             "vs_plain_paired": r["ratio_paired"]})
    print(f"\n[step] training step on {device}")
    print(f"{'model':9} {'batch':>5} {'px':>3} {'compiled':>8}  {'variant':30} {'images/s':>10} {'x plain (median/paired)':>24}")
    for r in rows:
        print(f"{r['model']:9} {r['batch']:>5} {r['px']:>3} {str(r['compiled']):>8}  {r['variant']:30} "
              f"{r['images_per_s']:>10,.0f} {r['vs_plain_median']:>11.3f}x {r['vs_plain_paired']:>10.3f}x")
    return rows


def bench_transform(reps):
    r = bench_core.bench_transform(reps)
    print("\n[transform] LoRot-E + flip + channel on 128 x 3 x 32 x 32 (CPU)")
    for name, v in r.items():
        print(f"{name:32} {v['median_s'] * 1e3:9.3f} ms  {1 / v['ratio_median']:6.1f}x vs the loop")
    return r


def bench_loader_section(device, quick):
    print("\n[loader]")
    return bench_loader.main(["--device", str(device), "--n", "2000" if quick else "20000",
                              "--workers", "0" if quick else "0,2", "--data", str(SHARED)])


def _train(out, sets, env=None):
    cmd = [sys.executable, "-m", "gssl", "train", "--preset", "cifar10-lt0.01-gated-triple", "--out", str(out),
           "--quiet", "--force"] + [a for s in sets for a in ("--set", s)]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def _data_sets(quick, tmp):
    """The real CIFAR-10 copy when present (or a fake one of the same format), long-tailed at 0.01."""
    if (SHARED / "cifar-10-jpg.tar.gz").exists() and not quick:
        return [f"data.root={SHARED}"], "CIFAR-10 (real), long-tailed 0.01: 12,406 images"
    from gssl.data.fakes import write_cifar
    n = 200 if quick else 5000
    write_cifar(tmp / "fake", "cifar10", n_train=10 * n, n_test=1000, seed=0, tint=0.8)
    return [f"data.root={tmp / 'fake'}"], f"fake CIFAR-10 ({n} per class), long-tailed 0.01"


def bench_epoch(device, quick, tmp):
    sets, what = _data_sets(quick, tmp)
    rows = []
    for name, (tasks, gate) in VARIANTS.items():
        s = _train(tmp / f"epoch-{len(rows)}", sets + [f"ssl.tasks=[{','.join(tasks)}]", f"ssl.gate={gate}",
                                                       "optim.epochs=1", "optim.base_epochs=1", f"device={device.type}"]
                   + (["data.test_limit=100"] if quick else []))
        rows.append({"variant": name, "data": what, "wall_s": s["wall_seconds"], "images_per_s": s["images_per_second"]})
    print(f"\n[epoch] one epoch of {what}, ResNet-32, through `gssl train` (train + test evaluation)")
    for r in rows:
        print(f"{r['variant']:16} {r['wall_s']:8.1f} s  {r['images_per_s']:>9,.0f} train images/s")
    return rows


def bench_sweep(device, quick, tmp):
    sets, what = _data_sets(True, tmp)  # small runs: the case several-at-once is for
    rows = []
    for n in ((1, 2) if quick else (1, 2, 4)):
        out = tmp / f"sweep{n}"
        cmd = [sys.executable, "-m", "gssl", "sweep", "--preset", "cifar10-lt0.01-gated-triple", "--out", str(out),
               "--seeds", *map(str, range(n)), "--parallel", str(n)] + \
              [a for s in sets + ["optim.epochs=2", "optim.base_epochs=2", f"device={device.type}"]
               + (["data.test_limit=100"] if quick else []) for a in ("--set", s)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        images = sum(json.loads(p.read_text())["epochs"] * len_train(p.parent) for p in out.rglob("summary.json"))
        rows.append({"parallel": n, "runs": n, "wall_s": wall, "total_images_per_s": images / wall})
    base = rows[0]["total_images_per_s"]
    print(f"\n[sweep] N = {', '.join(str(r['parallel']) for r in rows)} runs of 2 epochs at once ({what}), process start and evaluation included")
    for r in rows:
        r["vs_one"] = r["total_images_per_s"] / base
        print(f"N={r['parallel']}  {r['wall_s']:7.1f} s  {r['total_images_per_s']:>9,.0f} images/s in all  "
              f"{r['vs_one']:5.2f}x N=1")
    return rows


def len_train(run_dir: Path) -> int:
    return sum(json.loads((run_dir / "summary.json").read_text())["class_counts"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke check")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sections", default="step,transform,loader,epoch,sweep")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 2 quick, 10 full)")
    ap.add_argument("--json", type=Path, default=Path("benchmark-results.json"))
    args = ap.parse_args(argv)
    device, reps = torch.device(args.device), args.reps or (2 if args.quick else 10)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"step", "transform", "loader", "epoch", "sweep"}
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}")
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
           "torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "quick": args.quick, "reps": reps,
           "load_average": os.getloadavg()[0]}
    print("  ".join(f"{k}={v}" for k, v in env.items()))
    out = {"env": env}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for s in sections:
            if s == "step":
                out["step"] = bench_step(device, reps, args.quick)
            elif s == "transform":
                out["transform"] = bench_transform(reps)
            elif s == "loader":
                out["loader"] = bench_loader_section(device, args.quick)
            elif s == "epoch":
                out["epoch"] = bench_epoch(device, args.quick, tmp)
            elif s == "sweep":
                out["sweep"] = bench_sweep(device, args.quick, tmp)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"\nwritten to {args.json}")
    return out


if __name__ == "__main__":
    main()
