"""Supervised (and long-tailed) training: the classifier and the gated pretext term on one forward pass."""

from __future__ import annotations

from ...build import backbone_options
from ...config import Config
from ...method import GatedSSL, PretextSettings
from ..base import Scenario


class Supervised(Scenario):
    pretext_options = ("ssl.pretext_scale", "ssl.pretext_scale_learned", "ssl.clean_class_loss")

    @staticmethod
    def loss_terms(model: GatedSSL, *args):
        """The class loss and each weighted pretext term of the step (gssl.diagnostics)."""
        return model.loss_terms(*args)

    @staticmethod
    def build_model(cfg: Config, num_classes: int, in_channels: int) -> GatedSSL:
        return GatedSSL(
            cfg.model.backbone,
            num_classes,
            head=cfg.model.head,
            in_channels=in_channels,
            pretext=PretextSettings.from_config(cfg),
            clean_class_loss=cfg.ssl.clean_class_loss,
            backbone_options=backbone_options(cfg),
        )
