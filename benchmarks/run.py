"""Every benchmark in one command: prints a table per section and writes one JSON file.

    python benchmarks/run.py                      # full sizes; CUDA if present
    python benchmarks/run.py --quick              # small sizes: a smoke check (CI runs it)
    python benchmarks/run.py --json out.json --sections step,epoch

Sections (ratios are always measured side by side in one run, repetitions interleaved):
  step      training step (fwd + bwd + SGD), images/s: plain, + LoRot-E, + gated triple; ResNet-32 at
            batch 128 (32 px) and ResNet-18 at batch 64 (64 px); each eager, channels_last, compiled and
            compiled + channels_last (gssl.step.Compiled: inductor's default mode on CPU, the engine's
            reduce-overhead on CUDA), on CUDA in bf16 and fp32 autocast; the first call (the compile
            time, with inductor's on-disk caches as found) apart from the steady-state rate.
            --quick: one small shape (ResNet-8, batch 16), so that compiling stays short on CPU, one
            compiled layout (compiled + channels_last combines two flags each row already checks, and
            compiling is most of a smoke check's time), and (as the epoch and sweep sections'
            processes, which train a ResNet-8 under --quick) one thread, which other load cannot stall
  gates     training step of every gate mode on the gated triple, side by side with the plain step and
            the reference-gated one: reference, learned, uniform and the loss weightings of
            docs/gates.md (uncertainty, gradnorm, gcs unweighted and weighted, dwa), each with its
            per-step hook; the step section's shape(s), eager, and compiled too on CUDA (--quick: the
            small shape, eager)
  transform pretext transform, vectorised against the reference's per-sample loop (bench_core)
  loader    DeviceLoader against a DataLoader with per-sample PIL transforms (bench_loader)
  epoch     one whole epoch of long-tailed CIFAR-10 (0.01) through `gssl train`, end to end
  sweep     total throughput of N = 1, 2, 4 runs at once (`gssl sweep --parallel N`)

benchmarks/gpu_check.py reuses the step and sweep sections.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
import torch._dynamo
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).parent))
import bench_core  # noqa: E402
import bench_loader  # noqa: E402
from gssl.losses import build_loss  # noqa: E402
from gssl.method import GatedSSL  # noqa: E402
from gssl.step import Compiled, autocast, resolve_precision  # noqa: E402

SHARED = Path(os.environ.get("GSSL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
VARIANTS = {
    "plain": ([], "none"),
    "+ LoRot-E": (["lorot"], "uniform"),
    "+ gated triple": (["lorot", "flip", "channel"], "reference"),
}
TRIPLE = ["lorot", "flip", "channel"]
# the gates section: every gate mode on the triple, beside the plain and the reference-gated step
GATE_VARIANTS = {
    "plain": ([], "none"),
    "reference": (TRIPLE, "reference"),
    "learned": (TRIPLE, "learned"),
    "uniform": (TRIPLE, "uniform"),
    "uncertainty": (TRIPLE, "uncertainty"),
    "gradnorm": (TRIPLE, "gradnorm"),
    "gcs": (TRIPLE, "gcs"),
    "gcs weighted": (TRIPLE, "gcs", {"weighted": True}),
    "dwa": (TRIPLE, "dwa"),
}
# layout name -> (compiled, channels_last); the first layout of a run is what "x base" compares against
LAYOUTS = {
    "eager": (False, False),
    "channels_last": (False, True),
    "compiled": (True, False),
    "compiled + channels_last": (True, True),
}
CUDA_COMPILE_MODE = "reduce-overhead"  # the engine's default compile_mode (CUDA graphs); CPU: "default"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _allow_recompiles(n: int = 64) -> None:
    """Every compiled step is the same wrapper code (packed_step's) with its own guards: past dynamo's
    recompile limit (8 entries) the later step functions would silently run eagerly."""
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), n))


def step_fn(
    backbone,
    batch,
    side,
    tasks,
    gate,
    device,
    compiled,
    channels_last=None,
    precision=None,
    mode=None,
    gate_kw=None,
):
    """One training step as the engine runs it (pretext draw, forward + loss through gssl.step.Compiled,
    backward, SGD, the gate's per-step hook); `.fn` is the Compiled, for its call and fallback counts."""
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    channels_last = cuda if channels_last is None else channels_last
    precision = resolve_precision(precision, device)
    model = GatedSSL(backbone, 10, tasks=tasks, gate=gate, gate_kw=gate_kw).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, **({"fused": True} if cuda else {"foreach": True})
    )
    loss_fn = build_loss("ce").to(device)
    x = torch.randn(batch, 3, side, side, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(10, (batch,), device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    fn = Compiled(
        model.loss_from_params,
        enabled=compiled,
        batch=batch,
        mode=mode or (CUDA_COMPILE_MODE if cuda else "default"),
    )

    def step():
        params = model.sample_params(x, gen)
        with autocast(device.type, precision):
            loss, _ = fn(x, y, loss_fn, params)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # no gradient (a CUDA-graph output) outlives the step
        if model.pretext is not None:  # as the scenario's after_step: dwa's sums, gradnorm's renormalisation
            model.pretext.after_step()

    step.fn = fn
    return step


def _repeated(step, inner, device):
    def run():
        for _ in range(inner):
            step()
        _sync(device)

    return run


def _first_call(step, device) -> tuple[float, str | None]:
    """Seconds of the first step (for a compiled one, the compile time) and, for a compiled one, whether
    inductor found its graphs in the on-disk cache ("warm"), compiled them ("cold") or some of each."""
    before = Counter(counters["inductor"])
    t0 = time.perf_counter()
    step()
    _sync(device)
    seconds = time.perf_counter() - t0
    new = Counter(counters["inductor"]) - before
    hit, miss = new["fxgraph_cache_hit"], new["fxgraph_cache_miss"]
    return seconds, ("warm" if not miss else "cold" if not hit else "partly warm") if hit + miss else None


def bench_step(
    device,
    reps,
    quick,
    shapes=None,
    layouts=None,
    precisions=None,
    deadline=None,
    skipped=None,
    variants=None,
    title="step",
):
    """Images/s of every (precision, layout, variant) per shape, all repetitions of a shape interleaved.
    With a `deadline` (time.monotonic()), step functions whose compile would not fit are left out,
    and named in `skipped`. `variants`: name -> (tasks, gate[, gate settings]), VARIANTS by default."""
    variants = variants or VARIANTS
    cuda = device.type == "cuda"
    shapes = shapes or ([("resnet8", 16, 32)] if quick else [("resnet32", 128, 32), ("resnet18", 64, 64)])
    layouts = layouts or [lay for lay in LAYOUTS if not (quick and lay == "compiled + channels_last")]
    precisions = precisions or (["bf16", "fp32"] if cuda else ["fp32"])
    skipped = [] if skipped is None else skipped
    if cuda:  # as the engine
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("highest")
    _allow_recompiles()
    threads = torch.get_num_threads()
    if quick:  # a smoke check: one thread, which other processes cannot stall (docs/performance.md)
        torch.set_num_threads(1)
    rows = []
    try:
        for shape in shapes:
            torch.compiler.reset()  # each shape compiles afresh, as a new run would
            steps = _build(device, shape, layouts, precisions, deadline, skipped, variants)
            rows += _time(device, reps, shape, layouts, steps, deadline)
    finally:
        torch.set_num_threads(threads)
    _print_step(device, rows, skipped, title)
    return rows


def _build(device, shape, layouts, precisions, deadline, skipped, variants) -> dict:
    """(precision, layout, variant) -> (step, first-call seconds, inductor cache), built and warmed up in
    that order, so that a deadline leaves out the compiled fp32 steps first."""
    backbone, batch, side = shape
    steps, est = {}, 0.0  # est: the longest compile so far
    for prec in precisions:
        for layout in layouts:
            compiled, cl = LAYOUTS[layout]
            for name, (tasks, gate, *gate_kw) in variants.items():
                if deadline is not None and time.monotonic() + (est if compiled else 0.0) > deadline:
                    skipped.append(f"step {backbone} batch {batch} {prec} {layout} {name}")
                    continue
                kw = gate_kw[0] if gate_kw else None
                step = step_fn(backbone, batch, side, tasks, gate, device, compiled, cl, prec, gate_kw=kw)
                first, cache = _first_call(step, device)
                est = max(est, first) if compiled else est
                for _ in range(3 if compiled else 1):  # CUDA graphs: warm-up, record, replay
                    step()
                steps[(prec, layout, name)] = (step, first, cache)
    return steps


def _time(device, reps, shape, layouts, steps, deadline) -> list[dict]:
    """The interleaved repetitions (as many as the deadline leaves, at least 2) and a row per step."""
    if not steps:
        return []
    inner = 20 if device.type == "cuda" else 1  # steps per timed call (amortise the sync)
    fns = {key: _repeated(step, inner, device) for key, (step, _, _) in steps.items()}
    round_s = sum(bench_core.timed(f) for f in fns.values())
    if deadline is not None:
        reps = max(2, min(reps, int((deadline - time.monotonic()) / round_s)))
    times = bench_core.interleaved(fns, reps, warmup=0)
    backbone, batch, side = shape
    rows = []
    for (prec, layout, name), t in times.items():
        step, first, cache = steps[(prec, layout, name)]
        compiled, cl = LAYOUTS[layout]
        plain, base, fp32 = (prec, layout, "plain"), (prec, layouts[0], name), ("fp32", layout, name)
        rows.append(
            {
                "model": backbone,
                "batch": batch,
                "px": side,
                "precision": prec,
                "layout": layout,
                "compiled": compiled,
                "channels_last": cl,
                "variant": name,
                "images_per_s": batch * inner / statistics.median(t),
                "vs_plain_median": _ratio(times, (prec, layout, name), plain, statistics.median),
                "vs_plain_paired": _paired(times, (prec, layout, name), plain),
                "speedup_vs": layouts[0],
                "speedup_paired": _paired(times, base, (prec, layout, name)),
                "bf16_speedup_paired": _paired(times, fp32, (prec, layout, name)) if prec == "bf16" else None,
                "first_call_s": first,
                "compile_s": first if compiled else None,
                "inductor_cache": cache,
                "compiled_calls": step.fn.compiled_calls,
                "compile_fallbacks": step.fn.fallbacks,
                "reps": reps,
                "steps_per_rep": inner,
                "threads": torch.get_num_threads(),
            }
        )
    return rows


def _ratio(times, a, b, stat):
    """stat(times of a) / stat(times of b); None when b was skipped."""
    return stat(times[a]) / stat(times[b]) if b in times else None


def _paired(times, a, b):
    """Median over rounds of time(a) / time(b): > 1 means b is faster; None when either was skipped."""
    if a not in times or b not in times:
        return None
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def _x(v, width=8):
    return f"{v:>{width - 1}.3f}x" if v is not None else f"{'-':>{width}}"


def _print_step(device, rows, skipped, title="step"):
    print(
        f"\n[{title}] training step on {device}: fwd + bwd + SGD; x plain = time / plain's time; "
        "x base = speed-up over the first layout (paired); first call = compile time for compiled rows, "
        "cache = inductor's on-disk cache (cold: compiled from scratch)"
    )
    print(
        f"{'model':9} {'batch':>5} {'px':>3} {'prec':4}  {'layout':24} {'variant':15} {'images/s':>10} "
        f"{'x plain med/paired':>19} {'x base':>8} {'x fp32':>8} {'first call':>10}  cache"
    )
    for r in rows:
        print(
            f"{r['model']:9} {r['batch']:>5} {r['px']:>3} {r['precision']:4}  {r['layout']:24} "
            f"{r['variant']:15} {r['images_per_s']:>10,.0f} {_x(r['vs_plain_median'])} "
            f"{_x(r['vs_plain_paired'], 10)} {_x(r['speedup_paired'])} {_x(r['bf16_speedup_paired'])} "
            f"{r['first_call_s']:>9.2f}s  {r['inductor_cache'] or ''}"
        )
    for s in skipped:
        print(f"skipped (time budget): {s}")


def bench_gates(device, reps, quick):
    """Every gate mode's training step beside the plain and the reference-gated one (GATE_VARIANTS): eager,
    and compiled on CUDA, where runs compile (on CPU a long run compiles too, but compiling nine variants
    here would take many minutes). gcs takes N + 1 extra backward passes a step: measured, not guessed."""
    layouts = ["eager", "compiled"] if device.type == "cuda" and not quick else ["eager"]
    shapes = [("resnet8", 16, 32)] if quick else [("resnet32", 128, 32)]
    precisions = [resolve_precision(None, device)]  # the run's default: bf16 on CUDA, fp32 on CPU
    rows = bench_step(device, reps, quick, shapes, layouts, precisions, variants=GATE_VARIANTS, title="gates")
    reference = {(r["precision"], r["layout"]): r for r in rows if r["variant"] == "reference"}
    for r in rows:  # each mode's step against the reference-gated one (medians), beside x plain
        base = reference.get((r["precision"], r["layout"]))
        r["vs_reference_median"] = r["vs_plain_median"] / base["vs_plain_median"] if base else None
    for prec, layout in reference:
        same = [r for r in rows if (r["precision"], r["layout"]) == (prec, layout)]
        print(
            f"x reference ({prec} {layout}, medians): "
            + ", ".join(f"{r['variant']} {r['vs_reference_median']:.2f}x" for r in same)
        )
    return rows


def bench_transform(reps):
    r = bench_core.bench_transform(reps)
    print("\n[transform] LoRot-E + flip + channel on 128 x 3 x 32 x 32 (CPU)")
    for name, v in r.items():
        print(f"{name:32} {v['median_s'] * 1e3:9.3f} ms  {1 / v['ratio_median']:6.1f}x vs the loop")
    return r


def bench_loader_section(device, quick):
    print("\n[loader]")
    return bench_loader.main(
        [
            "--device",
            str(device),
            "--n",
            "2000" if quick else "20000",
            "--workers",
            "0" if quick else "0,2",
            "--data",
            str(SHARED),
        ]
    )


def _train(out, sets, env=None):
    cmd = [
        sys.executable,
        "-m",
        "gssl",
        "train",
        "--preset",
        "cifar10-lt0.01-gated-triple",
        "--out",
        str(out),
        "--quiet",
        "--force",
    ] + [a for s in sets for a in ("--set", s)]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


QUICK_PER_CLASS = 100  # --quick: a smoke check (its time is mostly its processes' start); the rarest class 1


def _data_sets(quick, tmp):
    """The real CIFAR-10 copy when present (or a fake one of the same format), long-tailed at 0.01."""
    if (SHARED / "cifar-10-jpg.tar.gz").exists() and not quick:
        return [f"data.root={SHARED}"], "CIFAR-10 (real), long-tailed 0.01: 12,406 images"
    return _fake_data(tmp, QUICK_PER_CLASS if quick else 5000)


def _fake_data(tmp, per_class):
    """A fake CIFAR-10 of `per_class` training images a class, long-tailed at 0.01."""
    from gssl.data.fakes import write_cifar

    write_cifar(tmp / "fake", "cifar10", n_train=10 * per_class, n_test=1000, seed=0, tint=0.8)
    return [f"data.root={tmp / 'fake'}"], f"fake CIFAR-10 ({per_class} per class), long-tailed 0.01"


def _quick_env(quick):
    """--quick's children run on one thread each: a smoke check that other load on a small machine's
    cores cannot stall (two threads sharing a busy core wait on each other), as in the step section."""
    return dict(os.environ, OMP_NUM_THREADS="1") if quick else None


def _quick_sets(quick) -> list[str]:
    """--quick's runs: a ResNet-8 judged on 100 test images (a smoke check; most of its time is the
    process start)."""
    return ["model.backbone=resnet8", "data.test_limit=100"] if quick else []


def bench_epoch(device, quick, tmp):
    sets, what = _data_sets(quick, tmp)
    backbone = "ResNet-8" if quick else "ResNet-32"
    rows = []
    for name, (tasks, gate) in VARIANTS.items():
        s = _train(
            tmp / f"epoch-{len(rows)}",
            sets
            + [
                f"ssl.tasks=[{','.join(tasks)}]",
                f"ssl.gate={gate}",
                "optim.epochs=1",
                "optim.base_epochs=1",
                f"device={device.type}",
            ]
            + _quick_sets(quick),
            env=_quick_env(quick),
        )
        rows.append(
            {
                "variant": name,
                "data": what,
                "wall_s": s["wall_seconds"],
                "images_per_s": s["images_per_second"],
            }
        )
    print(f"\n[epoch] one epoch of {what}, {backbone}, through `gssl train` (train + test evaluation)")
    for r in rows:
        print(f"{r['variant']:16} {r['wall_s']:8.1f} s  {r['images_per_s']:>9,.0f} train images/s")
    return rows


def _fits(rows, n, deadline) -> bool:
    """Whether N runs at once fit before the deadline, guessing the last N's wall time scaled by N."""
    return (
        deadline is None
        or not rows
        or time.monotonic() + rows[-1]["wall_s"] * n / rows[-1]["parallel"] <= deadline
    )


def bench_sweep(device, quick, tmp, sets=None, what=None, ns=None, env=None, deadline=None, skipped=None):
    """Total images/s of N runs of 2 epochs at once. `sets` (and `what`, their description) replace the
    small fake data set; with a `deadline` (time.monotonic()), an N that would not fit (the last N's wall
    time scaled by N) is skipped and named in `skipped`."""
    if sets is None:
        # small runs: the case several-at-once is for
        sets, what = _fake_data(tmp, QUICK_PER_CLASS if quick else 200)
        sets += _quick_sets(quick)
    sets = ["optim.epochs=2", "optim.base_epochs=2", f"device={device.type}"] + sets
    rows, skipped = [], [] if skipped is None else skipped
    for n in ns or ((1, 2) if quick else (1, 2, 4)):
        if not _fits(rows, n, deadline):
            skipped.append(f"sweep --parallel {n}")
            continue
        out = tmp / f"sweep{n}"
        cmd = [
            sys.executable,
            "-m",
            "gssl",
            "sweep",
            "--preset",
            "cifar10-lt0.01-gated-triple",
            "--out",
            str(out),
            "--seeds",
            *map(str, range(n)),
            "--parallel",
            str(n),
        ] + [a for s in sets for a in ("--set", s)]
        t0 = time.perf_counter()
        limit = None if deadline is None else max(30.0, deadline - time.monotonic() + 30.0)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env, timeout=limit)
        wall = time.perf_counter() - t0
        images = sum(
            json.loads(p.read_text())["epochs"] * len_train(p.parent) for p in out.rglob("summary.json")
        )
        rows.append(
            {"parallel": n, "runs": n, "wall_s": wall, "total_images_per_s": images / wall, "data": what}
        )
    for r in rows:
        r["vs_one"] = r["total_images_per_s"] / rows[0]["total_images_per_s"]
    _print_sweep(rows, what, skipped)
    return rows


def _print_sweep(rows, what, skipped):
    print(
        f"\n[sweep] N = {', '.join(str(r['parallel']) for r in rows)} runs of 2 epochs at once "
        f"({what}), process start and evaluation included"
    )
    for r in rows:
        print(
            f"N={r['parallel']}  {r['wall_s']:7.1f} s  {r['total_images_per_s']:>9,.0f} images/s in all  "
            f"{r['vs_one']:5.2f}x N=1"
        )
    for s in skipped:
        print(f"skipped (time budget): {s}")


def len_train(run_dir: Path) -> int:
    return sum(json.loads((run_dir / "summary.json").read_text())["class_counts"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke check")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sections", default="step,gates,transform,loader,epoch,sweep")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 2 quick, 10 full)")
    ap.add_argument("--json", type=Path, default=Path("benchmark-results.json"))
    args = ap.parse_args(argv)
    device, reps = torch.device(args.device), args.reps or (2 if args.quick else 10)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"step", "gates", "transform", "loader", "epoch", "sweep"}
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    env = {
        "device": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "quick": args.quick,
        "reps": reps,
        "load_average": os.getloadavg()[0],
    }
    print("  ".join(f"{k}={v}" for k, v in env.items()))
    out = {"env": env}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = {
            "step": lambda: bench_step(device, reps, args.quick),
            "gates": lambda: bench_gates(device, reps, args.quick),
            "transform": lambda: bench_transform(reps),
            "loader": lambda: bench_loader_section(device, args.quick),
            "epoch": lambda: bench_epoch(device, args.quick, tmp),
            "sweep": lambda: bench_sweep(device, args.quick, tmp, env=_quick_env(args.quick)),
        }
        out["seconds"] = {}
        for s in sections:
            t0 = time.perf_counter()
            out[s] = run[s]()
            out["seconds"][s] = round(time.perf_counter() - t0, 1)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"\nseconds per section: {out['seconds']}\nwritten to {args.json}")
    return out


if __name__ == "__main__":
    main()
