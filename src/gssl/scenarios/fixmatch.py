"""FixMatch with the gated pretext loss (gssl.semisup): labelled, weak and strong views in one forward
pass, a fixed number of steps per epoch, and evaluation on an exponential moving average of the weights."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import semisup
from ..config import Config, ConfigError
from .base import Context, Scenario
from .supervised import Supervised


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
    def claims(cfg: Config) -> bool:
        return cfg.semi.labels_per_class is not None

    @staticmethod
    def check(cfg: Config) -> None:
        if cfg.semi.labels_per_class is None:
            raise ConfigError(
                "method fixmatch needs semi.labels_per_class (labelled images per class, e.g. 25)"
            )

    build_model = staticmethod(Supervised.build_model)
    # its three views share one forward pass (semisup.fixmatch_loss): no clean pass for the class loss
    pretext_options = ("ssl.pretext_scale", "ssl.pretext_scale_learned")

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        unlabeled, semi = ctx.data.unlabeled, ctx.cfg.semi
        self.unlabeled_loader = ctx.loader(
            unlabeled.images, unlabeled.labels, ctx.cfg.optim.batch_size * semi.mu, ctx.cfg.seed + 1
        )
        self.strong = semisup.StrongAugment(ctx.data.mean, ctx.data.std, ctx.device)
        self.ema = semisup.EMA(ctx.model, semi.ema) if semi.ema > 0 else None

    @property
    def images_per_epoch(self) -> int:
        return self.ctx.cfg.semi.steps_per_epoch * self.ctx.cfg.optim.batch_size

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.ctx.model

    def batches(self, epoch: int):
        steps = self.ctx.cfg.semi.steps_per_epoch
        self.unlabeled = semisup.cycle(self.unlabeled_loader, steps, epoch)
        return semisup.cycle(self.train_loader, steps, epoch), steps

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
