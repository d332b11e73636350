"""Attention variants as attention backends (``model.attention=<name>``), options in ``model.extra``.

Each is an ``nn.Module`` class in ``ATTENTION_BACKENDS``: ``Attention`` builds one per layer with
``(cfg, layer_idx)`` and calls it like a backend function, ``(q, k, v, mask, dropout_p, scale)`` on
``(B, H, T, hd)`` queries and ``(B, H, S, hd)`` keys/values, the queries being the last T of the S positions.

- ``sliding_window`` (Mistral, Jiang et al., 2023, arXiv 2310.06825; Longformer): a query sees the
  ``extra.window`` most recent positions, itself included. SDPA with a boolean mask.
- ``alibi`` (Press et al., 2022, arXiv 2108.12409): adds ``-slope_h * distance`` to the scores, one slope per
  head; use it with ``model.positional=none``. SDPA with a float mask.
- ``qk_norm`` (Dehghani et al., 2023, arXiv 2302.05442; OLMo 2): RMSNorm with a learned gain over
  ``head_dim`` on queries and keys. The backend sees them after RoPE: RMS is rotation-invariant, but the
  per-dimension gain makes this differ slightly from norming before RoPE (both are in use).
- ``softcap`` (Gemma 2, arXiv 2408.00118): scores become ``cap * tanh(scores / cap)``, ``extra.softcap``.

Distances count slots of the key sequence (the queries being its last T), so with a standard cache and
left padding (padding comes before every real token) they equal the distances between real tokens.
``sliding_window`` and ``alibi`` therefore need a cache that holds past + new in order (``StandardCache``);
with a cache that lays out its own slots (static, paged, ring buffer: it has ``attention_mask``) they
raise. ``qk_norm`` and ``softcap`` use no distances and work with every cache.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tinylm.core.registry import ATTENTION_BACKENDS

if TYPE_CHECKING:
    from tinylm.core.config import ModelConfig


def causal_mask(mask: torch.Tensor | None, t: int, s: int, device: torch.device) -> torch.Tensor:
    """The boolean ``(B|1, 1, T, S)`` mask a backend was given, or plain causality when it was None."""
    if mask is not None:
        return mask
    return torch.ones(t, s, dtype=torch.bool, device=device).tril(s - t)[None, None]


def distances(t: int, s: int, device: torch.device) -> torch.Tensor:
    """``(T, S)`` query slot minus key slot (queries are the last T of S slots); negative = future."""
    q_pos = torch.arange(s - t, s, device=device)[:, None]
    return q_pos - torch.arange(s, device=device)[None, :]


@ATTENTION_BACKENDS.register("sliding_window")
class SlidingWindowAttention(nn.Module):
    """Causal attention limited to the last ``window`` positions (``model.extra.window``, default 64)."""

    needs_sequential_slots = True  # distances are slot differences: see the module docstring

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        window = cfg.extra.get("window", 64)
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"model.extra.window must be a positive integer, got {window!r}")
        self.window = window

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, scale: float
    ) -> Tensor:
        t, s = q.shape[-2], k.shape[-2]
        local = distances(t, s, q.device) < self.window  # (T, S)
        mask = causal_mask(mask, t, s, q.device) & local
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """The ALiBi paper's head slopes: 2^(-8/n * i) for i = 1..n, interleaved for n not a power of 2."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start**i for i in range(1, n + 1)]

    if math.log2(n_heads).is_integer():
        return torch.tensor(power_of_2(n_heads))
    closest = 2 ** math.floor(math.log2(n_heads))
    extra = power_of_2(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(power_of_2(closest) + extra)


@ATTENTION_BACKENDS.register("alibi")
class ALiBiAttention(nn.Module):
    """Causal attention with a linear distance penalty per head (no position embedding needed)."""

    needs_sequential_slots = True  # distances are slot differences: see the module docstring

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(cfg.n_heads), persistent=False)  # (H,)

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, scale: float
    ) -> Tensor:
        t, s = q.shape[-2], k.shape[-2]
        dist = distances(t, s, q.device).to(torch.float32)  # (T, S)
        bias = -self.slopes.float()[:, None, None] * dist  # (H, T, S)
        bias = bias.masked_fill(~causal_mask(mask, t, s, q.device), float("-inf")).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)


@ATTENTION_BACKENDS.register("qk_norm")
class QKNormAttention(nn.Module):
    """RMS-normalised queries and keys (learned gain per head dimension), then SDPA."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.eps = float(cfg.extra.get("qk_norm_eps", 1e-6))
        self.q_weight = nn.Parameter(torch.ones(cfg.head_dim))
        self.k_weight = nn.Parameter(torch.ones(cfg.head_dim))

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * weight.float()).to(x.dtype)

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, scale: float
    ) -> Tensor:
        q, k = self._norm(q, self.q_weight), self._norm(k, self.k_weight)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=mask is None, scale=scale
        )


@ATTENTION_BACKENDS.register("softcap")
class SoftcapAttention(nn.Module):
    """Eager attention with tanh-capped scores (``model.extra.softcap``, default 50 as in Gemma 2)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        cap = cfg.extra.get("softcap", 50.0)
        if not isinstance(cap, (int, float)) or cap <= 0:
            raise ValueError(f"model.extra.softcap must be a positive number, got {cap!r}")
        self.cap = float(cap)

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, scale: float
    ) -> Tensor:
        t, s = q.shape[-2], k.shape[-2]
        att = (q @ k.transpose(-2, -1)).float() * scale  # (B, H, T, S)
        att = self.cap * torch.tanh(att / self.cap)
        att = att.masked_fill(~causal_mask(mask, t, s, q.device), float("-inf"))
        att = F.softmax(att, dim=-1).to(q.dtype)
        if dropout_p > 0.0:
            att = F.dropout(att, p=dropout_p)
        return att @ v  # (B, H, T, hd)
