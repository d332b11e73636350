"""Causal self-attention with grouped-query heads, and its registered backends (``model.attention``).

A backend is a function ``(q, k, v, mask, dropout_p, scale) -> out`` on ``(B, H, T, hd)`` queries and
``(B, H, S, hd)`` keys/values (already expanded from the kv heads). ``mask`` is None for plain causal
attention over T == S, or a boolean ``(B|1, 1, T, S)`` tensor, True where a query may attend. Every backend
must give the same result; ``eager`` is the readable reference. Backends marked ``plain_softmax`` compute
exactly softmax attention, so a cache with an ``attend(layer_idx, q, k, v, scale, ctx)`` method (the paged
cache's decode kernel) may store the new keys/values and compute it itself, or return None to decline;
with RoPE positions, one with ``attend_rope(...)`` (same arguments) is first offered ``q`` and ``k`` before
the rotation, so its kernel can rotate them too (the static cache's ``decode_attention="kernel_rope"``).
GQA/MQA: Ainslie et al., 2023, arXiv 2305.13245; Shazeer, 2019, arXiv 1911.02150.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from tinylm.core.components.positional import RoPE
from tinylm.core.registry import ATTENTION_BACKENDS

if TYPE_CHECKING:
    from tinylm.core.components.positional import Positional
    from tinylm.core.config import ModelConfig


@dataclass
class AttentionContext:
    """What every layer's attention needs besides its input: positions, mask, encoding and cache."""

    positions: torch.Tensor  # (B, T) absolute positions of the new tokens
    mask: torch.Tensor | None  # None: causal, T == S; else bool (B|1, 1, T, S)
    positional: Positional
    cache: Any = None  # an object with update(layer_idx, k, v) -> (k, v), see tinylm.core.cache
    memo: dict = field(default_factory=dict)  # per-forward values every layer shares (RoPE's cos/sin)


def build_attention_mask(
    attention_mask: torch.Tensor | None, q_len: int, kv_len: int, device: torch.device
) -> torch.Tensor | None:
    """Combine causality (queries are the last ``q_len`` of ``kv_len`` positions) with key padding.

    ``attention_mask`` is ``(B, kv_len)`` with 1 for real tokens and 0 for padding. A query always sees
    itself, so padded rows never become all-masked (which would make softmax NaN).
    """
    if attention_mask is None and q_len == kv_len:
        return None
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(kv_len, device=device)[None, :]  # (1, S)
    mask = (k_pos <= q_pos)[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        if attention_mask.shape[-1] != kv_len:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} positions but attention spans {kv_len} "
                "(past + new tokens); pass a mask over the whole sequence"
            )
        mask = (mask & attention_mask.bool()[:, None, None, :]) | (k_pos == q_pos)[None, None]
    return mask


@ATTENTION_BACKENDS.register("eager")
def eager_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    dropout_p: float,
    scale: float,
) -> torch.Tensor:
    """Softmax(q k^T * scale) v written out, softmax in float32."""
    att = (q @ k.transpose(-2, -1)) * scale  # (B, H, T, S)
    if mask is None:
        t, s = att.shape[-2:]
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
    att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att.float(), dim=-1).to(q.dtype)
    if dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p)
    return att @ v  # (B, H, T, hd)


eager_attention.plain_softmax = True  # type: ignore[attr-defined]  (a cache's own kernel may replace it)


@ATTENTION_BACKENDS.register("sdpa")
def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    dropout_p: float,
    scale: float,
) -> torch.Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient / math kernels)."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=mask is None, scale=scale
    )


sdpa_attention.plain_softmax = True  # type: ignore[attr-defined]


def _flex_available() -> bool:
    # find_spec, not import: importing flex_attention pulls in sympy (seconds at every start-up)
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


if _flex_available():

    @ATTENTION_BACKENDS.register("flex_attention")
    def flex_attention_backend(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        dropout_p: float,
        scale: float,
    ) -> torch.Tensor:
        """FlexAttention (PyTorch >= 2.5) with the mask expressed as a ``mask_mod``; no attention dropout."""
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        if dropout_p > 0.0:
            raise ValueError("the flex_attention backend has no attention dropout; set model.dropout=0")
        b, _, t, s = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        if mask is None:

            def mask_mod(b_, h_, q_idx, kv_idx):
                return kv_idx <= q_idx

        else:
            full = mask.expand(b, 1, t, s)

            def mask_mod(b_, h_, q_idx, kv_idx):
                return full[b_, 0, q_idx, kv_idx]

        block_mask = create_block_mask(mask_mod, b, None, t, s, device=q.device)
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale)

    flex_attention_backend.plain_softmax = True  # type: ignore[attr-defined]


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, Hkv, S, hd) -> (B, Hkv * n_rep, S, hd), each kv head shared by n_rep query heads."""
    if n_rep == 1:
        return x
    return x.repeat_interleave(n_rep, dim=1)


class Attention(nn.Module):
    """Multi-head causal self-attention with ``n_kv_heads`` key/value heads (MHA, GQA or MQA)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=cfg.bias)
        self.o_proj.residual_projection = True
        self.qkv_proj: nn.Linear | None = None  # q, k and v in one matrix: set by tinylm.core.fusion
        backend = ATTENTION_BACKENDS.get(cfg.attention)
        # a backend registered as an nn.Module class (attention_variants.py) may hold parameters and read
        # options from the config: one is built per layer; a plain function is used as it is
        is_module = isinstance(backend, type) and issubclass(backend, nn.Module)
        self.backend = backend(cfg, layer_idx) if is_module else backend
        self.dropout = cfg.dropout
        self.scale = 1.0 / math.sqrt(cfg.head_dim)

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        if self.qkv_proj is not None:
            q, k, v = self.split_qkv(self.qkv_proj(x))
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return self.o_proj(self.attend_heads(q, k, v, ctx))

    def split_qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fused projection's output ``(..., (H + 2 Hkv) * hd)`` as ``q``, ``k``, ``v`` (views)."""
        kv_width = self.n_kv_heads * self.head_dim
        q, k, v = qkv.split([self.n_heads * self.head_dim, kv_width, kv_width], dim=-1)
        return q, k, v

    def attend_heads(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext
    ) -> torch.Tensor:
        """Attention of the projected ``q`` (B, T, H*hd), ``k``, ``v`` (B, T, Hkv*hd): RoPE, the cache and
        the backend; ``(B, T, H*hd)``, the input of ``o_proj``."""
        b, t, _ = q.shape
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        # a cache with its own attention kernel (paged decode) may store k, v and attend itself; None: it
        # declines and the usual path runs. Offered only for plain softmax backends, at inference
        attend = getattr(ctx.cache, "attend", None) if getattr(self.backend, "plain_softmax", False) else None
        use = attend is not None and not self.training  # no bool() of a method: Dynamo 2.11 refuses it
        # with RoPE it may also rotate q and k itself (in its kernel): it gets them unrotated
        rope_attend = (
            getattr(ctx.cache, "attend_rope", None) if use and type(ctx.positional) is RoPE else None
        )
        out = rope_attend(self.layer_idx, q, k, v, self.scale, ctx) if rope_attend is not None else None
        if out is not None:
            return out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
        q, k = ctx.positional.rotate(q, k, ctx.positions, ctx.memo)
        out = attend(self.layer_idx, q, k, v, self.scale, ctx) if use else None
        if out is not None:
            return out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
        mask = ctx.mask
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer_idx, k, v)  # (B, Hkv, S, hd) with the past prepended
            if hasattr(ctx.cache, "attention_mask"):  # a cache whose slots are not simply past + new
                if getattr(self.backend, "needs_sequential_slots", False):  # distances from slot indices
                    raise ValueError(
                        f"{type(self.backend).__name__} measures distances in cache slots: it needs a cache "
                        f"holding past + new in order (standard), not {type(ctx.cache).__name__}"
                    )
                mask = ctx.cache.attention_mask(self.layer_idx, ctx)
        n_rep = self.n_heads // self.n_kv_heads
        out = self.backend(
            q,
            repeat_kv(k, n_rep),
            repeat_kv(v, n_rep),
            mask,
            self.dropout if self.training else 0.0,
            self.scale,
        )  # (B, H, T, hd)
        return out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
