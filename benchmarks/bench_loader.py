"""Loader throughput: gssl's DeviceLoader vs a torch DataLoader doing per-sample PIL augmentation.

Both produce the same thing -- random crop with 4 zero pixels of padding, horizontal flip,
float conversion and normalisation of CIFAR-10 training images, in shuffled batches -- and both
are timed in one run on the same data (the real CIFAR-10 copy when present, else random uint8).

    python benchmarks/bench_loader.py                      # defaults: 20,000 images, batch 128
    python benchmarks/bench_loader.py --device cuda --json out.json

Times are steady state: measured from the first batch on (DataLoader worker start-up and the
loaders' warm-up excluded), over --n images. The ratio column is the first row (the DeviceLoader as
configured by default: cpu_threads=1 on CPU, i.e. one core) over each row. On CPU the DeviceLoader
is also timed with torch's default thread count: intra-op threads suffer badly when other
processes compete for the cores, so the load average is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from gssl.data import MEAN_STD, DataError, DeviceLoader, load_dataset

MEAN, STD = MEAN_STD["cifar10"]
DEFAULT_DATA = Path(
    os.environ.get("GSSL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


class PILAugmented(torch.utils.data.Dataset):
    """torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize, in PIL."""

    def __init__(self, images_nhwc: np.ndarray, labels: np.ndarray, padding: int = 4):
        self.images, self.labels, self.padding = images_nhwc, labels, padding
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i])
        w, h = img.size
        p = self.padding
        img = ImageOps.expand(img, border=p, fill=0)
        top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
        img = img.crop((left, top, left + w, top + h))
        if torch.rand(()) < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        return x.sub_(self.mean).div_(self.std), int(self.labels[i])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_loader(make_iter, n: int, device: torch.device, to_device: bool) -> float:
    """Images per second over `n` images, counted from the end of the first batch."""
    seen, it, epoch = 0, make_iter(0), 0
    x, y = next(it)  # warm-up: worker start-up, first allocations
    if to_device:
        x = x.to(device, non_blocking=True)
    _sync(device)
    t = time.perf_counter()
    while seen < n:
        try:
            x, y = next(it)
        except StopIteration:
            epoch += 1
            it = make_iter(epoch)
            continue
        if to_device:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        seen += len(y)
    _sync(device)
    return seen / (time.perf_counter() - t)


def load_images(data: Path, cache_dir: str | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        t = time.perf_counter()
        train = load_dataset("cifar10", data, "train", cache_dir=cache_dir)
        return (
            train.images,
            train.labels,
            f"CIFAR-10 train from {data} (loaded in {time.perf_counter() - t:.1f} s)",
        )
    except DataError as e:
        print(f"real CIFAR-10 not available ({str(e)[:120]}...); using random uint8 images", file=sys.stderr)
        g = torch.Generator().manual_seed(0)
        return (
            torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.arange(50_000) % 10,
            "synthetic uint8 50000x3x32x32",
        )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="CIFAR-10 root or archive (default: shared/data)"
    )
    ap.add_argument("--n", type=int, default=20_000, help="images timed per method")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--workers", default="0,2", help="DataLoader num_workers settings to time, comma-separated"
    )
    ap.add_argument(
        "--threads", default="1,0", help="torch threads for the CPU DeviceLoader runs (0 = default)"
    )
    ap.add_argument("--cache-dir", default=None, help="decode cache (default $GSSL_CACHE or ~/.cache/gssl)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    images, labels, source = load_images(args.data, args.cache_dir)

    rows = []
    default_threads = torch.get_num_threads()
    thread_settings = (
        [int(t) or default_threads for t in args.threads.split(",")] if device.type == "cpu" else [0]
    )
    for t in dict.fromkeys(thread_settings):
        dev = DeviceLoader(
            images,
            labels,
            args.batch_size,
            mean=MEAN,
            std=STD,
            crop_padding=4,
            hflip=True,
            shuffle=True,
            seed=0,
            device=device,
            cpu_threads=t or None,
        )

        def dev_iter(epoch, dev=dev):
            dev.set_epoch(epoch)
            return iter(dev)

        ips = time_loader(dev_iter, args.n, device, to_device=False)
        label = f"cpu_threads={t}" if device.type == "cpu" else device.type
        rows.append(
            {"method": f"gssl DeviceLoader ({label}; batched crop+flip+normalise)", "images_per_s": ips}
        )
        del dev

    ds = PILAugmented(images.permute(0, 2, 3, 1).contiguous().numpy(), labels.numpy())
    for w in [int(v) for v in args.workers.split(",") if v.strip()]:
        dl = torch.utils.data.DataLoader(
            ds,
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=w,
            pin_memory=device.type == "cuda",
            persistent_workers=w > 0,
            generator=torch.Generator().manual_seed(0),
        )

        def dl_iter(epoch, dl=dl):
            return iter(dl)

        ips = time_loader(dl_iter, args.n, device, to_device=True)
        rows.append({"method": f"torch DataLoader, per-sample PIL, num_workers={w}", "images_per_s": ips})
        del dl
    ref = rows[0]  # the DeviceLoader as configured by default (cpu_threads=1 on CPU; on GPU, the GPU run)
    for r in rows:
        r["ratio"] = ref["images_per_s"] / r["images_per_s"]

    settings = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads_default": default_threads,
        "data": source,
        "n": args.n,
        "batch_size": args.batch_size,
        "crop_padding": 4,
        "hflip": True,
        "load_average": os.getloadavg()[0],
    }
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None))
    width = max(len(r["method"]) for r in rows)
    print(f"{'method':<{width}}  {'images/s':>10}  {'ratio (first row / this row)':>28}")
    for r in rows:
        print(f"{r['method']:<{width}}  {r['images_per_s']:>10,.0f}  {r['ratio']:>27.1f}x")
    result = {"settings": settings, "results": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
