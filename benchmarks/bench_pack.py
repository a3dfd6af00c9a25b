"""Packing K runs into one model: vmap over stacked parameters against channel-stacked grouped convolutions.

One training step (forward + backward + SGD step) of ResNet-32 with the gated triple (LoRot-E + flip +
channel permutation, reference gate, cosine heads, LDAM), for K members at batch B each:

  separate  K single-run steps one after the other (one run at a time)
  vmap      gssl.packed.Pack: functional_call of the real loss under torch.func.vmap
  grouped   the same network written by hand as grouped convolutions over member-stacked channels
            (conv groups=K, batch norm over K x C channels), reading the very same stacked parameters

Both packed variants compute the same losses (printed as a check). Rounds are interleaved so machine
load drifts over every variant alike; medians are reported as aggregate images/s. `--compile` also
compiles the vmap step for one K with inductor and reports its graph count and step time.

    python benchmarks/bench_pack.py [--ks 1 2 4 8] [--batch 128] [--reps 3] [--threads 1] [--compile 2]
"""

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from gssl.losses import build_loss
from gssl.method import GatedSSL
from gssl.packed import Pack, stack_args

TASKS = ["lorot", "flip", "channel"]


def member_models(k: int) -> list[GatedSSL]:
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(GatedSSL("resnet32", 10, tasks=TASKS, gate="reference", head="cosine"))
    return models


def grouped_conv(x, weight, stride):
    k, out_c, in_c = weight.shape[:3]
    return F.conv2d(x, weight.reshape(k * out_c, in_c, 3, 3), stride=stride, padding=1, groups=k)


def grouped_bn(x, params, buffers, name):
    return F.batch_norm(
        x,
        buffers[name + ".running_mean"].view(-1),
        buffers[name + ".running_var"].view(-1),
        params[name + ".weight"].view(-1),
        params[name + ".bias"].view(-1),
        training=True,
    )


def grouped_block(x, params, buffers, name, k):
    stride = 2 if name.endswith(".0") and not name.startswith("model.backbone.layer1") else 1
    out = F.relu(
        grouped_bn(grouped_conv(x, params[name + ".conv1.weight"], stride), params, buffers, name + ".bn1")
    )
    out = grouped_bn(grouped_conv(out, params[name + ".conv2.weight"], 1), params, buffers, name + ".bn2")
    if stride == 2:  # option A per member: subsample, zero-pad each member's channels
        b, kc, h, w = x.shape
        short = x[:, :, ::2, ::2].reshape(b, k, kc // k, h // 2, w // 2)
        pad = kc // k // 2
        x = F.pad(short, (0, 0, 0, 0, pad, pad)).reshape(b, -1, h // 2, w // 2)
    return F.relu(out + x)


def grouped_loss(params, buffers, x, y, cls_loss, pretext, pretext_params):
    """The gated triple's loss for K members with member-stacked channels: x [K, B, C, H, W]."""
    k, b = x.shape[:2]
    flat = {key: value.reshape(k * b) for key, value in pretext_params.items()}
    xt, labels = pretext.apply(x.reshape(k * b, *x.shape[2:]), flat)
    h = xt.view(k, b, *x.shape[2:]).transpose(0, 1).reshape(b, -1, *x.shape[3:])
    h = F.relu(
        grouped_bn(
            grouped_conv(h, params["model.backbone.conv1.weight"], 1), params, buffers, "model.backbone.bn1"
        )
    )
    for stage in (1, 2, 3):
        for i in range(5):
            h = grouped_block(h, params, buffers, f"model.backbone.layer{stage}.{i}", k)
    feat = F.normalize(h.mean((2, 3)).view(b, k, -1).transpose(0, 1), dim=2)  # [K, B, 64]

    def cosine(name):
        return torch.einsum("kbd,kod->kbo", feat, F.normalize(params[name], dim=2))

    logits = cosine("model.classifier.weight")
    cls = (
        F.cross_entropy(
            30 * (logits - F.one_hot(y, 10) * cls_loss.margins[y].unsqueeze(2)).flatten(0, 1),
            y.flatten(),
            reduction="none",
        )
        .view(k, b)
        .mean(1)
    )
    task_losses = torch.stack(
        [
            F.cross_entropy(
                cosine(f"model.pretext.heads.{t}.weight").flatten(0, 1),
                labels[t].reshape(-1),
                reduction="none",
            )
            .view(k, b)
            .mean(1)
            for t in TASKS
        ],
        dim=1,
    )  # [K, T]
    with torch.no_grad():
        w, bias = params["model.pretext.gate.linear.weight"], params["model.pretext.gate.linear.bias"]
        raw = h.mean((2, 3)).view(b, k, -1).transpose(0, 1)
        gate = torch.softmax((torch.einsum("kbd,ktd->kbt", raw, w) + bias.unsqueeze(1)).mean(1), dim=1)
    losses = cls + 0.1 * (task_losses * gate).sum(1)
    return losses.sum(), losses.detach()


def setup(k: int, batch: int):
    models = member_models(k)
    cls_loss = build_loss("ldam", [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
    x, y = torch.randn(k, batch, 3, 32, 32), torch.randint(0, 10, (k, batch))
    drawn = [models[i].sample_params(x[i], torch.Generator().manual_seed(i)) for i in range(k)]
    return models, cls_loss, x, y, drawn


def variants(k: int, batch: int):
    models, cls_loss, x, y, drawn = setup(k, batch)
    pack = Pack(models, lambda model, *args: model.loss_from_params(*args))
    args = stack_args([(x[i], y[i], cls_loss, drawn[i]) for i in range(k)])
    stacked = list(pack.params.values())
    pack_opt = torch.optim.SGD(stacked, lr=0.01, momentum=0.9, weight_decay=2e-4, foreach=True)
    group_opt = torch.optim.SGD(stacked, lr=0.01, momentum=0.9, weight_decay=2e-4, foreach=True)
    single_opts = [
        torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4, foreach=True)
        for m in models
    ]

    def separate():
        for i, model in enumerate(models):
            single_opts[i].zero_grad(set_to_none=True)
            model.loss_from_params(x[i], y[i], cls_loss, drawn[i])[0].backward()
            single_opts[i].step()

    def stepped(opt, loss_fn):
        def run():
            opt.zero_grad(set_to_none=True)
            loss_fn()[0].backward()
            opt.step()

        return run

    pretext = models[0].pretext.transformer
    members = (pack, args, cls_loss, pretext, x, y, drawn)
    return members, {
        "separate": separate,
        "vmap": stepped(pack_opt, lambda: pack.loss(*args)),
        "grouped": stepped(
            group_opt, lambda: grouped_loss(pack.params, pack.buffers, x, y, cls_loss, pretext, args[3])
        ),
    }


def agreement(batch: int) -> float:
    """Largest relative difference between the vmap and grouped members' losses (K=2, fresh weights)."""
    (pack, args, cls_loss, pretext, x, y, _), _ = variants(2, batch)
    with torch.no_grad():
        buffers = {key: value.clone() for key, value in pack.buffers.items()}
        by_vmap = pack.loss(*args)[1]["loss"]
        by_groups = grouped_loss(pack.params, buffers, x, y, cls_loss, pretext, args[3])[1]
    return float(((by_vmap - by_groups).abs() / by_vmap.abs()).max())


def measure(ks, batch: int, reps: int) -> dict:
    results = {}
    for k in ks:
        _, fns = variants(k, batch)
        for fn in fns.values():  # warm-up
            fn()
        times = {name: [] for name in fns}
        for _ in range(reps):
            for name, fn in fns.items():
                started = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - started)
        results[k] = {name: k * batch / statistics.median(t) for name, t in times.items()}
        print(f"K={k:<3}" + "".join(f" {name} {v:8.0f} img/s" for name, v in results[k].items()), flush=True)
    return results


def compiled_check(k: int, batch: int) -> None:
    """The vmap step under torch.compile (inductor): graphs, compile seconds, step time against eager."""
    import torch._dynamo

    torch._dynamo.reset()
    (pack, args, *_), fns = variants(k, batch)
    explained = torch._dynamo.explain(pack.loss)(*args)
    step = torch.compile(pack.loss, dynamic=False)
    started = time.perf_counter()
    step(*args)[0].backward()
    compile_s = time.perf_counter() - started
    eager, compiled = [], []
    for _ in range(3):
        started = time.perf_counter()
        pack.loss(*args)[0].backward()
        eager.append(time.perf_counter() - started)
        started = time.perf_counter()
        step(*args)[0].backward()
        compiled.append(time.perf_counter() - started)
    eager_s, compiled_s = statistics.median(eager), statistics.median(compiled)
    print(
        f"compiled vmap step, K={k}: {explained.graph_count} graph(s), {explained.graph_break_count} "
        f"break(s), compile {compile_s:.0f} s; forward+backward {compiled_s:.3f} s compiled against "
        f"{eager_s:.3f} s eager ({eager_s / compiled_s:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--compile", type=int, default=0, metavar="K", help="also compile the vmap step at this K"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"ResNet-32 + gated triple, batch {args.batch} per member, {args.threads} thread(s), torch "
        f"{torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {load:.1f} at start; medians of {args.reps} interleaved rounds"
    )
    print(f"vmap and grouped members' losses agree to {agreement(args.batch):.1e} (relative)")
    results = measure(args.ks, args.batch, args.reps)
    base = results[args.ks[0]]["separate"] if args.ks[0] == 1 else None
    print("\n| K | separate img/s | vmap img/s | grouped img/s | vmap / separate | grouped / separate |")
    print("|---|---|---|---|---|---|")
    for k, r in results.items():
        print(
            f"| {k} | {r['separate']:.0f} | {r['vmap']:.0f} | {r['grouped']:.0f} | "
            f"{r['vmap'] / r['separate']:.2f} | {r['grouped'] / r['separate']:.2f} |"
        )
    if base:
        print(f"(one run at a time: {base:.0f} img/s)")
    if args.compile:
        compiled_check(args.compile, args.batch)


if __name__ == "__main__":
    main()
