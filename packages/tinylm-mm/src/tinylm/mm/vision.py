"""Images to embeddings: a ViT-style patch encoder projecting into the LM width.

Non-overlapping ``patch_size`` patches (a strided Conv2d, as in ViT), learned position embeddings, a few
pre-norm bidirectional transformer layers, a final LayerNorm and a linear projection to ``out_dim``, so each
patch becomes one "token" embedding the LM reads between ``<image>`` and ``</image>`` (LLaVA-style).
Reference: Dosovitskiy et al., 2020, "An Image is Worth 16x16 Words" (arXiv 2010.11929).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from tinylm.mm.audio import transformer_layers


@dataclass
class PatchEncoderConfig:
    """Image geometry, patch size, encoder width/depth and the output width (the LM's ``dim``)."""

    image_size: int = 8
    channels: int = 1
    patch_size: int = 2
    width: int = 64
    n_layers: int = 1
    n_heads: int = 4
    out_dim: int = 64

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}; "
                "pick a patch size that tiles the image"
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


class PatchEncoder(nn.Module):
    """Images ``(B, C, H, W)`` -> patch embeddings ``(B, (H / p) * (W / p), out_dim)``."""

    discrete = False

    def __init__(self, config: PatchEncoderConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.patchify = nn.Conv2d(cfg.channels, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.pos = nn.Parameter(torch.randn(1, cfg.num_patches, cfg.width) * 0.02)
        self.layers = transformer_layers(cfg.width, cfg.n_layers, cfg.n_heads)
        self.norm = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        expected = (cfg.channels, cfg.image_size, cfg.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images must be (batch, {', '.join(map(str, expected))}), got {tuple(images.shape)}"
            )
        x = self.patchify(images).flatten(2).transpose(1, 2)  # (B, N, width)
        x = self.layers(x + self.pos)
        return self.proj(self.norm(x))  # (B, N, out_dim)
