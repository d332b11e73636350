"""Position encodings, registered by name (``model.positional``). Factories take the ``ModelConfig``.

A positional module has two hooks and implements the ones it needs: ``embed(x, positions)`` adds to the
token embeddings (learned absolute positions, GPT-2), ``rotate(q, k, positions)`` acts on queries and keys
inside attention (RoPE, Su et al., 2021, arXiv 2104.09864). ``positions`` is ``(B, T)`` absolute indices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from tinylm.core.registry import POSITIONALS
from tinylm.kernels import apply_rope

if TYPE_CHECKING:
    from tinylm.core.config import ModelConfig


class Positional(nn.Module):
    """Base class: both hooks are the identity; ``max_positions`` is the longest context (None: any)."""

    max_positions: int | None = None

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, memo: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``memo``: a dict shared by all layers of one forward, for values computed once per forward."""
        return q, k


@POSITIONALS.register("none")
class NoPositional(Positional):
    """No position information (NoPE): causal masking alone orders the tokens."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()


@POSITIONALS.register("learned")
class LearnedPositional(Positional):
    """A learned embedding per absolute position, added to the token embeddings."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.max_positions = cfg.max_seq_len
        self.weight = nn.Parameter(torch.zeros(cfg.max_seq_len, cfg.dim))

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x + self.weight[positions]


@POSITIONALS.register("rope")
class RoPE(Positional):
    """Rotary position embedding in the half-split layout used by LLaMA and Hugging Face."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.head_dim, self.theta = cfg.head_dim, cfg.rope_theta

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``(B, 1, T, head_dim)``, computed in at least float32, returned in ``dtype``.

        The frequencies are recomputed per call (head_dim/2 numbers) rather than kept in a buffer, so
        ``model.to(torch.bfloat16)`` cannot round them.
        """
        ct = torch.promote_types(dtype, torch.float32)
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=positions.device).to(ct)
        inv_freq = 1.0 / (self.theta ** (exponent / self.head_dim))
        freqs = positions[..., None].to(ct) * inv_freq  # (B, T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, hd)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, memo: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if memo is None:
            cos, sin = self.cos_sin(positions, q.dtype)
        else:  # every layer rotates by the same positions: compute the table once per forward
            key = ("rope", q.dtype)
            if key not in memo:
                memo[key] = self.cos_sin(positions, q.dtype)
            cos, sin = memo[key]
        return apply_rope(q, k, cos, sin)  # tinylm.kernels: Triton on GPU, plain PyTorch elsewhere
