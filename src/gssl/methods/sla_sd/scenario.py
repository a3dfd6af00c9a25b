"""SLA-SD, a Table 1 baseline (sla.py): every image under every transformation, a joint head, and a
single head distilled from the aggregated prediction; judged also by the aggregated inference."""

from __future__ import annotations

import dataclasses

from ... import metrics
from ...build import backbone_options
from ...config import Config, ConfigError, SSLConfig
from ...gating import NO_GATE
from ..base import Scenario
from .sla import SLASD


class SLASDScenario(Scenario):
    sections = ("loss", "sla")

    trigger = "sla.transform"  # the setting that asks for this method in config files without `method`

    @staticmethod
    def check(cfg: Config) -> None:
        if not cfg.sla.on():
            raise ConfigError("method sla-sd needs sla.transform=rotation or channel")
        if cfg.ssl.tasks:
            raise ConfigError(
                f"sla.transform={cfg.sla.transform} replaces the gated pretext tasks, but ssl.tasks="
                f"{cfg.ssl.tasks}; set ssl.tasks=[], or sla.transform=none"
            )
        # with no pretext term, no other ssl setting is read (the gate: none, or left at its default)
        default = SSLConfig()
        for key in (f.name for f in dataclasses.fields(SSLConfig) if f.name not in ("tasks", "gate")):
            value, default_value = getattr(cfg.ssl, key), getattr(default, key)
            if value != default_value:
                raise ConfigError(
                    f"ssl.{key}={str(value).lower()} is not read by method sla-sd (it has no gated pretext "
                    f"term); remove it (default {str(default_value).lower()})"
                )
        if cfg.ssl.gate not in (NO_GATE, default.gate):
            raise ConfigError(
                f"ssl.gate={cfg.ssl.gate}: method sla-sd has no pretext tasks to gate; set ssl.gate={NO_GATE}"
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
