"""Decode attention over a static KV cache: one new query per row, keys/values ``(B, Hkv, L, hd)``.

A static cache (gpt-fast's layout) preallocates ``L`` slots per row and writes the token of step ``t`` at
slot ``position = t`` for every row. For ``q`` ``(B, H, hd)`` (``H`` a multiple of ``Hkv``: query head
``h`` reads kv head ``h // (H // Hkv)``), the query of row ``b`` attends to the slots ``j <= position``
that hold a real token (``key_valid[b, j]``, when the prompt was padded; its own slot always)::

    out[b, h] = softmax(q[b, h] . K[b, kv(h), S_b] * scale) @ V[b, kv(h), S_b]

A decode step otherwise runs SDPA: a prefill-shaped kernel for one query that reads all ``L`` slots, plus a
mask built over all of them. The Triton backend (``decode_attention_triton.py``) reads only the slots up to
``position`` and is a ``torch.library.triton_op``, so ``torch.compile`` keeps it inside the one graph it
captures for CUDA graphs. This module holds the public ``decode_attention``, its checks and the
plain-PyTorch reference (the ``torch`` backend, fallback and test oracle: SDPA with the mask).

``rope_decode_attention`` takes ``q`` and the new token's key/value *before* RoPE: it rotates ``q`` and
the key (half-split layout, ``cos``/``sin`` of the position), writes the key and value at slot
``position`` of the cache, then attends as ``decode_attention``. Its Triton backend does all three in the
decode kernel, so a decode step has no separate RoPE and cache-write kernel per layer.
Registered ops: ``decode_attention``, ``rope_decode_attention`` (import
``tinylm.kernels.decode_attention_triton`` for the kernel).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tinylm.kernels.registry import dispatch, register_backend
from tinylm.kernels.rope import apply_rope_reference


def decode_mask(position: torch.Tensor, length: int, key_valid: torch.Tensor | None) -> torch.Tensor:
    """``(B or 1, 1, 1, L)`` bool: slots up to ``position`` that hold real tokens, the query's own slot."""
    slots = torch.arange(length, device=position.device)
    mask = slots <= position.reshape(-1)[:1]  # (L,)
    if key_valid is not None:
        mask = mask & (key_valid | (slots == position.reshape(-1)[:1]))  # (B, L)
    return mask.reshape(-1, 1, 1, length)


@register_backend("decode_attention", "torch")
def decode_attention_reference(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    position: torch.Tensor,
    key_valid: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """SDPA of ``q[:, :, None]`` over the slots ``decode_mask`` lets through; ``(B, H, hd)``."""
    n_rep = q.shape[1] // keys.shape[1]
    k = keys.repeat_interleave(n_rep, dim=1) if n_rep > 1 else keys  # (B, H, L, hd)
    v = values.repeat_interleave(n_rep, dim=1) if n_rep > 1 else values
    mask = decode_mask(position, keys.shape[2], key_valid)
    out = F.scaled_dot_product_attention(q[:, :, None].to(k.dtype), k, v, attn_mask=mask, scale=scale)
    return out[:, :, 0].to(q.dtype)


@register_backend("rope_decode_attention", "torch")
def rope_decode_attention_reference(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    position: torch.Tensor,
    key_valid: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Rotate, store the new key/value at ``position`` (in place), then ``decode_attention_reference``."""
    q, k_new = apply_rope_reference(q, k_new, cos[:, None], sin[:, None])  # (B, 1, hd): over the heads
    idx = position.reshape(1)
    keys.index_copy_(2, idx, k_new[:, :, None].to(keys.dtype))
    values.index_copy_(2, idx, v_new[:, :, None].to(values.dtype))
    return decode_attention_reference(q, keys, values, position, key_valid, scale)


def check_decode_attention_inputs(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    position: torch.Tensor,
    key_valid: torch.Tensor | None,
) -> None:
    """Raise a clear error on shapes or dtypes ``decode_attention`` cannot take."""
    if q.dim() != 3:
        raise ValueError(f"decode_attention: q must be (B, H, head_dim), got {tuple(q.shape)}")
    if keys.dim() != 4 or keys.shape != values.shape:
        raise ValueError(
            "decode_attention: keys and values must both be (B, Hkv, L, head_dim), "
            f"got {tuple(keys.shape)} and {tuple(values.shape)}"
        )
    b, h, hd = q.shape
    if keys.shape[0] != b or keys.shape[3] != hd:
        raise ValueError(
            f"decode_attention: q is (B={b}, H={h}, head_dim={hd}), the cache {tuple(keys.shape)}"
        )
    if h % keys.shape[1]:
        raise ValueError(f"decode_attention: {h} query heads is not a multiple of {keys.shape[1]} kv heads")
    if position.numel() != 1 or position.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            "decode_attention: position must hold one int32/int64 value (the slot of the new token), got "
            f"{position.dtype} {tuple(position.shape)}"
        )
    if key_valid is not None and (key_valid.dtype != torch.bool or key_valid.shape != (b, keys.shape[2])):
        raise ValueError(
            f"decode_attention: key_valid must be a bool (B={b}, L={keys.shape[2]}) tensor, got "
            f"{key_valid.dtype} {tuple(key_valid.shape)}"
        )


def decode_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    position: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention of ``q`` (B, H, hd), the tokens at slot ``position``, over a static cache's
    ``keys``/``values`` (B, Hkv, L, hd): slots ``<= position``, those off in ``key_valid`` (B, L) left out.

    ``scale`` defaults to ``1/sqrt(hd)``. Returns (B, H, hd) in ``q``'s dtype. Inference only.
    """
    check_decode_attention_inputs(q, keys, values, position, key_valid)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return dispatch("decode_attention", backend, q.device)(q, keys, values, position, key_valid, scale)


def rope_decode_attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    position: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """``decode_attention`` for ``q`` (B, H, hd) and the new token's ``k_new``/``v_new`` (B, Hkv, hd)
    before RoPE: rotates ``q`` and ``k_new`` by ``cos``/``sin`` (B, hd; half-split layout), writes the
    rotated key and ``v_new`` at slot ``position`` of ``keys``/``values`` (in place), and attends over the
    slots ``<= position``. Returns (B, H, hd) in ``q``'s dtype. Inference only.
    """
    check_decode_attention_inputs(q, keys, values, position, key_valid)
    b, _, hd = q.shape
    want = (b, keys.shape[1], hd)
    if k_new.shape != want or v_new.shape != want:
        raise ValueError(
            f"rope_decode_attention: k_new and v_new must be (B, Hkv, head_dim) = {want}, got "
            f"{tuple(k_new.shape)} and {tuple(v_new.shape)}"
        )
    if cos.shape != (b, hd) or sin.shape != (b, hd):
        raise ValueError(
            f"rope_decode_attention: cos and sin must be (B, head_dim) = {(b, hd)}, got {tuple(cos.shape)} "
            f"and {tuple(sin.shape)}"
        )
    if hd % 2:
        raise ValueError(f"rope_decode_attention: RoPE needs an even head_dim, got {hd}")
    scale = 1.0 / math.sqrt(hd) if scale is None else float(scale)
    fn = dispatch("rope_decode_attention", backend, q.device)
    return fn(q, k_new, v_new, cos, sin, keys, values, position, key_valid, scale)
