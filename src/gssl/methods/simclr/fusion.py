"""Adaptive batch fusion, a plug-in for contrastive pre-training (after Zhang, Shen and Liu 2023,
"From Pretext to Purpose: Batch-Adaptive Self-Supervised Learning").

The paper's pipeline, as its abstract and method overview describe it: partition the batch's images into
patches, reduce them to low-dimensional embeddings, let the samples of the batch communicate through an
embedding layer, restore the patches, and add the result to the batch with a strength that grows as
training goes on. Our reading, in torch (the paper gives no code we could check against):

    patch partition   x [B, C, H, W] -> tokens [B, P, C p^2]  (P = HW / p^2 non-overlapping p x p patches)
    reduce            linear C p^2 -> d
    embedding layer   per patch position, the B samples attend to one another (a pre-norm Transformer
                      encoder layer over the batch axis): this is where isolated samples exchange information
    restore           linear d -> C p^2, folded back into [B, C, H, W]
    fuse              x + alpha * restored,  alpha = strength * progress * gain

`progress` (0 -> 1 over training) is set by the training loop; `gain` is a learnable scalar (starting at 1),
so the network can also turn the fusion down. Samples communicate only within a group: the contrastive step
passes its V views as V groups, so a view never sees its own positive in the other view (that would make
the contrastive task trivial). Used only while training: evaluation embeds every image alone.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class BatchFusion(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        patch: int = 8,
        dim: int = 64,
        heads: int = 4,
        layers: int = 1,
        strength: float = 1.0,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"fusion dim {dim} must be divisible by heads {heads}")
        self.patch, self.strength, self.groups = patch, strength, 1
        self.reduce = nn.Linear(channels * patch * patch, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.embed = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.restore = nn.Linear(dim, channels * patch * patch)
        self.gain = nn.Parameter(torch.ones(()))
        self.register_buffer("progress", torch.zeros(()), persistent=False)

    def set_progress(self, fraction: float) -> None:
        """Where training is, 0 at the start and 1 at the end (a buffer, so a compiled step does not
        recompile)."""
        self.progress.fill_(min(max(fraction, 0.0), 1.0))

    def alpha(self) -> Tensor:
        return self.strength * self.progress * self.gain

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        p, g = self.patch, self.groups
        if H % p or W % p or B % g:
            raise ValueError(
                f"batch fusion: image {H}x{W} must be a multiple of the patch size {p}, and the batch {B} "
                f"of the number of groups {g}"
            )
        tokens = F.unfold(x, p, stride=p).transpose(1, 2)  # [B, P, C p^2]
        P = tokens.shape[1]
        z = self.reduce(tokens)  # [B, P, d]
        # sequences along the batch axis: one per (group, patch position), of length B / g
        z = z.view(g, B // g, P, -1).transpose(1, 2).reshape(g * P, B // g, -1)
        z = self.embed(z)
        z = z.view(g, P, B // g, -1).transpose(1, 2).reshape(B, P, -1)
        delta = F.fold(self.restore(z).transpose(1, 2), (H, W), p, stride=p)
        return x + self.alpha().to(x.dtype) * delta.to(x.dtype)
