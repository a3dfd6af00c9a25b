"""SelfPatch (Yun, Lee, Kim & Shin, CVPR 2022, "Patch-level Representation Learning for Self-supervised
Vision Transformers"): every patch treats its most similar neighbouring patches as positives.

Followed: the paper's section 3 (positive matching, the aggregation module, the patch-level loss added to
DINO's with weight lambda = 0.1) and the authors' code (alinlab/SelfPatch), whose choices the paper
leaves open:

- Positive matching (`SelfPatchHead.forward(loc=True)` in `selfpatch_vision_transformer.py`): the
  neighbourhood of patch i is the 3 x 3 window around it without i itself (`get_local_index`, k_size 3:
  8 neighbours); the positives are the top-k (k_num 4) by cosine similarity of the TEACHER's final patch
  tokens. The code takes the window modulo the grid, so a border patch's "neighbours" wrap around to the
  far side of the image (`border="wrap"`, the default here, for fidelity). `border="mask"` keeps only the
  patches really adjacent (5 at an edge, 3 at a corner): a corner's 4th positive slot is then empty and
  masked out of the aggregation.
- Aggregation (`SelfPatchHead`, `LayerScale_Block_CA`, `Class_Attention`): two CaiT class-attention
  blocks whose learned query token attends to itself and the tokens it summarises, then a LayerNorm. The
  SAME module makes (a) the image-level representation, over all patch tokens (the network has no
  [CLS] token of its own in the code; DINO's loss reads this one), and (b) in the teacher, the summary
  y_(i) of patch i's positives. The student's own patch tokens go through its final LayerNorm only.
- Loss (`DINOLoss.forward` in `main_selfpatch.py`): for every view (global and local) and every patch i,
  the cross-entropy between the teacher's summary of i's positives through the patch head, centred and
  sharpened like DINO's (a centre of its own), and the student's token i through its patch head
  (temperature 0.1); averaged over patches and views, added as lambda x that mean.

Only the teacher summarises positives, so the aggregation module learns through the image-level path
(a) and the teacher's copy follows it by EMA, as in the code.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ...models.vit import init_vit_weights


def neighbour_index(rows: int, cols: int, border: str = "wrap", device=None) -> tuple[Tensor, Tensor]:
    """For each patch of a rows x cols grid (row-major), its 8 neighbours in the 3 x 3 window, row by row:
    (index [P, 8] of the neighbour, valid [P, 8]). "wrap": taken modulo the grid (the authors' code), all
    valid; "mask": a neighbour off the grid is invalid (its index points at the patch itself). Built on
    `device` from aranges: the teacher asks for it every step, and a host-made index would be a copy
    (a synchronisation) on CUDA each time."""
    if border not in ("wrap", "mask"):
        raise ValueError(f"border must be 'wrap' or 'mask', got {border!r}")
    window = torch.arange(9, device=device)
    window = torch.cat([window[:4], window[5:]])  # the 3 x 3 window less its centre, row by row
    dr, dc = (window // 3 - 1)[None], (window % 3 - 1)[None]
    row = torch.arange(rows, device=device).repeat_interleave(cols)[:, None]
    col = torch.arange(cols, device=device).repeat(rows)[:, None]
    r, c = row + dr, col + dc
    if border == "wrap":
        return (r % rows) * cols + c % cols, torch.ones(rows * cols, 8, dtype=torch.bool, device=device)
    valid = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
    return torch.where(valid, r * cols + c, row * cols + col), valid


def select_positives(tokens: Tensor, index: Tensor, valid: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top-k neighbours of every patch by cosine similarity of `tokens` [B, P, D]: (their patch
    indices [B, P, k], whether each is a real neighbour [B, P, k]); an invalid neighbour ranks last."""
    unit = F.normalize(tokens.float(), dim=-1)
    neighbours = unit[:, index]  # [B, P, 8, D]
    similarity = (neighbours * unit[:, :, None]).sum(-1).masked_fill(~valid, float("-inf"))
    top = similarity.topk(k, dim=-1).indices  # [B, P, k]
    positives = index.expand(len(tokens), -1, -1).gather(2, top)
    return positives, valid.expand(len(tokens), -1, -1).gather(2, top)


def gather_patches(tokens: Tensor, positives: Tensor) -> Tensor:
    """tokens [B, P, D], positives [B, P, k] -> the positives' tokens [B, P, k, D]."""
    batch, patches, k = positives.shape
    flat = positives.reshape(batch, patches * k, 1).expand(-1, -1, tokens.shape[-1])
    return tokens.gather(1, flat).view(batch, patches, k, -1)


class ClassAttentionBlock(nn.Module):
    """CaiT's class-attention block (the code's LayerScale_Block_CA, whose layer scale it leaves out):
    the query token attends to [itself, tokens] (masked tokens skipped), then an MLP on the query."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, query: Tensor, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """query [M, 1, D], tokens [M, L, D], mask [M, L] (True: attend) -> the new query [M, 1, D]."""
        joint = self.norm1(torch.cat([query, tokens], dim=1))
        m, length, width = joint.shape

        def heads(x: Tensor) -> Tensor:
            return x.view(m, -1, self.heads, width // self.heads).transpose(1, 2)

        attend = None
        if mask is not None:  # the query itself is always attended to: no row is empty
            attend = torch.cat([mask.new_ones(m, 1), mask], dim=1)[:, None, None, :]
        out = F.scaled_dot_product_attention(
            heads(self.q(joint[:, :1])), heads(self.k(joint)), heads(self.v(joint)), attn_mask=attend
        )
        query = query + self.proj(out.transpose(1, 2).reshape(m, 1, width))
        return query + self.mlp(self.norm2(query))


class Aggregation(nn.Module):
    """The aggregation module: a learned query token through `blocks` class-attention blocks, then a
    LayerNorm (`norm`, which the student's own patch tokens also go through before the patch head)."""

    def __init__(self, width: int, heads: int, blocks: int = 2):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.ModuleList(ClassAttentionBlock(width, heads) for _ in range(blocks))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.apply(init_vit_weights)
        nn.init.trunc_normal_(self.query, std=0.02)

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """tokens [M, L, D] (mask [M, L]: which to use) -> their summary [M, D]."""
        query = self.query.expand(len(tokens), -1, -1)
        for block in self.blocks:
            query = block(query, tokens, mask)
        return self.norm(query[:, 0])

    def summarise_positives(self, tokens: Tensor, positives: Tensor, valid: Tensor) -> Tensor:
        """y_(i) for every patch: tokens [B, P, D], positives and valid [B, P, k] -> [B, P, D]."""
        batch, patches, k = positives.shape
        neighbours = gather_patches(tokens, positives).reshape(batch * patches, k, -1)
        return self(neighbours, valid.reshape(batch * patches, k)).view(batch, patches, -1)


def selfpatch_loss(student_logits: Tensor, teacher_probs: Tensor, student_temp: float = 0.1) -> Tensor:
    """The patch-level loss of each view of each image [V, N]: student_logits and teacher_probs
    [V, N, P, K] (V views of N images, P patches); the cross-entropy H(teacher, softmax(student / T))
    averaged over the patches. Views of another size (the local crops) come in a call of their own."""
    log_p = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    return -(teacher_probs * log_p).sum(-1).mean(-1)
