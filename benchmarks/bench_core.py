"""Cost of the method core, side by side in one run.

(a) the composite pretext transform (LoRot-E + flip + channel permutation) on a batch of 128
    32x32 images: our vectorised gather against a per-sample Python loop in the reference's style;
(b) one training step (forward + backward + SGD step) of ResNet-32, batch 128: plain
    classification against + LoRot-E and + the gated triple under every gate mode (reference,
    learned, and the loss weightings of docs/gates.md: uncertainty, gradnorm, gcs, dwa).
Repetitions are interleaved (A B C D A B C D ...) so drifting machine load hits every variant
alike; medians are reported. Target: gated step <= 1.05x the plain step.

    python benchmarks/bench_core.py [--json OUT] [--reps N] [--threads N]
"""

import argparse
import itertools
import json
import platform
import statistics
import time

import torch

from gssl.losses import build_loss
from gssl.method import GatedSSL
from gssl.pretext import build_pretext

PERMS = list(itertools.permutations((0, 1, 2)))


def loop_transform(x, q, k, f, c):
    """The reference's way: a Python loop over samples, slicing one quadrant at a time."""
    x = x.clone()
    r = x.shape[2] // 2
    for i in range(x.shape[0]):
        r0, c0 = (int(q[i]) // 2) * r, (int(q[i]) % 2) * r
        patch = x[i][:, r0 : r0 + r, c0 : c0 + r]
        if f[i]:
            patch = torch.fliplr(patch)
        patch = torch.rot90(patch, int(k[i]), [1, 2])
        x[i][:, r0 : r0 + r, c0 : c0 + r] = patch[list(PERMS[int(c[i])])]
    return x


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict, reps: int, warmup: int = 2) -> dict:
    """Per variant: all times, in rounds (one call of every variant per round)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return times


def summary(times: dict, base: str) -> dict:
    """Median and min time, and the ratio to `base` three ways: of medians, of minima (the least
    disturbed run: robust to other load on the machine), and the median of per-round ratios
    (paired: slow drifts in machine load cancel)."""
    out = {}
    for name, t in times.items():
        paired = statistics.median(a / b for a, b in zip(t, times[base]))
        out[name] = {
            "median_s": statistics.median(t),
            "min_s": min(t),
            "ratio_median": statistics.median(t) / statistics.median(times[base]),
            "ratio_min": min(t) / min(times[base]),
            "ratio_paired": paired,
        }
    return out


def bench_transform(reps: int) -> dict:
    x = torch.randn(128, 3, 32, 32)
    pretext = build_pretext(["lorot", "flip", "channel"])
    gen = torch.Generator().manual_seed(0)
    p = pretext.sample(x, gen)
    fns = {
        "vectorised (sample + apply)": lambda: pretext(x, gen),
        "vectorised (apply only)": lambda: pretext.apply(x, p),
        "per-sample loop (reference)": lambda: loop_transform(
            x, p["quadrant"], p["rotation"], p["flip"], p["perm"]
        ),
    }
    ref, _ = pretext.apply(x, p)
    assert torch.equal(ref, loop_transform(x, p["quadrant"], p["rotation"], p["flip"], p["perm"]))
    return summary(interleaved(fns, reps * 4), "per-sample loop (reference)")


def bench_extras(reps: int) -> dict:
    """What the gated triple adds besides the transform: three heads, per-sample CEs and the
    gate, forward + backward, on a fixed [128, 64] feature (ResNet-32's)."""
    out = {}
    for gate in ("reference", "learned"):
        model = GatedSSL("resnet20", 10, tasks=["lorot", "flip", "channel"], gate=gate)
        feat = torch.randn(128, 64, requires_grad=True)
        classes = model.pretext.transformer.num_classes
        labels = {t: torch.randint(classes[t], (128,)) for t in model.tasks}

        def extra(model=model, feat=feat, labels=labels):
            heads = model.pretext.heads
            losses = torch.stack(
                [
                    torch.nn.functional.cross_entropy(heads[t](feat), labels[t], reduction="none")
                    for t in model.tasks
                ],
                1,
            )
            g = model.pretext.gate(feat, losses)
            (0.1 * g.pretext_loss + g.aux_loss).backward()

        out[f"heads + CE + {gate} gate (fwd+bwd)"] = extra
    times = interleaved(out, reps * 4)
    return {name: {"median_s": statistics.median(t), "min_s": min(t)} for name, t in times.items()}


def make_step(tasks, gate, gate_kw=None):
    torch.manual_seed(0)
    model = GatedSSL("resnet32", 10, tasks=tasks, gate=gate, gate_kw=gate_kw)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    loss_fn = build_loss("ce")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 3, 32, 32), torch.randint(10, (128,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss, _ = model.training_loss(x, y, loss_fn, g)
        loss.backward()
        opt.step()
        if model.pretext is not None:  # the gate's per-step hook, as the scenario calls it
            model.pretext.after_step()

    return step


def bench_step(reps: int) -> dict:
    triple = ["lorot", "flip", "channel"]
    fns = {
        "plain classification": make_step([], "none"),
        "+ LoRot-E": make_step(["lorot"], "reference"),
        "+ gated triple (reference)": make_step(triple, "reference"),
        "+ gated triple (learned)": make_step(triple, "learned"),
        "+ gated triple (uncertainty)": make_step(triple, "uncertainty"),
        "+ gated triple (gradnorm)": make_step(triple, "gradnorm"),
        "+ gated triple (gcs)": make_step(triple, "gcs"),
        "+ gated triple (gcs weighted)": make_step(triple, "gcs", {"weighted": True}),
        "+ gated triple (dwa)": make_step(triple, "dwa"),
    }
    return summary(interleaved(fns, reps), "plain classification")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--reps", type=int, default=20, help="timed training steps per variant")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = {
        "device": f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": 128,
        "reps": args.reps,
    }
    print("  ".join(f"{k}={v}" for k, v in env.items()))

    tr = bench_transform(args.reps)
    print("\n(a) pretext transform, LoRot-E + flip + channel, 128 x 3 x 32 x 32")
    print(f"{'variant':32s} {'median ms':>10s} {'min ms':>8s} {'speed-up (median/min/paired)':>30s}")
    for name, r in tr.items():
        print(
            f"{name:32s} {r['median_s'] * 1e3:10.3f} {r['min_s'] * 1e3:8.3f}    "
            f"{1 / r['ratio_median']:7.1f}x {1 / r['ratio_min']:7.1f}x {1 / r['ratio_paired']:7.1f}x"
        )

    ex = bench_extras(args.reps)
    st = bench_step(args.reps)
    print("\n(b) ResNet-32 training step (fwd + bwd + SGD), batch 128")
    print(f"{'variant':32s} {'median ms':>10s} {'min ms':>8s} {'vs plain (median/min/paired)':>30s}")
    for name, r in st.items():
        print(
            f"{name:32s} {r['median_s'] * 1e3:10.1f} {r['min_s'] * 1e3:8.1f}    "
            f"{r['ratio_median']:7.3f}x {r['ratio_min']:7.3f}x {r['ratio_paired']:7.3f}x"
        )
    ref = st["+ gated triple (reference)"]["ratio_median"]
    print("\nthe gated triple's step under each gate mode against the reference gate's (medians):")
    for name, r in st.items():
        if name.startswith("+ gated triple"):
            print(f"{name:32s} {r['ratio_median'] / ref:7.2f}x")
    plain = st["plain classification"]["min_s"]
    apply = tr["vectorised (apply only)"]["min_s"]
    print("\nwhat the gated triple adds (min times, as a fraction of the plain step):")
    print(f"{'transform (apply)':42s} {apply * 1e3:8.3f} ms  {apply / plain:7.2%}")
    for name, r in ex.items():
        print(f"{name:42s} {r['min_s'] * 1e3:8.3f} ms  {r['min_s'] / plain:7.2%}")

    speedup = 1 / tr["vectorised (apply only)"]["ratio_median"]
    gated = st["+ gated triple (reference)"]
    print(f"\ntransform: vectorised is {speedup:.1f}x faster than the per-sample loop (medians)")
    print(
        f"gated step / plain step: {gated['ratio_median']:.3f}x (medians), "
        f"{gated['ratio_min']:.3f}x (minima), {gated['ratio_paired']:.3f}x (paired); target <= 1.05x"
    )

    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"env": env, "transform": tr, "extras": ex, "step": st}, fh, indent=2)


if __name__ == "__main__":
    main()
