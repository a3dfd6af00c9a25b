"""The settings of judging a backbone on frozen features (k-NN each epoch, a linear probe at the end),
shared by the methods that train without a classifier (SimCLR, DINO), each with its own k-NN defaults.
Torch-free, like every settings module."""

from __future__ import annotations

from dataclasses import field

from ..fields import checked, finite_positive, positive


def knn_k(default: int):
    return field(default=default, metadata=positive("neighbours of the k-NN evaluation"))


def knn_temperature(default: float):
    return field(default=default, metadata=finite_positive("k-NN vote temperature"))


def linear_epochs():
    return field(
        default=100,
        metadata=checked(
            lambda v: v >= 0,
            "an integer >= 0 (0: k-NN only)",
            help="epochs of the final linear probe (0: k-NN only)",
        ),
    )


def linear_lr():
    return field(default=0.1, metadata=finite_positive("the linear probe's learning rate"))
