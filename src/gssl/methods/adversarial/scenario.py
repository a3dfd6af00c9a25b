"""Adversarial training (SPEC section 6) around a scenario whose batches are `Batch`es: the
step sees the attacked batch (the attack itself runs eagerly), and the run ends with robust accuracy."""

from __future__ import annotations

from ... import attacks
from ...config import Config, ConfigError
from ...step import autocast
from ..base import Batch, Wrapper, settings_on


def attack_of(cfg: Config, steps: int, kind: str | None = None) -> attacks.Attack:
    """The training attack, or (kind="pgd") the final robust evaluation with its own step size."""
    adv = cfg.adv
    step = adv.eval_step_size if kind == "pgd" else adv.step_size
    return attacks.Attack(kind or adv.attack, adv.eps, step, steps, adv.random_start)


class Adversarial(Wrapper):
    sections = ("adv",)
    trigger = "adv.attack"

    @staticmethod
    def check(cfg: Config) -> None:
        if settings_on(cfg, ("semi.labels_per_class",)):
            raise ConfigError(
                "adv.attack does not combine with FixMatch (semi.labels_per_class); "
                "set adv.attack=none or semi.labels_per_class=null"
            )

    def __init__(self, inner):
        super().__init__(inner)
        self.space = attacks.PixelSpace(self.ctx.data.mean, self.ctx.data.std, self.ctx.device)
        self.attack = attack_of(self.ctx.cfg, self.ctx.cfg.adv.steps)

    def prepare(self, x, y, generator, epoch, step):
        batch = self.inner.prepare(x, y, generator, epoch, step)
        if not isinstance(batch, Batch):
            raise TypeError(
                f"adversarial training attacks a Batch (x, y, cls_loss, params), not {type(batch)}"
            )
        model, cfg = self.ctx.model, self.ctx.cfg
        objective = (
            attacks.training_objective(model, batch.cls_loss, batch.params)
            if cfg.adv.objective == "pretext"
            else attacks.classification_objective(model, batch.cls_loss)
        )
        with attacks.attack_mode(model, cfg.adv.bn_train), autocast(self.ctx.device.type, self.ctx.precision):
            attacked = attacks.perturb(objective, batch.x, batch.y, self.space, self.attack, generator)
        return batch._replace(x=attacked)

    def evaluate_final(self):
        logits, labels, extra = self.inner.evaluate_final()
        adv = self.ctx.cfg.adv
        if adv.eval_steps:  # robust accuracy, PGD with eval_steps steps, eval mode
            _, robust = attacks.robust_accuracy(
                self.ctx.model,
                self.test_loader,
                self.space,
                attack_of(self.ctx.cfg, adv.eval_steps, "pgd"),
                precision=self.ctx.precision,
                seed=self.ctx.cfg.seed,
            )
            extra = {
                **extra,
                "robust_test_acc": robust,
                "robust_attack": f"pgd-{adv.eval_steps} eps {adv.eps:.5g} step {adv.eval_step_size:.5g}",
            }
        return logits, labels, extra
