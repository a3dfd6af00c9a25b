"""Heads on the pooled feature: one for the classifier and one per pretext task.

`linear` is nn.Linear with Kaiming-normal weights (the reference applies its init to every Linear).
`cosine` is LDAM-DRW's NormedLinear: cosine between the normalised feature and normalised class
weights, no bias. Its output lies in [-1, 1]; LDAM scales it by s = 30, pretext CEs use it raw
(SPEC section 4). The cosine is computed in float32 even under autocast: bf16 cosines times s = 30
would quantise logits to about 0.1.

The init matters although the forward pass normalises the weight away: SGD's step on a class
direction scales as 1/||w||^2, so the reference's unit-norm class vectors start about 21x faster than
raw uniform(-1, 1) ones (norm about 4.6 for 64 inputs), and weight decay acts on that norm too.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..step import float32_region


class CosineLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # LDAM-DRW's recipe on its [in, out] layout: uniform(-1, 1), then every class vector (column)
        # scaled to norm 1 by renorm(1e-5) * 1e5. Transposed to nn.Linear's [out, in]: the same values
        # as the reference's layer drawn from the same RNG state.
        w = torch.empty(in_features, out_features).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
        self.weight = nn.Parameter(w.t().contiguous())

    def forward(self, x: Tensor) -> Tensor:
        with float32_region(x.device.type):
            return F.linear(F.normalize(x.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def build_head(kind: str, in_f: int, out_f: int) -> nn.Module:
    if kind == "linear":
        head = nn.Linear(in_f, out_f)
        nn.init.kaiming_normal_(head.weight)
        return head
    if kind == "cosine":
        return CosineLinear(in_f, out_f)
    raise ValueError(f"unknown head {kind!r}; valid: 'linear', 'cosine'")
