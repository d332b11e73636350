"""Transformer blocks, registered by name (``model.block``). Factories take ``(cfg, layer_idx)``.

``prenorm`` (GPT-2, LLaMA): ``x + attn(norm(x))`` then ``x + mlp(norm(x))``, with a final norm after the
last block. ``postnorm`` (Vaswani et al., 2017): ``norm(x + attn(x))`` then ``norm(x + mlp(x))``, no final
norm. ``final_norm`` tells the model which.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from tinylm.core.components.attention import Attention, AttentionContext
from tinylm.core.registry import BLOCKS, MLPS, NORMS

if TYPE_CHECKING:
    from tinylm.core.config import ModelConfig


class Block(nn.Module):
    """Attention and MLP sub-layers with their norms and residual dropout; subclasses order them."""

    final_norm = True

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = NORMS.build(cfg.norm, cfg.dim, eps=cfg.norm_eps, bias=cfg.bias)
        self.attn = Attention(cfg, layer_idx)
        self.mlp_norm = NORMS.build(cfg.norm, cfg.dim, eps=cfg.norm_eps, bias=cfg.bias)
        self.mlp = MLPS.build(cfg.mlp, cfg)
        self.drop = nn.Dropout(cfg.dropout)


@BLOCKS.register("prenorm")
class PreNormBlock(Block):
    """Norm before each sub-layer; the residual stream itself is never normalised."""

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), ctx))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


@BLOCKS.register("postnorm")
class PostNormBlock(Block):
    """Norm after each residual addition (the original Transformer)."""

    final_norm = False

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        x = self.attn_norm(x + self.drop(self.attn(x, ctx)))
        return self.mlp_norm(x + self.drop(self.mlp(x)))
