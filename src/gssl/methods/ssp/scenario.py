"""SSP pre-training (ssp.py) before another scenario: the backbone learns whole-image rotation on the
training images first; the supervised run then starts from those weights."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ... import rundir
from ...step import TrainingError
from ..base import Wrapper
from .ssp import pretrain_rotation

PRETRAIN_CHECKPOINT = "pretrain.pt"


class SSPPretraining(Wrapper):
    sections = ("pretrain",)
    trigger = "pretrain.epochs"

    def before_fit(self, run_dir: Path) -> None:
        ctx, cfg = self.ctx, self.ctx.cfg
        loader = ctx.loader(
            ctx.data.train.images, ctx.data.train.labels, cfg.optim.batch_size, cfg.seed + 1, sharded=False
        )  # every rank pre-trains alike
        history = pretrain_rotation(
            ctx.model.backbone,
            loader,
            epochs=cfg.pretrain.epochs,
            lr=cfg.pretrain.lr,
            weight_decay=cfg.optim.weight_decay,
            seed=cfg.seed,
            log=ctx.log,
            compile=ctx.compiled,
            precision=ctx.precision,
        )
        if ctx.compiled:  # the pre-training step's graphs are done with; the supervised step compiles afresh
            torch.compiler.reset()
        if not all(math.isfinite(row["loss"]) for row in history):
            raise TrainingError("SSP pre-training diverged (non-finite rotation loss); lower pretrain.lr")
        if ctx.dist.main:
            rundir.save_checkpoint(
                run_dir / rundir.CKPT_DIR / PRETRAIN_CHECKPOINT,
                {"backbone": ctx.model.backbone.state_dict(), "history": history},
            )
        if ctx.dist.enabled:  # the supervised run starts from rank 0's pre-trained weights on every rank
            for tensor in ctx.model.state_dict().values():
                torch.distributed.broadcast(tensor, 0)
        self.inner.before_fit(run_dir)

    def evaluate_final(self):
        logits, labels, extra = self.inner.evaluate_final()
        path = self.ctx.run_dir / rundir.CKPT_DIR / PRETRAIN_CHECKPOINT
        if path.is_file():
            history = rundir.load_checkpoint(path)["history"]
            extra = {**extra, "pretrain_rotation_acc": history[-1]["acc"] if history else None}
        return logits, labels, extra
