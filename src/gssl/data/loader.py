"""DeviceLoader: the whole training set as one uint8 tensor on the training device.

Each epoch draws a seeded permutation, gathers batches by index, and augments each batch with
batched tensor ops (augment.py). No worker processes, no per-sample Python, no host-to-device copy
per step. Every random draw of epoch e comes from a CPU generator seeded from (seed, e) alone, so
a run resumed at epoch k replays epochs k, k+1, ... exactly (bit-for-bit on CPU), and CPU and
CUDA runs see the same permutations, crops and flips.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from .augment import normalize, random_crop, random_hflip


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed from (seed, epoch), so neighbouring epochs get unrelated streams."""
    words = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, epoch]).generate_state(2)
    return (int(words[0]) << 31) ^ int(words[1])


class DeviceLoader:
    """Iterate (float32 normalised images, int64 labels) batches on `device`.

    Training: DeviceLoader(x, y, 128, mean=..., std=...). Evaluation: crop_padding=0,
    hflip=False, shuffle=False. Iterating without calling set_epoch uses epochs 0, 1, 2, ...
    in turn; set_epoch(e) makes the next iteration epoch e.
    """

    def __init__(self, images_uint8, labels, batch_size: int, *, mean: Sequence[float], std: Sequence[float],
                 crop_padding: int = 4, hflip: bool = True, shuffle: bool = True, drop_last: bool = False,
                 seed: int = 0, device: str | torch.device = "cpu") -> None:
        images = torch.as_tensor(images_uint8)
        labels = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (len(images),):
            raise ValueError(f"{len(images)} images but labels of shape {tuple(labels.shape)}")
        if batch_size < 1 or crop_padding < 0:
            raise ValueError(f"batch_size must be >= 1 and crop_padding >= 0, got {batch_size}, {crop_padding}")
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(f"mean/std need {images.shape[1]} entries (one per channel), got {len(mean)}/{len(std)}")
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = labels.to(device=self.device, dtype=torch.int64)
        self.batch_size, self.crop_padding, self.hflip = batch_size, crop_padding, hflip
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.mean, self.std = tuple(mean), tuple(std)
        self.num_samples = len(images)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator(device="cpu").manual_seed(epoch_seed(self.seed, self.epoch))
        self.epoch += 1
        n = self.num_samples
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        order = order.to(self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images.index_select(0, idx)
            x = random_crop(x, self.crop_padding, g)
            if self.hflip:
                x = random_hflip(x, g)
            yield normalize(x, self.mean, self.std), self.labels.index_select(0, idx)
