"""Data pipeline: dataset readers (CIFAR-10/100, image folders, Tiny-ImageNet, Fashion-MNIST), a cache
of decoded arrays, long-tailed and semi-supervised splits, and a loader that augments on the device.

    train = load_dataset("cifar10", "~/data/cifar-10-jpg.tar.gz", "train")   # decoded once, then cached
    train = train.subset(long_tail_indices(train.labels.numpy(), 0.01))      # LDAM-DRW long tail
    mean, std = MEAN_STD["cifar10"]
    loader = DeviceLoader(train.images, train.labels, 128, mean=mean, std=std, device="cuda")
    for epoch in range(start, epochs):
        loader.set_epoch(epoch)                                              # resumable, reproducible
        for x, y in loader: ...
"""

from .augment import crop_at, flip_where, normalize, random_crop, random_hflip
from .cache import default_cache_dir
from .datasets import (
    DATASETS,
    MEAN_STD,
    SPLITS,
    Source,
    channel_stats,
    describe,
    load_dataset,
    mean_std,
    resolve,
)
from .downloads import download
from .imageset import DataError, ImageSet, MissingSplitError
from .loader import DeviceLoader, cycle, epoch_seed
from .splits import PROFILES, first_per_class, labeled_unlabeled_split, long_tail_counts, long_tail_indices

__all__ = [
    "DATASETS",
    "MEAN_STD",
    "PROFILES",
    "SPLITS",
    "DataError",
    "DeviceLoader",
    "cycle",
    "ImageSet",
    "MissingSplitError",
    "Source",
    "channel_stats",
    "crop_at",
    "default_cache_dir",
    "describe",
    "download",
    "epoch_seed",
    "first_per_class",
    "flip_where",
    "labeled_unlabeled_split",
    "load_dataset",
    "long_tail_counts",
    "long_tail_indices",
    "mean_std",
    "normalize",
    "random_crop",
    "random_hflip",
    "resolve",
]
