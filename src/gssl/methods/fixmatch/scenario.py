"""FixMatch with the gated pretext loss (semisup.py): labelled, weak and strong views in one forward
pass, a fixed number of steps per epoch, and evaluation on an exponential moving average of the weights."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ...config import Config, ConfigError
from ...data import ImageSet, cycle, labeled_unlabeled_split
from ...ema import EMA
from ..base import Context, Scenario
from ..supervised.scenario import Supervised
from . import semisup


class FixMatchBatch(NamedTuple):
    """What `prepare` hands `loss` (semisup.fixmatch_loss's arguments after the model)."""

    x: torch.Tensor  # the labelled batch
    y: torch.Tensor
    xu: torch.Tensor  # the unlabelled batch, weakly augmented
    xs: torch.Tensor  # the same, strongly augmented
    yu: torch.Tensor  # its true labels: only the pseudo-labels' accuracy reads them
    cls_loss: torch.nn.Module
    params: dict[str, torch.Tensor]  # the pretext draws for the three views at once
    threshold: float
    lambda_u: float


class FixMatch(Scenario):
    sections = ("loss", "semi")
    per_rank_draws = True  # under torchrun each rank draws its own strong augmentations

    trigger = (
        "semi.labels_per_class"  # the setting that asks for this method in config files without `method`
    )

    @staticmethod
    def check(cfg: Config) -> None:
        if not cfg.semi.on():
            raise ConfigError(
                "method fixmatch needs semi.labels_per_class (labelled images per class, e.g. 25)"
            )

    build_model = staticmethod(Supervised.build_model)
    # its three views share one forward pass (semisup.fixmatch_loss): no clean pass for the class loss
    pretext_options = ("ssl.pretext_scale", "ssl.pretext_scale_learned")

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        unlabeled, semi = ctx.data.extra["unlabeled"], ctx.cfg.semi
        self.unlabeled_loader = ctx.loader(
            unlabeled.images, unlabeled.labels, ctx.cfg.optim.batch_size * semi.mu, ctx.cfg.seed + 1
        )
        self.strong = semisup.StrongAugment(ctx.data.mean, ctx.data.std, ctx.device)
        self.ema = EMA(ctx.model, semi.ema) if semi.ema > 0 else None

    @staticmethod
    def own_data(cfg: Config, train: ImageSet) -> tuple[ImageSet, dict[str, ImageSet]]:
        """A few labelled images per class; the rest, unlabelled, are its own."""
        labelled, unlabelled = labeled_unlabeled_split(
            train.labels.numpy(), cfg.semi.labels_per_class, cfg.semi.split_seed
        )
        return train.subset(labelled), {"unlabeled": train.subset(unlabelled)}

    @staticmethod
    def load_eval_weights(model: torch.nn.Module, checkpoint: dict) -> None:
        """The EMA's weights, as the run's own evaluation used (none kept: semi.ema=0)."""
        if "ema" in checkpoint:  # its keys "module.*" (and "n_averaged" in runs saved with AveragedModel)
            ema = checkpoint["ema"]
            model.load_state_dict(
                {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}
            )

    @property
    def images_per_epoch(self) -> int:
        return self.ctx.cfg.semi.steps_per_epoch * self.ctx.cfg.optim.batch_size

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.ctx.model

    def batches(self, epoch: int):
        steps = self.ctx.cfg.semi.steps_per_epoch
        self.unlabeled = cycle(self.unlabeled_loader, steps, epoch)
        return cycle(self.train_loader, steps, epoch), steps

    def prepare(self, x, y, generator, epoch, step):
        xu, yu = next(self.unlabeled)
        xs = self.strong(xu, generator)
        params = self.ctx.model.sample_params(torch.cat([x, xu, xs]), generator)
        semi = self.ctx.cfg.semi
        return FixMatchBatch(x, y, xu, xs, yu, self.ctx.cls_loss, params, semi.threshold, semi.lambda_u)

    loss = staticmethod(semisup.fixmatch_loss)

    def after_step(self) -> None:
        super().after_step()  # the gate's step state first: the EMA then averages the stepped weights
        if self.ema is not None:
            self.ema.update(self.ctx.model)

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict()} if self.ema is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
