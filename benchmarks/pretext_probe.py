"""Does a pretext head learn, and how fast? A probe of the pretext heads on the real long-tailed CIFAR-10.

Trains ResNet-32 for a fixed number of steps (batch 128, SGD lr 0.1, momentum 0.9, weight decay 2e-4,
the long-tailed training images with crop and, unless --no-hflip, horizontal flip) on either the pretext
loss alone or, with --joint, the run's own objective (LDAM classifier + ratio x pretext loss; with
--clean-cls the classifier's loss on the untransformed batch, ssl.clean_class_loss), and prints each
pretext head's training accuracy (with --joint, the classifier's too) every 50 steps (--every). Heads:
"cosine" (the reference's, raw cosines unless --scale) or "linear". --tasks picks the pretext tasks
(default LoRot-E alone; the gated triple's are lorot flip channel, drawn and applied to one quadrant
together: flip, then rotation, then channel permutation), with the uniform gate; --flip-axis the axis
the flip task flips (H: up-down, the long-tailed reference's; W: left-right).

    python benchmarks/pretext_probe.py --data PATH/cifar-10-jpg.tar.gz --head cosine --scale 1 --joint
    python benchmarks/pretext_probe.py --data PATH/cifar-10-jpg.tar.gz --tasks lorot flip channel
    python benchmarks/pretext_probe.py --data PATH/cifar-10-jpg.tar.gz --joint --clean-cls --ratio 10
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


def probe(
    data_root: str,
    head: str,
    scale: float,
    ratio: float,
    joint: bool,
    steps: int,
    tasks: list[str],
    flip_axis: str = "H",
    hflip: bool = True,
    seed: int = 0,
    every: int = 50,
    sets: list[str] = (),
    clean_class_loss: bool = False,
):
    sets = [parse_set(item) for item in (f"data.root={data_root}", *sets)]
    cfg = resolve("cifar10-lt0.01-lorot", sets=sets)
    data = build_data(cfg)
    torch.manual_seed(seed)
    model = GatedSSL(
        "resnet32",
        10,
        tasks=tasks,
        gate="uniform",
        head=head,
        ssl_ratio=ratio,
        pretext_scale=scale,
        flip_axis=flip_axis,
        clean_class_loss=clean_class_loss,
    )
    cls_loss = build_cls_loss(cfg, data.counts)
    loader = DeviceLoader(
        data.train.images,
        data.train.labels,
        128,
        mean=data.mean,
        std=data.std,
        crop_padding=4,
        hflip=hflip,
        shuffle=True,
        seed=seed,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    generator = torch.Generator().manual_seed(seed)
    window, step, started = [], 0, time.perf_counter()
    for epoch in range(10**6):
        loader.set_epoch(epoch)
        for x, y in loader:
            logits, pretext_term, stats = model.class_and_pretext(x, model.sample_params(x, generator))
            loss = pretext_term.added_to(cls_loss(logits, y) if joint else logits.new_zeros(()), stats)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            class_acc = 100.0 * float((logits.argmax(1) == y).float().mean())
            window.append([float(stats[f"pretext_acc_{task}"]) for task in tasks] + [class_acc])
            step += 1
            if step % every == 0:
                names = [*tasks, "class"] if joint else tasks
                accuracies = "  ".join(
                    f"{name} {sum(row[i] for row in window) / len(window):5.1f}%"
                    for i, name in enumerate(names)
                )
                print(
                    f"step {step:4d}  head train acc  {accuracies}  ({time.perf_counter() - started:.0f} s)",
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
    parser.add_argument(
        "--clean-cls", action="store_true", help="with --joint, the class loss on the untransformed batch"
    )
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--tasks", nargs="+", default=["lorot"], choices=["lorot", "flip", "channel"])
    parser.add_argument("--flip-axis", choices=["H", "W"], default="H", help="H: up-down (the reference's)")
    parser.add_argument("--no-hflip", action="store_true", help="no random horizontal flip of the images")
    parser.add_argument("--every", type=int, default=50, help="steps per printed line")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="a data setting"
    )
    args = parser.parse_args()
    if args.clean_cls and not args.joint:
        parser.error("--clean-cls changes the class loss, which only --joint trains: add --joint")
    clean = ", class loss on the clean batch" if args.clean_cls else ""
    objective = f"joint, ratio {args.ratio}{clean}" if args.joint else "pretext only"
    augmentation = "crop" if args.no_hflip else "crop and horizontal flip"
    print(
        f"# head {args.head}, scale {args.scale}, {objective}; tasks {' '.join(args.tasks)}, "
        f"flip axis {args.flip_axis}; {augmentation}"
    )
    probe(
        args.data,
        args.head,
        args.scale,
        args.ratio if args.joint else 1.0,
        args.joint,
        args.steps,
        args.tasks,
        args.flip_axis,
        not args.no_hflip,
        every=args.every,
        sets=args.sets,
        clean_class_loss=args.clean_cls,
    )


if __name__ == "__main__":
    main()
