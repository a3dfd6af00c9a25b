"""FixMatch (Sohn et al., 2020) with the gated pretext loss (SPEC section 7).

Each step takes B labelled images and mu x B unlabelled ones; an unlabelled image enters twice, weakly
augmented (flip + crop, from the loader) and strongly (RandAugment + Cutout on top). The model's
confident predictions on the weak view (max softmax >= threshold) become hard pseudo-labels for the
strong view. The pretext transform is applied to all three views alike and the gated pretext loss is
averaged over all of them, in the same forward pass:

    L = L_cls(labelled) + lambda_u * mean(mask * CE(strong, pseudo)) + ratio x gated pretext + aux

The unlabelled images' true labels are never read by the loss; they only measure pseudo-label
accuracy. Evaluation uses an exponential moving average of the weights and buffers (gssl.ema).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...attacks import PixelSpace
from ...data.randaugment import RandAugment


def pseudo_labels(weak_logits: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """(hard pseudo-labels, float mask of the confident ones) from weak-view logits (no gradient)."""
    probs = torch.softmax(weak_logits.detach().float(), dim=1)
    conf, label = probs.max(1)
    return label, (conf >= threshold).float()


def fixmatch_loss(
    model,
    xl: Tensor,
    yl: Tensor,
    xu_weak: Tensor,
    xu_strong: Tensor,
    yu_true: Tensor,
    cls_loss,
    params: dict,
    threshold: float,
    lambda_u: float,
) -> tuple[Tensor, dict]:
    """One step's loss and stats; `params` are pretext parameters for the concatenated batch
    [labelled, weak, strong]. `yu_true` only feeds the pseudo-label accuracy statistic."""
    b, u = xl.shape[0], xu_weak.shape[0]
    logits, pretext_term, stats = model.train_forward(torch.cat([xl, xu_weak, xu_strong]), params)
    logits = logits.float()
    lx = cls_loss(logits[:b], yl)
    pseudo, mask = pseudo_labels(logits[b : b + u], threshold)
    lu = (F.cross_entropy(logits[b + u :], pseudo, reduction="none") * mask).mean()
    total = pretext_term.added_to(lx + lambda_u * lu, stats)  # the main loss: labelled + unlabelled
    stats.update(
        {
            "cls_loss": lx.detach(),
            "unlabeled_loss": lu.detach(),
            "loss": total.detach(),
            "correct": (logits[:b].argmax(1) == yl).sum(),
            "mask_rate": mask.mean(),
            # accuracy of the confident pseudo-labels (0 when none is confident)
            "pseudo_label_acc": ((pseudo == yu_true).float() * mask).sum() / mask.sum().clamp_min(1),
        }
    )
    return total, stats


class StrongAugment:
    """Weakly augmented, normalised batch -> RandAugment + Cutout in pixel space -> normalised again."""

    def __init__(self, mean, std, device, n: int = 2, cutout: float = 0.5):
        self.space, self.ra = PixelSpace(mean, std, device), RandAugment(n=n, cutout=cutout)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self.space.to_model(self.ra(self.space.to_pixels(x), generator))
