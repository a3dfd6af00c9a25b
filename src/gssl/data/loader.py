"""DeviceLoader: the whole training set as one uint8 tensor on the training device.

Each epoch draws a seeded permutation, gathers batches by index, and augments each batch with
batched tensor ops (augment.py). No worker processes, no per-sample Python, no host-to-device copy
per step. Every random draw of epoch e comes from a CPU generator seeded from (seed, e) alone, so
a run resumed at epoch k replays epochs k, k+1, ... exactly (bit-for-bit on CPU), and CPU and
CUDA runs see the same permutations, crops and flips.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from .augment import crop_at, flip_where, normalize


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed from (seed, epoch), so neighbouring epochs get unrelated streams."""
    words = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, epoch]).generate_state(2)
    return (int(words[0]) << 31) ^ int(words[1])


class DeviceLoader:
    """Iterate (float32 normalised images, int64 labels) batches on `device`.

    Training: DeviceLoader(x, y, 128, mean=..., std=...). Evaluation: crop_padding=0,
    hflip=False, shuffle=False. Iterating without calling set_epoch uses epochs 0, 1, 2, ...
    in turn; set_epoch(e) makes the next iteration epoch e.

    cpu_threads: intra-op threads used while a batch is assembled on the CPU (None: torch's setting).
    The ops are small and memory-bound, so threads gain little; but when other processes compete for
    the cores, OpenMP barrier waits slow them 10-30x (measured: 35k vs 1.6k images/s on 2 busy
    cores). The setting is restored before each batch is handed over, so training is unaffected.

    rank, world: data-parallel sharding. batch_size is per rank; every rank draws the same epoch
    permutation and takes its own slice of each global batch of world x batch_size, so the global
    batches and the epoch's sample order are those of one process with batch world x batch_size.
    A last partial global batch is split as evenly as possible; one with fewer samples than ranks
    is dropped on every rank alike (no rank may get an empty batch and stall the others).
    """

    def __init__(
        self,
        images_uint8,
        labels,
        batch_size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        crop_padding: int = 4,
        hflip: bool = True,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        cpu_threads: int | None = 1,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        images = torch.as_tensor(images_uint8)
        labels = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (len(images),):
            raise ValueError(f"{len(images)} images but labels of shape {tuple(labels.shape)}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world} processes")
        if batch_size < 1 or crop_padding < 0:
            raise ValueError(
                f"batch_size must be >= 1 and crop_padding >= 0, got {batch_size}, {crop_padding}"
            )
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(
                f"mean/std need {images.shape[1]} entries (one per channel), got {len(mean)}/{len(std)}"
            )
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = labels.to(device=self.device, dtype=torch.int64)
        self.batch_size, self.crop_padding, self.hflip = batch_size, crop_padding, hflip
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.mean, self.std = tuple(mean), tuple(std)
        c = images.shape[1]
        self._mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self.num_samples = len(images)
        self.epoch = 0
        self.rank, self.world = rank, world
        self.cpu_threads = cpu_threads if self.device.type == "cpu" else None

    @contextmanager
    def _threads(self):
        old = torch.get_num_threads()
        if self.cpu_threads is None or self.cpu_threads == old:
            yield
            return
        torch.set_num_threads(self.cpu_threads)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size * self.world
        full, rest = divmod(n, b)
        return full + (0 if self.drop_last or rest < self.world else 1) if rest else full

    def shard(self, i: int) -> tuple[int, int]:
        """(size of global batch i, where this rank's slice starts in it)."""
        b = self.batch_size * self.world
        size = min(b, self.num_samples - i * b)
        if size == b:
            return b, self.rank * self.batch_size
        # a partial batch is split as torch.tensor_split splits it: the first size % world ranks get one more
        share, extra = divmod(size, self.world)
        mine = share + (self.rank < extra)
        return size, self.rank * share + min(self.rank, extra) if mine else 0

    def _positions(self, i: int) -> slice | torch.Tensor:
        """This rank's positions in the epoch order for global batch i."""
        b = self.batch_size * self.world
        start, stop = i * b, min((i + 1) * b, self.num_samples)
        if stop - start == b:
            return slice(start + self.rank * self.batch_size, start + (self.rank + 1) * self.batch_size)
        return torch.tensor_split(torch.arange(start, stop), self.world)[self.rank]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # All of the epoch's randomness is drawn up front on the CPU -- permutation, then crop offsets,
        # then flips, one per position in the permutation -- and moved to the device once: no per-batch
        # host-device traffic, and a sample's augmentation does not depend on the batch size.
        g = torch.Generator(device="cpu").manual_seed(epoch_seed(self.seed, self.epoch))
        self.epoch += 1
        n, p, dev = self.num_samples, self.crop_padding, self.device
        order = (torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)).to(dev)
        offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=g).to(dev) if p else None
        flips = (torch.rand(n, generator=g) < 0.5).to(dev) if self.hflip else None
        for i in range(len(self)):
            sl = self._positions(i)
            if not isinstance(sl, slice):
                sl = sl.to(dev)
            with self._threads():
                idx = order[sl]
                x = self.images.index_select(0, idx)
                if offsets is not None:
                    x = crop_at(x, p, offsets[sl])
                if flips is not None:
                    x = flip_where(x, flips[sl])
                batch = normalize(x, self._mean, self._std), self.labels.index_select(0, idx)
            yield batch


def cycle(loader, steps: int, epoch: int):
    """`steps` batches from `loader`, starting a new shuffled pass (its own seeded epoch) whenever it
    runs out."""
    made, wrap = 0, 0
    while made < steps:
        loader.set_epoch(epoch * 100_003 + wrap)
        for batch in loader:
            yield batch
            made += 1
            if made == steps:
                return
        wrap += 1
