"""Mixture-of-heads attention router (``model.router=heads``): each token weights its top-k heads.

After MoH (Jin et al., 2024, "MoH: Multi-Head Attention as Head-Routing Mixture-of-Experts",
arXiv 2410.11842). The first ``shared`` heads are always on with weight 1; a linear router on the block's
attention input scores the other heads per token, keeps the ``top_k`` best and weights them by their
renormalised probabilities times ``top_k`` (so the mean weight of an active head is 1, like a dense layer).
Inactive heads get weight 0. The weights scale each head's output before the output projection (a forward
pre-hook on ``o_proj``, so the attention module and its parameter names stay as they are). A
load-balancing ``aux_loss`` (as in ``moe.py``) keeps the router from collapsing onto a few heads.

Every head is still computed (the gate is applied afterwards): this studies the modelling effect, it saves
no compute. The weights depend on the token itself only, so any cache works and cached decoding equals
full recomputation. Options, ``model.extra.heads``: top_k (default half the routed heads), shared,
aux_weight.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tinylm.core.components.attention import Attention, AttentionContext
from tinylm.core.components.moe import load_balancing_loss
from tinylm.core.components.routing import plugin_options
from tinylm.core.registry import ROUTERS

if TYPE_CHECKING:
    from tinylm.core.config import ModelConfig


class MixtureOfHeadsAttention(nn.Module):
    """Wraps an ``Attention``: per-token weights over its heads, applied before the output projection."""

    def __init__(self, cfg: ModelConfig, attn: Attention, top_k: int, shared: int, aux_weight: float):
        super().__init__()
        routed = cfg.n_heads - shared
        if not 0 <= shared < cfg.n_heads or not 1 <= top_k <= routed:
            raise ValueError(
                f"model.extra.heads needs 0 <= shared < n_heads={cfg.n_heads} and 1 <= top_k <= n_heads - "
                f"shared = {routed}, got shared={shared}, top_k={top_k}"
            )
        self.attn, self.top_k, self.shared, self.aux_weight = attn, top_k, shared, aux_weight
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.router = nn.Linear(cfg.dim, routed, bias=False)
        self.aux_loss: torch.Tensor | None = None
        self.stats: dict[str, torch.Tensor] = {}
        self._weights: torch.Tensor | None = None
        attn.o_proj.register_forward_pre_hook(self._scale_heads)

    def head_weights(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, n_heads)`` weights: shared heads 1, routed top-k heads k * p / sum(p), others 0."""
        probs = self.router(x).float().softmax(-1)  # (B, T, routed)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        routed = torch.zeros_like(probs).scatter(-1, top_i, self.top_k * top_p / top_p.sum(-1, keepdim=True))
        flat_probs = probs.reshape(-1, probs.shape[-1])
        self.aux_loss = self.aux_weight * load_balancing_loss(
            flat_probs, top_i.reshape(-1, self.top_k), probs.shape[-1]
        )
        with torch.no_grad():
            self.stats = {"head_utilisation": (routed > 0).float().mean((0, 1))}
        shared = probs.new_ones(*probs.shape[:-1], self.shared)
        return torch.cat([shared, routed], dim=-1)

    def _scale_heads(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[torch.Tensor]:
        y = args[0]  # (B, T, H * hd): the heads side by side
        if self._weights is None:
            return (y,)
        b, t, _ = y.shape
        w = self._weights.to(y.dtype)[..., None]  # (B, T, H, 1)
        return ((y.view(b, t, self.n_heads, self.head_dim) * w).view(b, t, -1),)

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        self._weights = self.head_weights(x)
        try:
            return self.attn(x, ctx)
        finally:
            self._weights = None


@ROUTERS.register("heads")
def mixture_of_heads(cfg: ModelConfig, block: nn.Module, layer_idx: int) -> nn.Module:
    """Replace the block's ``attn`` by a ``MixtureOfHeadsAttention`` around it."""
    if not isinstance(getattr(block, "attn", None), Attention):
        raise ValueError(
            f"model.router=heads needs a block with an Attention .attn, got {type(block).__name__}"
        )
    defaults = dict(top_k=max(1, cfg.n_heads // 2), shared=0, aux_weight=0.01)
    opts = plugin_options(cfg, "heads", defaults)
    block.attn = MixtureOfHeadsAttention(
        cfg, block.attn, int(opts["top_k"]), int(opts["shared"]), float(opts["aux_weight"])
    )
    return block
