"""The gated pretext term, the paper's idea as one component, and GatedSSL, the network that carries it
beside a classifier (SPEC section 1).

Training step, as the authors' code: transform the batch (one shared quadrant per sample), ONE
backbone forward on the transformed batch, classifier loss on it too, a per-sample cross-entropy
per pretext head, the gate weights the pretext losses:

    total = L_cls + ssl_ratio * sum_n G_n L_n + aux      (aux: the learned gate's own objective)

At test time (`forward`) the image is not transformed and only the classifier head is used.

The random draw (`sample_params`) is kept apart from the pure, compile-friendly part
(`loss_from_params`): the draw runs eagerly, the rest compiles as one graph.
"""

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .gating import build_gate, gate_options, pretext_on
from .models import build_backbone, build_head
from .pretext import build_pretext


class PretextTerm(NamedTuple):
    """The gated pretext term of one forward pass, handed to the loss that knows the main term.

    Most gates weigh the tasks on their own: `value` (ssl_ratio x the gated pretext loss + the gate's own
    term) is added to the main loss as it is. A gate that weighs each task against the main task (gcs,
    `needs_main_loss`) can only do so once the main loss exists: then `pretext` is the component whose
    gate does it, and `losses`, `head_losses`, `shared` are what it reads. `added_to` is the one call
    every carrier (GatedSSL, FixMatch's loss, SimCLR) makes."""

    value: Tensor
    pretext: "GatedPretext | None" = None
    losses: Tensor | None = None  # [T] batch-mean task losses through the shared feature
    head_losses: Tensor | None = None  # [T] the same through the detached feature (gradient to heads only)
    shared: tuple[Tensor, ...] = ()  # the parameters upstream of the feature, shared with the main task
    per_sample: Tensor | None = None  # [B, T] the task losses through the shared feature (None: no tasks)
    names: tuple[str, ...] = ()  # the columns of per_sample

    def added_to(self, main_loss: Tensor, stats: dict[str, Tensor]) -> Tensor:
        """main_loss + the pretext term: the step's total. A gate weighing against the main loss writes
        its weights (gate_<task>) and cosines (cos_<task>) into `stats`."""
        if self.pretext is None:
            return main_loss + self.value
        return main_loss + self.pretext.against_main(main_loss, self, stats)

    def weighted(self, total: Tensor) -> dict[str, Tensor]:
        """Each task's term of the step's `total`, for the gradient diagnostic (gssl.diagnostics).
        d total / d L_bn is the weight the total gives sample b's loss on task n (ssl_ratio x its gate
        weight / B, whatever the gate: every gate holds its weights constant for the backbone), so the
        sum over b of it times L_bn is task n's term, and puts on the backbone the gradient the task does."""
        if self.per_sample is None:
            return {}
        (weights,) = torch.autograd.grad(total, self.per_sample, retain_graph=True)
        return {name: (weights[:, i] * self.per_sample[:, i]).sum() for i, name in enumerate(self.names)}


class GatedPretext(nn.Module):
    """Pretext transform + one head per task + the gate: what any network (a classifier, SimCLR's
    encoder, FixMatch's) adds to train on the gated pretext loss from its own forward pass.

    `sample` draws the per-sample parameters (eager), `transform` applies them to the batch before the
    backbone, and `forward(feat, labels, shared)` returns the PretextTerm (ssl_ratio x the gated pretext
    loss + the gate's own term, or what a gate weighing against the main loss needs), with the
    statistics that say whether each head learns. `start_epoch` and `after_step` pass the scenario's
    hooks on to a gate with state of its own (dwa, gradnorm).

    `extra` names auxiliary losses computed elsewhere (SelfPatch's patch-level loss,
    gssl.methods.dino.selfpatch):
    the caller hands their per-sample values to `forward`, and the gate weighs them beside the tasks'
    (one more column each; `extra_classes` is each one's "number of classes", whose log is its chance
    level for the learned gate). They have no head here, and `tasks` may then be empty."""

    def __init__(
        self,
        tasks: Sequence[str],
        feat_dim: int,
        *,
        gate: str = "reference",
        head: str = "linear",
        ratio: float = 0.1,
        flip_axis: str = "H",
        gate_kw: dict | None = None,
        scale: float = 1.0,
        scale_learned: bool = False,
        extra: Sequence[str] = (),
        extra_classes: Sequence[int] = (),
    ):
        super().__init__()
        self.tasks, self.extra = list(tasks), list(extra)
        self.transformer = build_pretext(self.tasks, flip_axis) if self.tasks else None
        classes = self.transformer.num_classes if self.tasks else {}
        self.heads = nn.ModuleDict({task: build_head(head, feat_dim, classes[task]) for task in self.tasks})
        chance = [classes[task] for task in self.tasks] + list(extra_classes)
        gate_kw = {"num_classes": chance, **(gate_kw or {})}
        self.gate = build_gate(gate, feat_dim, len(self.tasks) + len(self.extra), **gate_kw)
        self.ratio = ratio
        self.scale = scale  # 1 = the reference's raw cosines; anything else is a labelled deviation
        # ssl.pretext_scale_learned: a temperature per head, learned as its log from log(scale)
        self.log_scale = (
            nn.Parameter(torch.full((len(self.tasks),), math.log(scale))) if scale_learned else None
        )

    @property
    def names(self) -> list[str]:
        """What the gate weighs, in its order: the tasks, then the extra losses."""
        return self.tasks + self.extra

    def sample(self, x: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        return self.transformer.sample(x, generator) if self.tasks else {}

    def transform(self, x: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.transformer.apply(x, params) if self.tasks else (x, {})

    def forward(
        self,
        feat: Tensor,
        labels: dict[str, Tensor],
        shared: Sequence[Tensor] = (),
        extra_losses: dict[str, Tensor] | None = None,
    ) -> tuple[PretextTerm, dict[str, Tensor]]:
        """`shared`: the parameters upstream of `feat` (read only by a gate that needs the main loss);
        `extra_losses`: a per-sample [B] loss for each of `extra`."""
        head_logits = self.head_logits(feat)
        columns = [F.cross_entropy(head_logits[task], labels[task], reduction="none") for task in self.tasks]
        columns += [extra_losses[name].float() for name in self.extra]
        losses = torch.stack(columns, dim=1)
        stats = self.head_stats(head_logits, labels, losses)
        if self.gate.needs_main_loss:  # its weights come with the main loss: against_main
            return self.term_for_main(feat, labels, losses, shared), stats
        gated = self.gate(feat, losses)
        stats["aux"] = gated.aux_loss.detach()
        for i, name in enumerate(self.names):
            stats[f"gate_{name}"] = gated.weights[i]
        value = self.ratio * gated.pretext_loss + gated.aux_loss
        return PretextTerm(value, per_sample=losses, names=tuple(self.names)), stats

    def head_logits(self, feat: Tensor) -> dict[str, Tensor]:
        """Each head's logits times its scale: 1 by default (raw cosines when the heads are cosine, SPEC
        section 4), ssl.pretext_scale, or the head's learned scale (ssl.pretext_scale_learned)."""
        if self.log_scale is None:
            return {task: self.heads[task](feat).float() * self.scale for task in self.tasks}
        scales = self.log_scale.float().exp()
        return {task: self.heads[task](feat).float() * scales[i] for i, task in enumerate(self.tasks)}

    def head_stats(
        self, head_logits: dict[str, Tensor], labels: dict[str, Tensor], losses: Tensor
    ) -> dict[str, Tensor]:
        """Each task's loss and its head's training accuracy (percent: has the head learned anything yet?);
        "aux", the gate's own objective, is 0 until the gate sets it."""
        stats: dict[str, Tensor] = {"aux": losses.new_zeros(())}
        per_task = losses.detach().mean(0)
        for i, name in enumerate(self.names):
            stats[f"ssl_{name}"] = per_task[i]
        if self.log_scale is not None:  # where each head's learned temperature went
            for i, task in enumerate(self.tasks):
                stats[f"pretext_scale_{task}"] = self.log_scale[i].detach().float().exp()
        for task in self.tasks:
            stats[f"pretext_acc_{task}"] = (
                100.0 * (head_logits[task].argmax(1) == labels[task]).float().mean()
            )
        return stats

    def term_for_main(
        self, feat: Tensor, labels: dict[str, Tensor], losses: Tensor, shared: Sequence[Tensor]
    ) -> PretextTerm:
        """What a gate weighing against the main loss reads: the batch-mean losses, the same through the
        detached feature (one more pass of the small heads), the shared parameters. An extra loss has no
        head of its own: its "head loss" is itself, detached (a task the gate switches off is off)."""
        detached_logits = self.head_logits(feat.detach())
        head_losses = [F.cross_entropy(detached_logits[task], labels[task]) for task in self.tasks]
        head_losses = torch.stack(
            head_losses + [losses[:, i].mean().detach() for i in range(len(self.tasks), losses.shape[1])]
        )
        value = self.ratio * losses.mean(0).sum()  # what against_main returns, whatever the weights
        shared = tuple(p for p in shared if p.requires_grad)
        return PretextTerm(value, self, losses.mean(0), head_losses, shared, losses, tuple(self.names))

    def against_main(self, main_loss: Tensor, term: PretextTerm, stats: dict[str, Tensor]) -> Tensor:
        """ssl_ratio x the pretext loss a `needs_main_loss` gate makes of the main loss (PretextTerm)."""
        gated, cosines = self.gate.combine(main_loss, term.losses, term.head_losses, term.shared)
        for i, name in enumerate(self.names):
            stats[f"gate_{name}"] = gated.weights[i].detach()
            stats[f"cos_{name}"] = cosines[i].detach()
        stats["aux"] = gated.aux_loss.detach()
        return self.ratio * gated.pretext_loss + gated.aux_loss

    def start_epoch(self, epoch: int) -> None:
        """Before each epoch (the scenario calls it): a gate with per-epoch state (dwa) rolls it here."""
        hook = getattr(self.gate, "start_epoch", None)
        if hook is not None:
            hook(epoch)

    def after_step(self) -> None:
        """After each optimiser step: a gate with per-step state (dwa's sums, gradnorm's renormalisation)."""
        hook = getattr(self.gate, "after_step", None)
        if hook is not None:
            hook()


class PretextSettings(NamedTuple):
    """What the gated pretext term is made of: `from_config` reads it from a config's ssl section and
    model.head, the one place every network carrying the term (GatedSSL, SimCLR, DINO) gets it from;
    `build` makes the component, or None when there is nothing to gate (gating.pretext_on)."""

    tasks: tuple[str, ...] = ()
    gate: str = "reference"
    head: str = "linear"
    ratio: float = 0.1
    flip_axis: str = "H"
    gate_kw: dict | None = None  # the gate's own settings (gating.gate_options)
    scale: float = 1.0
    scale_learned: bool = False

    @classmethod
    def from_config(cls, cfg) -> "PretextSettings":
        ssl = cfg.ssl
        return cls(
            tuple(ssl.tasks),
            ssl.gate,
            cfg.model.head,
            ssl.ratio,
            ssl.flip_axis,
            gate_options(ssl),
            ssl.pretext_scale,
            ssl.pretext_scale_learned,
        )

    def build(
        self, feat_dim: int, extra: Sequence[str] = (), extra_classes: Sequence[int] = ()
    ) -> GatedPretext | None:
        if not pretext_on(self.tasks, self.gate, extra):
            return None
        keywords = self._asdict()  # the fields after `tasks` are GatedPretext's keywords
        return GatedPretext(
            keywords.pop("tasks"), feat_dim, **keywords, extra=extra, extra_classes=extra_classes
        )


def rename_legacy_keys(renames: dict[str, str]):
    """A load_state_dict pre-hook: checkpoints written before the pretext term became a component name
    its parts heads.* and gate.* (and SimCLR's projection classifier.*); read them under the new names."""

    def hook(module, state_dict, prefix, *_):
        for key in list(state_dict):
            for old, new in renames.items():
                if key.startswith(prefix + old):
                    state_dict[prefix + new + key[len(prefix + old) :]] = state_dict.pop(key)

    return hook


LEGACY_PRETEXT_KEYS = {"heads.": "pretext.heads.", "gate.": "pretext.gate."}


class GatedSSL(nn.Module):
    """Backbone + classifier head, and the gated pretext term when there are tasks.

    `pretext` (PretextSettings.from_config, as the scenarios build it) replaces the keywords from `tasks`
    to `pretext_scale_learned`, kept for building one by hand (tests, notebooks, benchmarks).
    `clean_class_loss` (ssl.clean_class_loss, a deviation): the class loss on a second forward pass of the
    untransformed batch, the pretext losses on the transformed one (the reference: both on the latter)."""

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        *,
        tasks: Sequence[str] = (),
        gate: str = "reference",
        head: str = "linear",
        ssl_ratio: float = 0.1,
        flip_axis: str = "H",
        in_channels: int = 3,
        gate_kw: dict | None = None,
        pretext_scale: float = 1.0,
        pretext_scale_learned: bool = False,
        clean_class_loss: bool = False,
        backbone_options: dict | None = None,
        pretext: PretextSettings | None = None,
    ):
        super().__init__()
        self.backbone = build_backbone(backbone, in_channels, backbone_options)
        self.classifier = build_head(head, self.backbone.feat_dim, num_classes)
        if pretext is None:
            pretext = PretextSettings(
                tuple(tasks), gate, head, ssl_ratio, flip_axis, gate_kw, pretext_scale, pretext_scale_learned
            )
        self.pretext = pretext.build(self.backbone.feat_dim)
        self.clean_class_loss = clean_class_loss
        self.register_load_state_dict_pre_hook(rename_legacy_keys(LEGACY_PRETEXT_KEYS))

    @property
    def tasks(self) -> list[str]:
        return [] if self.pretext is None else self.pretext.tasks

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (cosines for a cosine head) of the untransformed image."""
        return self.classifier(self.backbone(x))

    def sample_params(self, x: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """The random part of a training step: pretext parameters for this batch ({} if none)."""
        return {} if self.pretext is None else self.pretext.sample(x, generator)

    def loss_from_params(
        self, x: Tensor, y: Tensor, cls_loss: nn.Module, params: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Pure part of the training step. Returns (total loss, detached stats tensors)."""
        logits, term, stats = self.class_and_pretext(x, params)
        loss_cls = cls_loss(logits, y)
        total = term.added_to(loss_cls, stats)
        stats.update(
            {"cls_loss": loss_cls.detach(), "correct": (logits.argmax(1) == y).sum(), "loss": total.detach()}
        )
        return total, stats

    def loss_terms(
        self, x: Tensor, y: Tensor, cls_loss: nn.Module, params: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """The step's loss as the terms the gradient diagnostic compares (gssl.diagnostics): the class loss
        ("cls"), then each pretext task as the total weighs it (ssl_ratio x gate weight x task loss)."""
        logits, term, _ = self.class_and_pretext(x, params)
        loss_cls = cls_loss(logits, y)
        return {"cls": loss_cls, **term.weighted(term.added_to(loss_cls, {}))}

    def class_and_pretext(
        self, x: Tensor, params: dict[str, Tensor]
    ) -> tuple[Tensor, PretextTerm, dict[str, Tensor]]:
        """(class logits, the pretext term, stats): one forward of the transformed batch, and with
        clean_class_loss the class logits from a second one of the clean batch (last, so that batch norm's
        running statistics end on clean images, the ones evaluated)."""
        logits, term, stats = self.train_forward(x, params)
        if self.clean_class_loss:
            logits = self(x)
        return logits, term, stats

    def training_loss(
        self, x: Tensor, y: Tensor, cls_loss: nn.Module, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Draw and step in one call (tests, notebooks); the engine keeps the two apart."""
        return self.loss_from_params(x, y, cls_loss, self.sample_params(x, generator))

    def train_forward(
        self, x: Tensor, params: dict[str, Tensor]
    ) -> tuple[Tensor, PretextTerm, dict[str, Tensor]]:
        """The transformed batch through the backbone once: (class logits, the pretext term to add to the
        main loss, stats). FixMatch calls this on its labelled, weak and strong views at once."""
        return pretext_forward(self.backbone, self.classifier, self.pretext, x, params)


def pretext_forward(
    backbone: nn.Module,
    head: nn.Module,
    pretext: GatedPretext | None,
    x: Tensor,
    params: dict[str, Tensor],
    fusion: nn.Module | None = None,
) -> tuple[Tensor, PretextTerm, dict[str, Tensor]]:
    """One backbone pass over the (pretext-transformed, then fused) batch: (head output, the pretext term,
    stats). The shared forward of every network that carries a GatedPretext; the backbone's (and the
    fusion's) parameters are the ones its tasks share with the main task."""
    labels = {}
    if pretext is not None:
        x, labels = pretext.transform(x, params)
    if fusion is not None:
        x = fusion(x)
    feat = backbone(x)
    out = head(feat)
    if pretext is None:
        ssl_total = out.new_zeros((), dtype=torch.float32)
        return out, PretextTerm(ssl_total), {"aux": ssl_total.detach()}
    shared = ()
    if pretext.gate.needs_main_loss:
        shared = (*backbone.parameters(), *(fusion.parameters() if fusion is not None else ()))
    term, stats = pretext(feat, labels, shared)
    return out, term, stats
