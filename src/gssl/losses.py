"""Classification losses for the long-tailed protocol (LDAM-DRW, Cao et al. 2019), SPEC section 4.

All losses compute in float32 (safe under bf16 autocast), take their class weights as a buffer
that follows the module's device (the reference LDAM hard-codes torch.cuda.FloatTensor), and have
`set_weight(w | None)`: DRW switches from uniform to class-balanced weights at an epoch.
"""

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def _counts(class_counts) -> Tensor:
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.ndim != 1 or (counts <= 0).any():
        raise ValueError("class_counts must be a 1-D list of positive counts")
    return counts


def ldam_margins(class_counts: Sequence[int], max_m: float = 0.5) -> Tensor:
    """m_j proportional to n_j^(-1/4), scaled so the rarest class gets max_m."""
    m = _counts(class_counts) ** -0.25
    return (m * (max_m / m.max())).float()


def drw_weights(class_counts: Sequence[int], beta: float = 0.9999) -> Tensor:
    """Class-balanced weights (Cui et al. 2019): (1 - beta) / (1 - beta^n_j), normalised to sum to
    C. beta = 0 gives uniform weights (the reference's DRW before its switch epoch)."""
    counts = _counts(class_counts)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return (w / w.sum() * len(counts)).float()


class _Weighted(nn.Module):
    def __init__(self, weight: Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight).float())

    def set_weight(self, weight: Tensor | None) -> None:
        """Per-class weights (e.g. drw_weights) or None for uniform; follows the logits' device. A loss
        built with a weight keeps that tensor and has new values copied into it (None: ones), so a
        compiled step sees the same input before and after DRW switches on and does not recompile."""
        if self.weight is None:
            self.weight = None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        elif weight is None:
            self.weight.fill_(1.0)
        else:
            self.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))

    def _w(self, logits: Tensor) -> Tensor | None:
        # .to is a no-op when the weight already lives on the logits' device.
        return None if self.weight is None else self.weight.to(logits.device)


class CrossEntropyLoss(_Weighted):
    """Plain (optionally class-weighted, for DRW with CE) cross-entropy; weighted mean as PyTorch."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), target, weight=self._w(logits))


class LDAMLoss(_Weighted):
    """Label-distribution-aware margin loss: subtract m_y from the true-class logit, scale by s,
    cross-entropy. Expects cosine logits (a `cosine` head), as in the reference."""

    def __init__(self, class_counts, max_m: float = 0.5, s: float = 30.0, weight: Tensor | None = None):
        super().__init__(weight)
        self.register_buffer("margins", ldam_margins(class_counts, max_m))
        self.s = s

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        margin = torch.zeros_like(logits).scatter(1, target.unsqueeze(1), self.margins[target].unsqueeze(1))
        return F.cross_entropy(self.s * (logits - margin), target, weight=self._w(logits))


class FocalLoss(_Weighted):
    """Focal loss as in LDAM-DRW's code: (1 - p)^gamma * CE with p = exp(-CE), where CE is the
    (weighted) per-sample cross-entropy; plain mean over the batch. The G-SSL scripts use gamma=1."""

    def __init__(self, weight: Tensor | None = None, gamma: float = 1.0):
        super().__init__(weight)
        self.gamma = gamma

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        ce = F.cross_entropy(logits.float(), target, weight=self._w(logits), reduction="none")
        return ((1.0 - torch.exp(-ce)) ** self.gamma * ce).mean()


def build_loss(name: str, class_counts: Sequence[int] | None = None, **kw) -> nn.Module:
    """name: "ce" | "ldam" (needs class_counts; kw max_m, s) | "focal" (kw gamma). kw weight too; with
    class_counts and no weight, the weight starts as ones (uniform), ready for DRW's in-place switch."""
    if class_counts is not None and kw.get("weight") is None:
        kw["weight"] = torch.ones(len(class_counts))
    if name == "ce":
        return CrossEntropyLoss(**kw)
    if name == "ldam":
        if class_counts is None:
            raise ValueError("LDAM needs class_counts")
        return LDAMLoss(class_counts, **kw)
    if name == "focal":
        return FocalLoss(**kw)
    raise ValueError(f"unknown loss {name!r}; valid: 'ce', 'ldam', 'focal'")
