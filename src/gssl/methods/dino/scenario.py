"""DINO self-distillation on a ViT, with SelfPatch's patch-level loss and the gated pretext term
(dino.py, selfpatch.py): multi-crop views drawn on the device, the teacher's targets in `prepare`,
the EMA teacher after each step; judged by k-NN on the teacher's frozen image representation each epoch
and by a linear probe (and k-NN) of it and of its averaged patch tokens at the end."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from ...build import backbone_options
from ...config import Config, ConfigError
from ...data.views import ViewAugment
from ...method import PretextSettings
from ...metrics import top1
from ...step import autocast
from ..base import SWITCHES, Context, Scenario, settings_on
from .dino import DINO, PatchFeatures, teacher_momentum, teacher_temperature


class DINOBatch(NamedTuple):
    """What `prepare` hands `loss` (DINO.loss_from_params's arguments)."""

    global_views: torch.Tensor  # [2N], pretext-transformed as the teacher saw them
    local_views: torch.Tensor | None  # [L N], or None without local crops
    targets: dict[str, torch.Tensor]  # the teacher's centred, sharpened targets
    labels: dict[str, torch.Tensor]  # the pretext labels ({} without tasks)
    last_layer_grad: torch.Tensor  # 0 while the heads' last layers are frozen, else 1


class DINOScenario(Scenario):
    sections = ("dino", "selfpatch")
    per_rank_draws = True  # each rank draws its own views
    has_classifier = False
    pretext_options = ("ssl.pretext_scale", "ssl.pretext_scale_learned")

    @staticmethod
    def check(cfg: Config) -> None:
        if cfg.model.backbone != "vit":
            raise ConfigError(
                f"method dino needs model.backbone=vit (patch tokens), got {cfg.model.backbone}"
            )
        if cfg.dino.local_crops and cfg.dino.local_size % cfg.vit.patch:
            raise ConfigError(
                f"dino.local_size={cfg.dino.local_size} must be a multiple of vit.patch={cfg.vit.patch}"
            )
        others = settings_on(cfg, SWITCHES)
        if others:
            raise ConfigError(f"method dino does not combine with {', '.join(others)}; turn those off")

    @staticmethod
    def build_model(cfg: Config, num_classes: int, in_channels: int) -> DINO:
        options = {**dataclasses.asdict(cfg.dino), "backbone_options": backbone_options(cfg)}
        selfpatch = dataclasses.asdict(cfg.selfpatch) if cfg.selfpatch.enabled else None
        return DINO(
            cfg.model.backbone,
            options=options,
            in_channels=in_channels,
            selfpatch=selfpatch,
            pretext=PretextSettings.from_config(cfg),
        )

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        d, data = ctx.cfg.dino, ctx.data
        self.global_views = ViewAugment(
            data.mean, data.std, ctx.device, crop_scale=tuple(d.global_crop_scale)
        )
        self.local_views = ViewAugment(data.mean, data.std, ctx.device, crop_scale=tuple(d.local_crop_scale))
        self.step_in_run = 0

    @property
    def step_batch(self) -> int:
        return 2 * self.ctx.cfg.optim.batch_size  # the global views

    def prepare(self, x, y, generator, epoch, step):
        cfg, model = self.ctx.cfg, self.ctx.model
        d, steps = cfg.dino, len(self.train_loader)
        self.step_in_run = epoch * steps + step
        global_views = self.global_views.views(x, generator, 2).flatten(0, 1)
        local_views = None
        if d.local_crops:
            local_views = self.local_views.views(x, generator, d.local_crops, d.local_size).flatten(0, 1)
        labels = {}
        if model.pretext is not None:  # the teacher sees the transformed views too: its targets stay aligned
            global_views, labels = model.pretext.transform(
                global_views, model.sample_params(global_views, generator)
            )
        warmup = int(round(d.warmup_teacher_temp_epochs * cfg.optim.epochs / cfg.optim.base_epochs))
        temperature = teacher_temperature(epoch, d.warmup_teacher_temp, d.teacher_temp, warmup)
        with autocast(self.ctx.device.type, self.ctx.precision):
            targets = model.teacher_targets(global_views, local_views, temperature)
        # full, not tensor: a Python value made a tensor is a host copy, a CUDA sync every step
        last_layer_grad = torch.full((), float(epoch >= d.freeze_last_layer), device=x.device)
        return DINOBatch(global_views, local_views, targets, labels, last_layer_grad)

    def after_step(self) -> None:
        super().after_step()  # the gate's step state first
        model, cfg = self.ctx.model, self.ctx.cfg
        total = cfg.optim.epochs * len(self.train_loader)
        model.teacher.decay = teacher_momentum(self.step_in_run, total, cfg.dino.momentum_teacher)
        model.teacher.update(model.student)

    @staticmethod
    def features(model: DINO) -> torch.nn.Module:
        return model.teacher.module  # DINO judges its teacher

    @staticmethod
    def probe_options(cfg: Config):
        return cfg.dino

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.features(self.ctx.model)

    def _frozen_eval(self, features: torch.nn.Module, linear_epochs: int) -> dict:
        return self.judge_frozen(features, self.probe_options(self.ctx.cfg), linear_epochs)

    def evaluate_epoch(self, eval_fn) -> dict:
        return {"test_acc": self._frozen_eval(self.eval_model, 0)["knn_acc"]}

    def evaluate_final(self):
        d = self.ctx.cfg.dino
        image = self._frozen_eval(self.eval_model, d.linear_epochs)
        patches = self._frozen_eval(PatchFeatures(self.eval_model), d.linear_epochs)
        judged = f"linear probe ({d.linear_epochs} epochs)" if d.linear_epochs else f"{d.knn_k}-NN"
        extra = {
            "knn_test_acc": image["knn_acc"],
            "patch_knn_test_acc": patches["knn_acc"],
            "test_acc_protocol": f"{judged} on the teacher's frozen image representation; per-epoch "
            f"test_acc is {d.knn_k}-NN; patch_*: the same on its averaged patch tokens",
        }
        if d.linear_epochs:
            extra["patch_linear_test_acc"] = top1(patches["linear_logits"], patches["labels"])
        return image["logits"], image["labels"], extra
