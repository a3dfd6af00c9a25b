"""A Vision Transformer (Dosovitskiy et al. 2021) sized for CIFAR and Tiny-ImageNet, as DINO's
`vision_transformer.py` (facebookresearch/dino) builds it: a strided-convolution patch embedding, a
class token, learned positional embeddings, pre-norm blocks (multi-head self-attention, then a GELU
MLP of ratio 4), qkv with bias, a final LayerNorm (eps 1e-6), truncated-normal (std 0.02) init of the
linear layers, the class token and the positional embeddings.

Sizes: ViT-Tiny's width 192, depth 12 and 3 heads by default (the `vit` config section), with patch 4 on
32 px images and patch 8 on 64 px ones, so either gives an 8 x 8 grid of patches. Views of another size
(DINO's local crops) get the positional embeddings bicubically resized to their grid, as DINO's
`interpolate_pos_encoding` does (to the exact grid size rather than through a scale factor).

Attention is `F.scaled_dot_product_attention` (fused kernels, compiles without a graph break); no
dropout and no stochastic depth, so a forward pass draws nothing. The interface of the other backbones:
`feat_dim`, `forward(x)` (the class token, [B, D]) and `forward_features(x)` (the patch tokens as a
[B, D, h, w] map); besides them `tokens(x)` (every token, [B, 1 + h*w, D]) and `class_attention(x)` (the
last block's attention of the class token to the patches, [B, heads, h, w]: DINO's attention maps).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"ViT width {width} must be divisible by its number of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[B, N, D] -> q, k, v, each [B, heads, N, D / heads]."""
        batch, tokens, width = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.heads, width // self.heads)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.split(x)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).flatten(2))

    def weights(self, x: Tensor) -> Tensor:
        """The softmax attention weights [B, heads, N, N] (for figures; training never needs them)."""
        q, k, _ = self.split(x)
        return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_vit_weights(module: nn.Module) -> None:
    """DINO's `_init_weights`: truncated-normal linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ViT(nn.Module):
    """Patch embedding + class token + positional embeddings, `depth` blocks, a final LayerNorm."""

    def __init__(
        self,
        in_channels: int = 3,
        *,
        patch: int = 4,
        width: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        image_size: int = 32,
    ):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"ViT patch {patch} must divide the image size {image_size}")
        self.patch, self.grid, self.feat_dim, self.heads = patch, image_size // patch, width, heads
        self.patch_embed = nn.Conv2d(in_channels, width, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_vit_weights)

    def position(self, rows: int, cols: int) -> Tensor:
        """Positional embeddings [1, 1 + rows*cols, D] for a rows x cols grid of patches."""
        if (rows, cols) == (self.grid, self.grid):
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = patch_pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, grid.flatten(2).transpose(1, 2)], dim=1)

    def embed(self, x: Tensor) -> Tensor:
        """Images [B, C, H, W] -> the first block's input [B, 1 + h*w, D]."""
        patches = self.patch_embed(x)  # [B, D, h, w]
        rows, cols = patches.shape[-2:]
        tokens = patches.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        return tokens + self.position(rows, cols)

    def tokens(self, x: Tensor) -> Tensor:
        """Every output token after the final norm: [B, 1 + h*w, D], the class token first."""
        out = self.embed(x)
        for block in self.blocks:
            out = block(out)
        return self.norm(out)

    def forward(self, x: Tensor) -> Tensor:
        return self.tokens(x)[:, 0]

    def forward_features(self, x: Tensor) -> Tensor:
        """The patch tokens as a map [B, D, H / patch, W / patch] (the ResNets' last-stage map)."""
        patches = self.tokens(x)[:, 1:]
        rows, cols = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        return patches.transpose(1, 2).reshape(len(x), -1, rows, cols)

    @torch.no_grad()
    def class_attention(self, x: Tensor) -> Tensor:
        """The last block's attention of the class token to each patch: [B, heads, H / patch, W / patch]."""
        out = self.embed(x)
        for block in self.blocks[:-1]:
            out = block(out)
        weights = self.blocks[-1].attn.weights(self.blocks[-1].norm1(out))
        rows, cols = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        return weights[:, :, 0, 1:].reshape(len(x), self.heads, rows, cols)


def vit(in_channels: int = 3, **options) -> ViT:
    """ViT-Tiny for 32 px images unless `options` (the `vit` config section) say otherwise."""
    return ViT(in_channels, **options)
