"""Does a pretext head learn, and how fast? A probe of the LoRot-E head on the real long-tailed CIFAR-10.

Trains ResNet-32 for a fixed number of steps (batch 128, SGD lr 0.1, momentum 0.9, weight decay 2e-4,
the long-tailed training images with crop and flip) on either the pretext loss alone or, with --joint,
the run's own objective (LDAM classifier + ratio x pretext loss), and prints the pretext head's training
accuracy every 50 steps. Heads: "cosine" (the reference's, raw cosines unless --scale) or "linear".

    python benchmarks/pretext_probe.py --data PATH/cifar-10-jpg.tar.gz --head cosine --scale 1 --joint
"""

import argparse
import time

import torch

from gssl.build import build_cls_loss
from gssl.config import parse_set
from gssl.data import DeviceLoader
from gssl.method import GatedSSL
from gssl.methods.registry import build_data
from gssl.presets import resolve


def probe(data_root: str, head: str, scale: float, ratio: float, joint: bool, steps: int, seed: int = 0):
    cfg = resolve("cifar10-lt0.01-lorot", sets=[parse_set(f"data.root={data_root}")])
    data = build_data(cfg)
    torch.manual_seed(seed)
    model = GatedSSL(
        "resnet32", 10, tasks=["lorot"], gate="uniform", head=head, ssl_ratio=ratio, pretext_scale=scale
    )
    cls_loss = build_cls_loss(cfg, data.counts)
    loader = DeviceLoader(
        data.train.images,
        data.train.labels,
        128,
        mean=data.mean,
        std=data.std,
        crop_padding=4,
        hflip=True,
        shuffle=True,
        seed=seed,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    generator = torch.Generator().manual_seed(seed)
    window, step, started = [], 0, time.perf_counter()
    for epoch in range(10**6):
        loader.set_epoch(epoch)
        for x, y in loader:
            logits, pretext_term, stats = model.train_forward(x, model.sample_params(x, generator))
            loss = cls_loss(logits, y) + pretext_term if joint else pretext_term
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            window.append(float(stats["pretext_acc_lorot"]))
            step += 1
            if step % 50 == 0:
                print(
                    f"step {step:4d}  head train acc {sum(window) / len(window):5.1f}%  "
                    f"loss {float(stats['ssl_lorot']):.3f}  ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
                window = []
            if step == steps:
                return


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="the CIFAR-10 archive or folder")
    parser.add_argument("--head", choices=["cosine", "linear"], default="cosine")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiplies the pretext logits (1 = reference)"
    )
    parser.add_argument("--ratio", type=float, default=0.1, help="the pretext loss weight in --joint mode")
    parser.add_argument("--joint", action="store_true", help="LDAM classifier + ratio x pretext, as training")
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    objective = f"joint, ratio {args.ratio}" if args.joint else "pretext only"
    print(f"# head {args.head}, scale {args.scale}, {objective}")
    probe(args.data, args.head, args.scale, args.ratio if args.joint else 1.0, args.joint, args.steps)


if __name__ == "__main__":
    main()
