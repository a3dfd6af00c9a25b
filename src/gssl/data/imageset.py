"""The one in-memory form every reader produces, and the one error type every reader raises.

Keeping all datasets as a single uint8 N x C x H x W tensor (about 150 MB for CIFAR-10) is what
lets the loader live on the training device and augment whole batches at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


class DataError(ValueError):
    """Bad or missing input data. The message says what was expected and how to fix it."""


# How each command is told where a dataset is; messages name all of them, since readers do not know
# which command called them (`gssl train` has no --root).
ROOT_OPTIONS = (
    "`gssl train`/`sweep`: --set data.root=DIR; `gssl eval`/`report`/`analyze`: --data-root DIR; "
    "`gssl data`: --root DIR"
)


class MissingSplitError(DataError):
    """The dataset was found but has no such split (e.g. an image folder without test/)."""


@dataclass
class ImageSet:
    """One split of a dataset: uint8 images N x C x H x W (contiguous, CPU), int64 labels N."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str = field(default="", compare=False)  # where it was read from, for messages/describe

    def __post_init__(self) -> None:
        if isinstance(self.images, np.ndarray):
            self.images = torch.from_numpy(np.ascontiguousarray(self.images))
        if isinstance(self.labels, np.ndarray) or isinstance(self.labels, list):
            self.labels = torch.as_tensor(np.asarray(self.labels, dtype=np.int64))
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"images must be uint8 N x C x H x W, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64:
            self.labels = self.labels.to(torch.int64)
        if self.labels.dim() != 1 or len(self.labels) != len(self.images):
            raise DataError(
                f"{len(self.images)} images but labels of shape {tuple(self.labels.shape)}: "
                "expected one label per image; check that the label file matches the images"
            )
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise DataError(
                f"labels must lie in [0, {len(self.classes)}) for {len(self.classes)} classes, "
                f"got [{int(self.labels.min())}, {int(self.labels.max())}]"
            )
        self.images = self.images.contiguous()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()

    def subset(self, idx) -> ImageSet:
        """The images at `idx` (any integer index array, or a boolean mask), in that order."""
        idx = torch.as_tensor(np.asarray(idx))
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        idx = idx.to(torch.int64)
        return ImageSet(
            self.images[idx].contiguous(), self.labels[idx].clone(), list(self.classes), self.source
        )

    def to_rgb(self) -> ImageSet:
        """Greyscale replicated to 3 channels (SPEC section 10), so every pretext task applies."""
        if self.images.shape[1] == 3:
            return self
        if self.images.shape[1] != 1:
            raise DataError(f"to_rgb expects 1 or 3 channels, got {self.images.shape[1]}")
        return ImageSet(
            self.images.expand(-1, 3, -1, -1).contiguous(), self.labels, list(self.classes), self.source
        )
