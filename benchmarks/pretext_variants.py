"""What issue 47's additions cost, on the long-tailed protocol's network (ResNet-32, batch 128, the gated
triple, LDAM): (a) a training step with the class loss on the clean image (ssl.clean_class_loss, a second
backbone forward) against the default step, in images per second; (b) the gradient diagnostic of one
epoch (gssl.diagnostics: DIAGNOSTIC_BATCHES batches, a forward and 1 + tasks backward passes each) in
training steps, and as a share of an epoch of long-tailed CIFAR-10 0.01 (12,406 images: 97 steps; the
10,000-image evaluation not counted, so the share is an upper bound). Interleaved repetitions, medians
(bench_core).

    python benchmarks/pretext_variants.py [--reps N] [--threads N] [--json OUT]
"""

import argparse
import json
import math
import platform

import torch

from bench_core import interleaved, summary
from gssl.diagnostics import DIAGNOSTIC_BATCHES, left_as_it_was, term_norms
from gssl.losses import build_loss
from gssl.method import GatedSSL

BATCH, EPOCH_IMAGES = 128, 12_406
COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def model_and_batch(**kw):
    torch.manual_seed(0)
    model = GatedSSL(
        "resnet32", 10, tasks=["lorot", "flip", "channel"], gate="reference", head="cosine", **kw
    )
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(BATCH, 3, 32, 32, generator=g), torch.randint(10, (BATCH,), generator=g)
    return model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last), y


def training_step(**kw):
    model, x, y = model_and_batch(**kw)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    loss_fn, gen = build_loss("ldam", COUNTS), torch.Generator().manual_seed(0)

    def step():
        opt.zero_grad(set_to_none=True)
        loss, _ = model.training_loss(x, y, loss_fn, gen)
        loss.backward()
        opt.step()

    return step


def diagnostic():
    """One epoch's diagnostic as gssl.diagnostics.gradient_norms runs it, on the same batch each time."""
    model, x, y = model_and_batch()
    loss_fn, shared = build_loss("ldam", COUNTS), list(model.backbone.parameters())

    def measure():
        gen, norms = torch.Generator().manual_seed(1), []
        with left_as_it_was(model, torch.device("cpu")):
            for _ in range(DIAGNOSTIC_BATCHES):
                terms = model.loss_terms(x, y, loss_fn, model.sample_params(x, gen))
                norms += list(term_norms(terms, shared).values())
        return torch.stack(norms).tolist()

    return measure


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fns = {
        "default step": training_step(),
        "clean-class-loss step": training_step(clean_class_loss=True),
        "diagnostic (one epoch's)": diagnostic(),
    }
    result = summary(interleaved(fns, args.reps), "default step")
    steps = math.ceil(EPOCH_IMAGES / BATCH)
    env = {
        "device": f"cpu ({platform.machine()})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print("  ".join(f"{k}={v}" for k, v in env.items()), f"reps={args.reps}")
    for name, row in result.items():
        rate = BATCH / row["median_s"]
        print(
            f"{name:28s} {row['median_s'] * 1e3:8.1f} ms  {rate:7.1f} img/s  "
            f"{row['ratio_paired']:.2f}x the step"
        )
    share = result["diagnostic (one epoch's)"]["ratio_paired"] / steps
    print(f"diagnostic / training steps of one epoch ({steps} steps): {100 * share:.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "result": result, "epoch_share": share}, f, indent=1)


if __name__ == "__main__":
    main()
