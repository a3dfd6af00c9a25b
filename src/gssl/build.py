"""Building a run's parts from its configuration: the data (with the protocol's long tail, caps and
normalisation, and the method's hook on the training images), the device and the classification loss.
The scenarios build their parts on it; a run's data and network as its method builds them:
gssl.methods.registry.build_data and build_model."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .config import Config, ConfigError
from .data import (
    DataError,
    DeviceLoader,
    ImageSet,
    first_per_class,
    load_dataset,
    long_tail_indices,
    mean_std,
)
from .gating import pretext_on
from .losses import build_loss


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device: 'cuda' was asked for but no CUDA device is available; use device=auto or cpu"
        )
    return torch.device(name)


@dataclass
class Data:
    train: ImageSet
    test: ImageSet
    counts: list[int]  # training images per class, after long-tailed subsampling
    mean: tuple
    std: tuple
    extra: dict[str, ImageSet] = field(default_factory=dict)  # a method's own image sets (Scenario.own_data)


def ordered_loader(split: ImageSet, data: Data, batch_size: int, device) -> DeviceLoader:
    """Un-augmented, in order: the test set, or the training images' features for k-NN and a linear probe."""
    return DeviceLoader(
        split.images,
        split.labels,
        batch_size,
        mean=data.mean,
        std=data.std,
        crop_padding=0,
        hflip=False,
        shuffle=False,
        device=device,
    )


def build_data(cfg: Config, own_data: Callable | None = None) -> Data:
    """The protocol's data; `own_data(cfg, train) -> (train, extra)`: the method's hook on the training
    images (gssl.methods.base.Scenario.own_data; the run's method builds through methods.registry)."""
    data_cfg = cfg.data
    train = load_dataset(data_cfg.name, data_cfg.root, "train")
    test = load_dataset(data_cfg.name, data_cfg.root, "test")
    if (
        data_cfg.max_per_class is not None
    ):  # cap every class first (small, fast runs), keeping the protocol's order
        train = train.subset(first_per_class(train.labels.numpy(), data_cfg.max_per_class))
    if data_cfg.imbalance < 1:
        train = train.subset(
            long_tail_indices(train.labels.numpy(), data_cfg.imbalance, data_cfg.profile, seed=0)
        )
    train, extra = own_data(cfg, train) if own_data is not None else (train, {})
    if data_cfg.test_limit is not None:  # balanced: the same number of test images from every class
        test = test.subset(
            first_per_class(test.labels.numpy(), math.ceil(data_cfg.test_limit / len(test.classes)))
        )
    if data_cfg.to_rgb:
        train, test = train.to_rgb(), test.to_rgb()
        extra = {name: images.to_rgb() for name, images in extra.items()}
    C = train.images.shape[1]
    mean, std = (
        ((0.5,) * C, (0.5,) * C)
        if data_cfg.normalize == "symmetric"
        else mean_std(data_cfg.name, train, channels=C)
    )
    counts = torch.bincount(train.labels, minlength=len(train.classes)).tolist()
    empty = [name for name, n in zip(train.classes, counts) if n == 0]
    if empty:  # the losses (LDAM margins, DRW weights) need every class present
        names = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
        if data_cfg.imbalance == 1:
            raise DataError(
                f"{data_cfg.name}: no training images for {len(empty)} of {len(counts)} classes ({names})"
            )
        raise ConfigError(
            f"data.imbalance={data_cfg.imbalance}: the long tail leaves {len(empty)} of {len(counts)} "
            f"classes with no training images ({names}), as the rarest class keeps int({max(counts)} x "
            f"{data_cfg.imbalance}) images. Raise data.imbalance"
            f"{' or data.max_per_class' if data_cfg.max_per_class else ''}, or use more images per class"
        )
    return Data(train, test, counts, tuple(mean), tuple(std), extra)


def backbone_options(cfg: Config) -> dict:
    """The backbone's own settings: the `vit` section for the ViT, none for the others."""
    return dataclasses.asdict(cfg.vit) if cfg.model.backbone == "vit" else {}


def check_shapes(cfg: Config, C: int, H: int, W: int) -> None:
    """What the images must be for the backbone and the pretext tasks, refused before training with how
    to fix it (a method's own needs: Scenario.check_images)."""
    if cfg.model.backbone == "vit" and (H != W or H != cfg.vit.image_size or H % cfg.vit.patch):
        raise ConfigError(
            f"model.backbone=vit: vit.image_size={cfg.vit.image_size} and vit.patch={cfg.vit.patch} must fit "
            f"the {cfg.data.name} images ({H}x{W}): set vit.image_size={H} and a vit.patch dividing it "
            f"(4 on 32 px, 8 on 64 px)"
        )
    if pretext_on(cfg.ssl.tasks, cfg.ssl.gate) and (H % 2 or W % 2):
        raise ConfigError(
            f"ssl.tasks: quadrant pretext tasks need even image sides, but {cfg.data.name} images are "
            f"{H}x{W}; pad or resize the images, or set ssl.tasks=[]"
        )


def build_cls_loss(cfg: Config, counts: list[int]):
    kw = {
        "ldam": {"max_m": cfg.loss.max_margin, "s": cfg.loss.scale},
        "focal": {"gamma": cfg.loss.focal_gamma},
    }
    return build_loss(cfg.loss.name, counts, **kw.get(cfg.loss.name, {}))
