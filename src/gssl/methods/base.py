"""The interface between the training loop and a way of training.

`gssl.engine.fit` owns the infrastructure (learning rate, precision, compilation, DDP, metric sums, the
non-finite watch, checkpoints, logging). A `Scenario` owns everything particular to a way of training,
through the hooks fit() calls, in this order:

    before_fit(run_dir)                     once, fresh runs only (SSP pre-trains here)
    per epoch:  start_epoch(epoch)          (DRW switches on here; a gate's per-epoch state rolls)
                batches(epoch) -> (iterable of (x, y), steps)
                per batch:  prepare(x, y, generator, epoch, step) -> batch   eager: the random draws
                            loss(model, *batch) -> (loss, stats)             pure: compiled, under DDP
                            after_step()                    (a gate's step state; an EMA updates here)
                diagnose(epoch) -> the row's diagnostics (the gradient each loss term puts on the backbone)
                evaluate_epoch(eval_fn) -> the row's test metrics ("test_acc" first)
    evaluate_final() -> (logits, labels, extra summary fields)

`state_dict`/`load_state_dict` carry any state of its own in the checkpoint. A wrapper (adversarial
training, SSP pre-training) is a Scenario around another one, overriding only its own hooks.

The hand-off from `prepare` to `loss` is a NamedTuple (`Batch`, or a scenario's own), whose fields are
`loss`'s arguments after the model: a wrapper reads and replaces fields by name (`batch._replace(x=...)`).
A NamedTuple is still a tuple and a registered pytree, so the step receives `*batch` through
torch.compile and DDP as before, and a pack stacks the members' batches with pytree (gssl.packed; a
dataclass is not a pytree).

The statistics `loss` returns beside the loss are a dict of detached tensors, one value per step (a
scalar; a pack's [members] vector), summed on the device over the epoch. Both contracts are checked on
each epoch's first step (`check_step`), so a scenario that breaks one fails at once, naming it:
    "loss"          the step's total loss, a batch mean
    "correct"       how many of the batch's predictions were right (a count): the row's train_acc; a
                    scenario without a classifier counts its own agreement (SimCLR's nearest positive)
    "<name>_correct" another count: the row's <name>_train_acc
    anything else   a batch mean: the row's mean over the epoch (the loss terms, gate weights, ...)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch
import torch.nn as nn

from .. import diagnostics, distributed, metrics
from ..build import Data, ordered_loader
from ..config import Config
from ..data import DeviceLoader, ImageSet
from ..losses import drw_weights
from ..schedule import drw_on
from .settings import SWITCHES


@dataclass
class Context:
    """What every scenario may read: the run's parts, built by the engine before training."""

    cfg: Config
    data: Data
    model: nn.Module  # the network itself (not the DDP wrapper)
    device: torch.device
    dist: distributed.Dist
    precision: str
    compiled: bool
    cls_loss: nn.Module
    run_dir: Path
    quiet: bool
    log: Callable[[str], None]  # progress messages; a no-op when quiet

    @property
    def num_classes(self) -> int:
        return len(self.data.train.classes)

    def loader(
        self, images, labels, batch_size: int, seed: int, *, drop_last: bool = False, sharded: bool = True
    ) -> DeviceLoader:
        """A shuffled, augmented training loader (crop and flip as the config says)."""
        dist = self.dist if sharded else distributed.Dist()
        return DeviceLoader(
            images,
            labels,
            batch_size,
            mean=self.data.mean,
            std=self.data.std,
            crop_padding=self.cfg.data.crop_padding,
            hflip=self.cfg.data.hflip,
            shuffle=True,
            seed=seed,
            device=self.device,
            rank=dist.rank,
            world=dist.world,
            drop_last=drop_last,
        )

    def ordered(self, split) -> DeviceLoader:
        """Un-augmented and in order: the test set, or the training images for a frozen evaluation."""
        return ordered_loader(split, self.data, max(512, self.cfg.optim.batch_size), self.device)


class Batch(NamedTuple):
    """What `prepare` hands `loss` in the supervised scenarios (and SimCLR, whose x are its views):
    `model.loss_from_params`'s arguments."""

    x: torch.Tensor
    y: torch.Tensor
    cls_loss: nn.Module
    params: dict[str, torch.Tensor]  # the pretext draws ({} without tasks)


REQUIRED_STATS = ("loss", "correct")


def check_step(scenario, batch, stats, shape: tuple[int, ...] = ()) -> None:
    """Raise TypeError naming what is wrong when a step breaks the contracts above (the engine would
    otherwise fail at the epoch's end, or sum a vector into the row): `batch`, what `prepare` returned;
    `stats`, what `loss` returned beside the loss; `shape`, one statistic's (a pack's: [members])."""
    name = type(scenario).__name__
    if not (isinstance(batch, tuple) and hasattr(batch, "_fields")):
        raise TypeError(f"{name}.prepare must return a NamedTuple of loss's arguments, got {type(batch)}")
    if not isinstance(stats, dict):
        raise TypeError(
            f"{name}.loss must return (loss, stats) with stats a dict, got {type(stats).__name__}"
        )
    missing = [key for key in REQUIRED_STATS if key not in stats]
    if missing:
        raise TypeError(
            f"{name}.loss's stats lack {missing}; every scenario reports {list(REQUIRED_STATS)} "
            "(gssl.methods.base: the stats contract)"
        )
    for key, value in stats.items():
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise TypeError(
                f"{name}.loss's stats[{key!r}] must be a tensor of shape {shape} (one value per step; "
                f"a batch mean or a count), got {got}"
            )


# The ssl settings that change how the pretext heads' losses are made, beyond the tasks and the gate, each
# with its test (set = not the default). A scenario names those it reads in `pretext_options`; one set
# where nothing reads it (another method, or no pretext tasks) is refused (registry.check).
PRETEXT_OPTIONS = {
    "ssl.pretext_scale": lambda cfg: cfg.ssl.pretext_scale != 1,
    "ssl.pretext_scale_learned": lambda cfg: cfg.ssl.pretext_scale_learned,
    "ssl.clean_class_loss": lambda cfg: cfg.ssl.clean_class_loss,
}


def settings_on(cfg: Config, names) -> list[str]:
    """Which of the named SWITCHES this config turns on, in the order named."""
    return [name for name in names if SWITCHES[name](cfg)]


class Scenario:
    """Supervised training on the classifier (and the gated pretext term its network carries): the
    default every hook falls back to."""

    sections: ClassVar[tuple[str, ...]] = ("loss",)  # config sections it reads beside data, model, ssl, optim
    trigger: ClassVar[str] = ""  # its switch (methods.settings.SWITCHES): the setting that claims() reads
    has_classifier: ClassVar[bool] = True  # false: judged on frozen features (k-NN, linear probe)
    per_rank_draws: ClassVar[bool] = False  # augmentations drawn per rank (views), not for the global batch
    drop_last: ClassVar[bool] = False  # the training loader's; SimCLR's under torchrun needs equal shares
    # loss_terms(model, *prepare's args) -> {name: term}, the main loss first: the step's loss split for the
    # gradient diagnostic (gssl.diagnostics); None: this scenario does not split its loss, and logs none
    loss_terms: ClassVar[Callable | None] = None
    pretext_options: ClassVar[tuple[str, ...]] = ()  # the PRETEXT_OPTIONS its model reads

    @classmethod
    def claims(cls, cfg: Config) -> bool:
        """Whether cfg's sections ask for this scenario when `method` is not given (old config files): its
        switch is on."""
        return bool(cls.trigger) and SWITCHES[cls.trigger](cfg)

    @staticmethod
    def own_data(cfg: Config, train: ImageSet) -> tuple[ImageSet, dict[str, ImageSet]]:
        """The training images it trains on, and image sets of its own (FixMatch: the unlabelled ones) for
        Data.extra; called by build_data before the test limit, RGB and normalisation."""
        return train, {}

    @staticmethod
    def load_eval_weights(model: nn.Module, checkpoint: dict) -> None:
        """Put into `model` (restored from `checkpoint`) the weights its evaluation judges, where these are
        not the trained ones (FixMatch: its EMA): `gssl eval` and the report judge a saved run alike."""

    @staticmethod
    def check(cfg: Config) -> None:
        """Settings this scenario cannot run with: raise ConfigError naming the fix."""

    @staticmethod
    def check_images(cfg: Config, channels: int, height: int, width: int) -> None:
        """What its transforms need of the images, refused before training with the fix (ConfigError)."""

    @staticmethod
    def build_model(cfg: Config, num_classes: int, in_channels: int) -> nn.Module:
        raise NotImplementedError

    @staticmethod
    def features(model: nn.Module) -> nn.Module:
        """The network's image representation: what t-SNE draws and, without a classifier, what the frozen
        probes judge, here and in `gssl eval` alike."""
        return model.backbone

    @staticmethod
    def probe_options(cfg: Config):
        """The config section with the frozen probes' settings (knn_k, knn_temperature, linear_epochs,
        linear_lr), so that `gssl eval` repeats the run's own final judgement."""
        return cfg.contrastive

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.train_loader = ctx.loader(
            ctx.data.train.images,
            ctx.data.train.labels,
            ctx.cfg.optim.batch_size,
            ctx.cfg.seed,
            drop_last=self.drop_last,
        )
        self.test_loader = ctx.ordered(ctx.data.test)
        self.drw = drw_weights(ctx.data.counts, ctx.cfg.loss.drw_beta).to(ctx.device)

    @property
    def step_batch(self) -> int:
        """The first dimension of loss()'s first argument on a full batch: what the compiled step sees."""
        return self.ctx.cfg.optim.batch_size

    @property
    def images_per_epoch(self) -> int:
        return len(self.ctx.data.train.labels)

    @property
    def eval_model(self) -> nn.Module:
        return self.ctx.model

    def before_fit(self, run_dir: Path) -> None:
        pass

    def start_epoch(self, epoch: int) -> None:
        self.ctx.cls_loss.set_weight(
            self.drw if drw_on(self.ctx.cfg, epoch) else None
        )  # in place: no recompilation
        if self.pretext is not None:  # a gate with per-epoch state (dwa) rolls it
            self.pretext.start_epoch(epoch)

    def batches(self, epoch: int):
        self.train_loader.set_epoch(epoch)
        return self.train_loader, len(self.train_loader)

    def prepare(self, x, y, generator: torch.Generator, epoch: int, step: int) -> Batch:
        params = distributed.global_params(
            self.ctx.dist, self.ctx.model, x, generator, *self.train_loader.shard(step)
        )
        return Batch(x, y, self.ctx.cls_loss, params)

    @staticmethod
    def loss(model: nn.Module, *batch):
        """The pure step on prepare's batch (its fields as arguments): (loss, stats as documented above)."""
        return model.loss_from_params(*batch)

    def after_step(self) -> None:
        if self.pretext is not None:  # a gate with per-step state (dwa's sums, gradnorm's renormalisation)
            self.pretext.after_step()

    @property
    def pretext(self):
        """The network's gated pretext component (gssl.method.GatedPretext), or None."""
        return getattr(self.ctx.model, "pretext", None)

    def diagnose(self, epoch: int) -> dict:
        """After the epoch's steps, outside them: the gradient norms of the loss terms (gssl.diagnostics)."""
        return diagnostics.gradient_norms(self, epoch)

    @functools.cached_property
    def diagnostic_loader(self) -> DeviceLoader:
        """Training batches drawn apart from the training's (another seed), from the same images on the
        device; built on first use."""
        train = self.train_loader
        seed = diagnostics.diagnostic_seed(self.ctx.cfg.seed)
        return self.ctx.loader(train.images, train.labels, self.ctx.cfg.optim.batch_size, seed)

    def evaluate_epoch(self, eval_fn) -> dict:
        logits, labels = metrics.predict(
            self.eval_model, self.test_loader, self.ctx.device.type, precision=self.ctx.precision, fn=eval_fn
        )
        shots = metrics.report(logits, labels, self.ctx.data.counts)  # many/medium/few-shot, every epoch
        return {
            "test_acc": shots["top1"],
            **{f"test_{g}_shot_acc": shots[f"{g}_shot_acc"] for g in ("many", "medium", "few")},
        }

    @functools.cached_property
    def bank_loader(self) -> DeviceLoader:
        """The training images, un-augmented and in order, for judge_frozen; built once, on first use."""
        return self.ctx.ordered(self.ctx.data.train)

    def judge_frozen(self, features: nn.Module, options, linear_epochs: int) -> dict:
        """k-NN (and, if linear_epochs, a linear probe) of frozen `features` against the un-augmented
        training images (gssl.contrastive.frozen_eval), for the scenarios without a classifier; `options`:
        their config section (knn_k, knn_temperature, linear_lr)."""
        from ..contrastive import frozen_eval

        return frozen_eval(
            features,
            self.bank_loader,
            self.test_loader,
            self.ctx.num_classes,
            device_type=self.ctx.device.type,
            precision=self.ctx.precision,
            knn_k=options.knn_k,
            knn_temperature=options.knn_temperature,
            linear_epochs=linear_epochs,
            linear_lr=options.linear_lr,
            seed=self.ctx.cfg.seed,
        )

    def evaluate_final(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        logits, labels = metrics.predict(
            self.eval_model, self.test_loader, self.ctx.device.type, precision=self.ctx.precision
        )
        return logits, labels, {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Wrapper(Scenario):
    """A scenario around another: every hook goes to the inner one unless the wrapper overrides it."""

    @classmethod
    def applies(cls, cfg: Config) -> bool:
        """Whether this wrapper goes around the run's scenario: its switch is on."""
        return SWITCHES[cls.trigger](cfg)

    def __init__(self, inner: Scenario):  # noqa: D107 - no Scenario.__init__: the inner one built the parts
        self.inner, self.ctx = inner, inner.ctx

    step_batch = property(lambda self: self.inner.step_batch)
    images_per_epoch = property(lambda self: self.inner.images_per_epoch)
    eval_model = property(lambda self: self.inner.eval_model)
    test_loader = property(lambda self: self.inner.test_loader)
    per_rank_draws = property(lambda self: self.inner.per_rank_draws)
    train_loader = property(lambda self: self.inner.train_loader)
    loss_terms = property(lambda self: self.inner.loss_terms)

    def loss(self, model, *args):
        return self.inner.loss(model, *args)

    def before_fit(self, run_dir):
        self.inner.before_fit(run_dir)

    def start_epoch(self, epoch):
        self.inner.start_epoch(epoch)

    def batches(self, epoch):
        return self.inner.batches(epoch)

    def prepare(self, x, y, generator, epoch, step):
        return self.inner.prepare(x, y, generator, epoch, step)

    def after_step(self):
        self.inner.after_step()

    def evaluate_epoch(self, eval_fn):
        return self.inner.evaluate_epoch(eval_fn)

    def evaluate_final(self):
        return self.inner.evaluate_final()

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)
