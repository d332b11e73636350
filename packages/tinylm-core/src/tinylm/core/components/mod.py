"""Mixture-of-depths router (``model.router=mod``): each routed block processes only some tokens.

Raposo et al., 2024, "Mixture-of-Depths", arXiv 2404.02258. In training, a linear router scores every token
and the block runs on the top ``capacity`` fraction of each sequence only (gathered, in order, with their
own positions, attending among themselves); the other tokens skip it through the residual. The selected
tokens' update is multiplied by ``1 + s - stop_grad(s)`` with ``s = sigmoid(score)``: exactly 1 in the
forward pass, the router's gradient in the backward pass (the paper multiplies by the score itself).

Top-k over a sequence looks at future tokens, so decoding cannot use it. A causal predictor (a linear
layer on the detached input, trained with binary cross-entropy to guess the top-k choice, ``aux_loss``)
decides instead in eval mode: token i is processed when its logit is > 0. Eval runs every token through
the block but masks the keys of skipped tokens, so the selected tokens see the same keys as in training
and the output of a skipped token is its input.

Caches: every position still writes its K/V (a cache holds one entry per position), and the mask hides
skipped ones; the per-layer selection of the cached positions is kept on the cache object. So mixture-of-
depths works with ``StandardCache`` (past + new in order), generating exactly what full recomputation
gives; a cache that builds its own attention mask (static, paged, sliding window) raises, as it would
replace the mask that hides skipped keys. No compute is saved in eval.
Options, ``model.extra.mod``: capacity (fraction of tokens, 1.0 = dense), every (route layers
``every-1, 2*every-1, ...``; the paper routes every other block), predictor_weight.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from tinylm.core.components.attention import AttentionContext
from tinylm.core.components.attention_variants import causal_mask
from tinylm.core.components.routing import plugin_options
from tinylm.core.registry import ROUTERS

if TYPE_CHECKING:
    from tinylm.core.config import ModelConfig

MOD_DEFAULTS = dict(capacity=0.5, every=2, predictor_weight=0.01)
HISTORY_ATTR = "_mod_selected"  # on the cache object: {layer_idx: (B, past) bool selection}


class MixtureOfDepthsBlock(nn.Module):
    """A block that only the routed tokens go through; the rest keep their residual stream."""

    def __init__(self, cfg: ModelConfig, block: nn.Module, layer_idx: int, capacity: float, weight: float):
        super().__init__()
        if not 0.0 < capacity <= 1.0:
            raise ValueError(f"model.extra.mod.capacity must be in (0, 1], got {capacity!r}")
        self.block, self.layer_idx, self.capacity, self.predictor_weight = block, layer_idx, capacity, weight
        self.router = nn.Linear(cfg.dim, 1, bias=False)
        self.predictor = nn.Linear(cfg.dim, 1)
        self.aux_loss: torch.Tensor | None = None
        self.stats: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        if self.capacity >= 1.0:
            return self.block(x, ctx)
        if self.training and ctx.cache is None:
            k = max(1, math.ceil(self.capacity * x.shape[1]))
            scores = self.router(x).squeeze(-1).float()  # (B, T)
            idx = scores.topk(k, dim=-1).indices.sort(dim=-1).values  # (B, k), in sequence order
            selected = torch.zeros_like(scores, dtype=torch.bool).scatter(1, idx, True)
            guess = self.predictor(x.detach()).squeeze(-1).float()
            self.aux_loss = self.predictor_weight * F.binary_cross_entropy_with_logits(
                guess, selected.float()
            )
            s = torch.sigmoid(scores.gather(1, idx))
            out = self.forward_gathered(x, ctx, idx, (1.0 + s - s.detach()).to(x.dtype))
        else:
            selected = self.predictor(x).squeeze(-1) > 0  # (B, T), causal: token i looks at x_i only
            out = self.forward_masked(x, ctx, selected)
        self.stats = {"processed": selected.float().mean().detach()}
        return out

    def forward_gathered(
        self, x: torch.Tensor, ctx: AttentionContext, idx: torch.Tensor, gate: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the block on the tokens ``idx`` ``(B, k)`` (sorted) only; add their update times ``gate``."""
        b, t, d = x.shape
        gather = idx[..., None].expand(-1, -1, d)
        xs = x.gather(1, gather)  # (B, k, D)
        mask = ctx.mask
        if mask is not None:  # rows and columns of the selected tokens: (B, 1, k, k)
            mask = mask.expand(b, 1, t, t).gather(2, idx[:, None, :, None].expand(-1, 1, -1, t))
            mask = mask.gather(3, idx[:, None, None, :].expand(-1, 1, idx.shape[1], -1))
        sub = dataclasses.replace(ctx, positions=ctx.positions.gather(1, idx), mask=mask, memo={})
        delta = self.block(xs, sub) - xs
        if gate is not None:
            delta = delta * gate[..., None]
        return x.scatter_add(1, gather, delta)

    def forward_masked(self, x: torch.Tensor, ctx: AttentionContext, selected: torch.Tensor) -> torch.Tensor:
        """Every token through the block, keys of unselected tokens hidden; unselected outputs = inputs."""
        b, t, _ = x.shape
        keys = selected
        if ctx.cache is not None:
            if hasattr(ctx.cache, "attention_mask"):  # it would replace the mask that hides skipped keys
                raise ValueError(
                    "mixture-of-depths needs a cache holding past + new in order (standard), not "
                    f"{type(ctx.cache).__name__}, which builds its own attention mask"
                )
            history = ctx.cache.__dict__.setdefault(HISTORY_ATTR, {})
            past = history.get(self.layer_idx, selected.new_zeros(b, 0))
            if past.shape[1] != ctx.cache.get_seq_length():
                raise ValueError(
                    "mixture-of-depths needs the routing of every cached position: start generation with a "
                    "fresh cache that keeps all positions (standard, static, paged; not sliding window)"
                )
            keys = history[self.layer_idx] = torch.cat([past, selected], dim=1)  # (B, S)
        s = keys.shape[1]
        q_pos = torch.arange(s - t, s, device=x.device)[:, None]
        diagonal = q_pos == torch.arange(s, device=x.device)[None, :]  # (T, S): a row never empties
        mask = (causal_mask(ctx.mask, t, s, x.device) & keys[:, None, None, :]) | diagonal
        out = self.block(x, dataclasses.replace(ctx, mask=mask))
        return torch.where(selected[..., None], out, x)


@ROUTERS.register("mod")
def mixture_of_depths(cfg: ModelConfig, block: nn.Module, layer_idx: int) -> nn.Module:
    """Wrap layers ``every-1, 2*every-1, ...`` in a ``MixtureOfDepthsBlock``; the others stay dense."""
    opts = plugin_options(cfg, "mod", MOD_DEFAULTS)
    every = int(opts["every"])
    if every < 1:
        raise ValueError(f"model.extra.mod.every must be a positive integer, got {opts['every']!r}")
    if layer_idx % every != every - 1:
        return block
    return MixtureOfDepthsBlock(
        cfg, block, layer_idx, float(opts["capacity"]), float(opts["predictor_weight"])
    )
