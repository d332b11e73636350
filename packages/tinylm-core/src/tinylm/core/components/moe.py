"""Mixture-of-experts MLP (``model.mlp=moe``): top-k token routing with capacity, batched experts.

A linear router scores each token against ``experts`` gated MLPs and sends it to its ``top_k`` best; the
expert outputs are summed weighted by the (renormalised) router probabilities. Each expert takes at most
``capacity = ceil(capacity_factor * tokens * top_k / experts)`` assignments per forward; the rest are
dropped (the token's update from that expert is zero, the residual carries it), first choices before second
choices (GShard, Lepikhin et al., 2020, arXiv 2006.16668; Switch, Fedus et al., 2021, arXiv 2101.03961).
Experts run as one batched matmul over an ``(experts, capacity, dim)`` buffer, not a loop over tokens.

Losses (``aux_loss``, added by ``TinyLM`` in training): load balancing ``aux_weight * E * sum_e f_e * P_e``
(f: fraction of assignments to expert e, P: mean router probability; 1.0 at uniform routing, E when every
token picks one expert) and router z-loss ``z_weight * mean(logsumexp(logits)^2)`` (ST-MoE, arXiv 2202.08906).
``stats``: per-expert utilisation and the fraction of assignments dropped, for logs and reports.

Options, ``model.extra.moe``: experts, top_k, capacity_factor (<= 0: no dropping), aux_weight, z_weight,
shared_expert (one extra dense expert every token uses, DeepSeekMoE). Caches: capacity applies in training
only; in eval no token is dropped, so a token's output never depends on other tokens and cached decoding
equals full recomputation.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from tinylm.core.components.mlp import GatedMLP
from tinylm.core.components.routing import plugin_options
from tinylm.core.registry import ACTIVATIONS, MLPS

if TYPE_CHECKING:
    from tinylm.core.config import ModelConfig

MOE_DEFAULTS = dict(
    experts=4, top_k=2, capacity_factor=1.25, aux_weight=0.01, z_weight=0.001, shared_expert=False
)


def load_balancing_loss(probs: torch.Tensor, expert_idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Switch-style ``E * sum_e f_e * P_e`` for router probabilities ``(N, E)`` and assignments ``(N, k)``."""
    counts = torch.bincount(expert_idx.reshape(-1), minlength=n_experts).to(probs.dtype)
    fraction = counts / expert_idx.numel()  # f_e: share of assignments (not differentiable)
    return n_experts * (fraction * probs.mean(0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean squared log-partition of the router logits ``(N, E)`` (keeps logits small)."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


@MLPS.register("moe")
class MoEMLP(nn.Module):
    """Top-k routed gated-MLP experts with a capacity limit, load-balancing and z losses."""

    hidden_ratio = GatedMLP.hidden_ratio  # per expert

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        opts = plugin_options(cfg, "moe", MOE_DEFAULTS)
        self.n_experts, self.top_k = int(opts["experts"]), int(opts["top_k"])
        if self.n_experts < 1 or not 1 <= self.top_k <= self.n_experts:
            raise ValueError(
                f"model.extra.moe needs experts >= 1 and 1 <= top_k <= experts, "
                f"got experts={self.n_experts}, "
                f"top_k={self.top_k}"
            )
        self.capacity_factor = float(opts["capacity_factor"] or 0.0)
        self.aux_weight, self.z_weight = float(opts["aux_weight"]), float(opts["z_weight"])
        d, h, e = cfg.dim, cfg.hidden_dim, self.n_experts
        self.router = nn.Linear(d, e, bias=False)
        self.w_gate = nn.Parameter(torch.randn(e, d, h) * cfg.init_std)
        self.w_up = nn.Parameter(torch.randn(e, d, h) * cfg.init_std)
        self.w_down = nn.Parameter(torch.randn(e, h, d) * cfg.init_std / math.sqrt(2 * cfg.n_layers))
        self.act = ACTIVATIONS.build(cfg.activation)
        self.shared = GatedMLP(cfg) if opts["shared_expert"] else None
        self.aux_loss: torch.Tensor | None = None
        self.stats: dict[str, torch.Tensor] = {}

    def capacity(self, n_tokens: int) -> int:
        """Assignments each expert takes in one forward (all of them when not training or no factor)."""
        if not self.training or self.capacity_factor <= 0:
            return n_tokens
        return max(1, math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, d, e = x.shape, x.shape[-1], self.n_experts
        flat = x.reshape(-1, d)  # (N, D)
        n = flat.shape[0]
        logits = self.router(flat).float()  # (N, E)
        probs = logits.softmax(-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.top_k > 1:
            top_p = top_p / top_p.sum(-1, keepdim=True)
        # assignments in priority order: every token's first choice, then every second choice
        expert = top_i.t().reshape(-1)  # (k*N,)
        token = torch.arange(n, device=x.device).repeat(self.top_k)
        weight = top_p.t().reshape(-1)
        slot_in_expert = (F.one_hot(expert, e).cumsum(0) - 1).gather(1, expert[:, None]).squeeze(1)
        cap = self.capacity(n)
        if cap >= n:  # nothing is dropped: a buffer as deep as the fullest expert's load is enough
            cap = int(torch.bincount(expert, minlength=e).max())
        keep = slot_in_expert < cap
        slot = (expert * cap + slot_in_expert)[keep]
        token, weight = token[keep], weight[keep]
        buf = flat.new_zeros(e * cap, d).index_copy(0, slot, flat[token]).view(e, cap, d)  # (E, C, D)
        hidden = self.act(torch.bmm(buf, self.w_gate)) * torch.bmm(buf, self.w_up)  # (E, C, H)
        out_e = torch.bmm(hidden, self.w_down).view(e * cap, d)  # (E*C, D)
        out = flat.new_zeros(n, d).index_add(0, token, out_e[slot] * weight[:, None].to(x.dtype))
        if self.shared is not None:
            out = out + self.shared(flat)
        self.aux_loss = self.aux_weight * load_balancing_loss(
            probs, top_i, e
        ) + self.z_weight * router_z_loss(logits)
        with torch.no_grad():
            self.stats = {
                "utilisation": torch.bincount(top_i.reshape(-1), minlength=e).float() / top_i.numel(),
                "dropped": 1.0 - keep.float().mean(),
            }
        return out.view(shape)
