"""Training-set splits: LDAM-DRW long-tailed subsampling, and labelled/unlabelled for semi-supervised runs.

The long-tailed split reproduces LDAM-DRW's IMBALANCECIFAR exactly (same counts, same numpy
stream), so a ratio-0.01 CIFAR-10 run trains on the same 12,406 images as the reference code.
"""

from __future__ import annotations

import numpy as np

from .imageset import DataError

PROFILES = ("exp", "step")


def long_tail_counts(n_max: float, num_classes: int, ratio: float, profile: str = "exp") -> list[int]:
    """Images kept per class, class 0 first (the head).

    exp:  n_i = int(n_max * ratio ** (i / (C - 1)))
    step: the first C // 2 classes keep int(n_max), the rest int(n_max * ratio).
    ratio = n_min / n_max in (0, 1]; 1 is balanced. (LDAM's own step code returns C - 1 counts
    when C is odd; here the extra class goes to the tail so there are always C counts.)
    """
    if not (0 < ratio <= 1):
        raise DataError(f"imbalance ratio must lie in (0, 1] (n_min / n_max; 1 = balanced), got {ratio}.")
    if num_classes < 1 or n_max < 1:
        raise DataError(
            f"need at least one class and one image per class, got {num_classes} classes, n_max {n_max}."
        )
    if profile == "exp":
        if num_classes == 1:
            return [int(n_max)]
        return [int(n_max * ratio ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    if profile == "step":
        head = num_classes // 2
        return [int(n_max)] * head + [int(n_max * ratio)] * (num_classes - head)
    raise DataError(f"unknown long-tail profile {profile!r}; expected one of {PROFILES}.")


def long_tail_indices(labels, ratio: float, profile: str = "exp", seed: int = 0) -> np.ndarray:
    """int64 indices into `labels` of the long-tailed subset, grouped by class in label order.

    As IMBALANCECIFAR: n_max = len(labels) / C; seed the numpy stream once, then per class
    `idx = np.where(labels == c)[0]; shuffle(idx); keep idx[:n_c]` (a local RandomState gives the
    same stream as np.random.seed without touching global state).
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    counts = long_tail_counts(len(labels) / len(classes), len(classes), ratio, profile)
    rng = np.random.RandomState(seed)
    kept = []
    for c, n in zip(classes, counts):
        idx = np.where(labels == c)[0]
        if len(idx) < n:
            raise DataError(
                f"class {c} has {len(idx)} images but the long-tail profile needs {n}; "
                "long-tailed splits start from a balanced training set."
            )
        rng.shuffle(idx)
        kept.append(idx[:n])
    return np.concatenate(kept).astype(np.int64)


def labeled_unlabeled_split(labels, n_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(labelled, unlabelled) int64 indices: `n_per_class` random images of each class are labelled,
    all others unlabelled. The caller keeps `labels[unlabelled]` aside, unseen by training, to
    measure pseudo-label accuracy. Labelled indices are grouped by class; unlabelled are sorted.
    """
    labels = np.asarray(labels)
    if n_per_class < 1:
        raise DataError(f"n_per_class must be at least 1, got {n_per_class}.")
    rng = np.random.RandomState(seed)
    chosen = []
    for c in np.unique(labels):
        idx = np.where(labels == c)[0]
        if len(idx) < n_per_class:
            raise DataError(
                f"class {c} has only {len(idx)} images, fewer than the {n_per_class} labelled "
                "per class asked for; lower n_per_class."
            )
        chosen.append(rng.choice(idx, n_per_class, replace=False))
    labeled = np.concatenate(chosen).astype(np.int64)
    mask = np.ones(len(labels), bool)
    mask[labeled] = False
    return labeled, np.flatnonzero(mask).astype(np.int64)


def first_per_class(labels, n: int) -> np.ndarray:
    """The first n indices of every class, in dataset order: deterministic balanced subsets."""
    labels = np.asarray(labels)
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:n] for c in np.unique(labels)]))
