"""SLA-SD, a Table 1 baseline (sla.py): every image under every transformation, a joint head, and a
single head distilled from the aggregated prediction; judged also by the aggregated inference."""

from __future__ import annotations

from ... import metrics
from ...build import backbone_options
from ...config import Config, ConfigError
from ..base import Scenario
from .sla import SLASD


class SLASDScenario(Scenario):
    sections = ("loss", "sla")

    trigger = "sla.transform"  # the setting that asks for this method in config files without `method`

    @staticmethod
    def check(cfg: Config) -> None:
        if not cfg.sla.on():
            raise ConfigError("method sla-sd needs sla.transform=rotation or channel")
        if cfg.ssl.tasks and cfg.ssl.gate != "none":
            raise ConfigError(
                f"sla.transform={cfg.sla.transform} replaces the gated pretext tasks, but ssl.tasks="
                f"{cfg.ssl.tasks}; set ssl.tasks=[] (or ssl.gate=none), or sla.transform=none"
            )

    @staticmethod
    def check_images(cfg: Config, channels: int, height: int, width: int) -> None:
        if cfg.sla.transform == "rotation" and height != width:
            raise ConfigError(
                f"sla.transform=rotation needs square images, but {cfg.data.name} images are "
                f"{height}x{width}; use sla.transform=channel or none"
            )
        if cfg.sla.transform == "channel" and channels != 3:
            raise ConfigError(
                f"sla.transform=channel needs 3-channel images, but {cfg.data.name} has {channels}; "
                "set data.to_rgb=true or use sla.transform=rotation"
            )

    @staticmethod
    def build_model(cfg: Config, num_classes: int, in_channels: int) -> SLASD:
        return SLASD(
            cfg.model.backbone,
            num_classes,
            transform=cfg.sla.transform,
            head=cfg.model.head,
            in_channels=in_channels,
            temperature=cfg.sla.temperature,
            joint_scale=cfg.loss.scale,
            backbone_options=backbone_options(cfg),
        )

    def evaluate_final(self):
        logits, labels, extra = super().evaluate_final()
        model = self.ctx.model  # the aggregated inference: M forward passes, beside the single head
        aggregated, _ = metrics.predict(
            model,
            self.test_loader,
            self.ctx.device.type,
            precision=self.ctx.precision,
            fn=model.aggregated_logits,
        )
        return logits, labels, {**extra, "aggregated_test_acc": metrics.top1(aggregated, labels)}
