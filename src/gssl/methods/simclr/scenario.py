"""Contrastive pre-training with pretext regularisation (gssl.contrastive): V augmented views of every
image, NT-Xent plus the gated pretext term, optional batch fusion; judged by k-NN on the frozen
backbone every epoch and by a linear probe at the end."""

from __future__ import annotations

from ...build import backbone_options
from ...config import Config, ConfigError
from ...contrastive import SimCLR
from ...data.views import ViewAugment
from ...method import PretextSettings
from ..base import Batch, Context, Scenario, settings_on
from .fusion import BatchFusion


class SimCLRScenario(Scenario):
    sections = ("contrastive", "fusion")
    per_rank_draws = True  # each rank draws its own views
    has_classifier = False
    pretext_options = ("ssl.pretext_scale", "ssl.pretext_scale_learned")

    trigger = "contrastive.views"  # the setting that asks for this method in config files without `method`

    @staticmethod
    def check(cfg: Config) -> None:
        if not cfg.contrastive.on():
            raise ConfigError("method simclr needs contrastive.views >= 2 (views of every image)")
        others = settings_on(cfg, ("sla.transform", "adv.attack", "semi.labels_per_class", "pretrain.epochs"))
        if others:
            raise ConfigError(
                f"contrastive.views={cfg.contrastive.views} (SimCLR pre-training) does not combine "
                f"with {', '.join(others)}; set contrastive.views=0 or turn those off"
            )

    @staticmethod
    def check_images(cfg: Config, channels: int, height: int, width: int) -> None:
        patch = cfg.fusion.patch
        if cfg.fusion.on() and (height % patch or width % patch):
            raise ConfigError(
                f"fusion.patch={patch} must divide the image sides ({cfg.data.name}: {height}x{width}); "
                "pick a patch size that does"
            )

    @staticmethod
    def build_model(cfg: Config, num_classes: int, in_channels: int) -> SimCLR:
        c, f = cfg.contrastive, cfg.fusion
        fusion = (
            BatchFusion(
                in_channels, patch=f.patch, dim=f.dim, heads=f.heads, layers=f.layers, strength=f.strength
            )
            if f.enabled
            else None
        )
        return SimCLR(
            cfg.model.backbone,
            views=c.views,
            temperature=c.temperature,
            proj_dim=c.proj_dim,
            proj_hidden=c.proj_hidden,
            in_channels=in_channels,
            fusion=fusion,
            backbone_options=backbone_options(cfg),
            pretext=PretextSettings.from_config(cfg),
        )

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.view_augment = ViewAugment(
            ctx.data.mean, ctx.data.std, ctx.device, crop_scale=(ctx.cfg.contrastive.crop_min_scale, 1.0)
        )

    @property
    def drop_last(self) -> bool:  # under torchrun the views are gathered: every rank needs an equal share
        return self.ctx.dist.enabled

    @property
    def step_batch(self) -> int:
        return self.ctx.cfg.optim.batch_size * self.ctx.cfg.contrastive.views

    def prepare(self, x, y, generator, epoch, step):
        model, epochs, steps = self.ctx.model, self.ctx.cfg.optim.epochs, len(self.train_loader)
        if model.fusion is not None:  # batch fusion grows with training progress
            model.fusion.set_progress((epoch * steps + step) / max(1, epochs * steps - 1))
        views = self.view_augment.views(x, generator, self.ctx.cfg.contrastive.views).flatten(0, 1)
        return Batch(views, y, self.ctx.cls_loss, model.sample_params(views, generator))

    def _frozen_eval(self, linear_epochs: int) -> dict:
        return self.judge_frozen(
            self.features(self.ctx.model), self.probe_options(self.ctx.cfg), linear_epochs
        )

    def evaluate_epoch(self, eval_fn) -> dict:
        return {"test_acc": self._frozen_eval(0)["knn_acc"]}  # no classifier: k-NN on the frozen features

    def evaluate_final(self):
        c = self.ctx.cfg.contrastive  # judged by a linear probe on the frozen backbone (and k-NN)
        judged = self._frozen_eval(c.linear_epochs)
        final = (
            f"linear probe ({c.linear_epochs} epochs) on the frozen backbone"
            if c.linear_epochs
            else f"{c.knn_k}-NN"
        )
        return (
            judged["logits"],
            judged["labels"],
            {
                "knn_test_acc": judged["knn_acc"],
                "test_acc_protocol": f"{final}; per-epoch test_acc is {c.knn_k}-NN",
            },
        )
