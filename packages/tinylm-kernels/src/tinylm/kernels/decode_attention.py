"""Decode attention over a static KV cache: one new query token per row, keys/values in ``(B, Hkv, L, hd)``.

A static cache (gpt-fast's layout) preallocates ``L`` positions per row; row ``b`` holds ``lengths[b]`` of
them (at least 1, the new token's own key/value included), the rest is unwritten. For ``q`` ``(B, H, hd)``
with ``H`` a multiple of ``Hkv`` (GQA: query head ``h`` reads kv head ``h // (H // Hkv)``)::

    out[b, h] = softmax(q[b, h] . K[b, kv(h), :lengths[b]] * scale) @ V[b, kv(h), :lengths[b]]

The SDPA a decode step otherwise runs needs a mask over all ``L`` positions built each step, and runs a
prefill-shaped kernel for one query. The Triton backend (``decode_attention_triton.py``) is the paged
decode kernel reading this layout directly: one launch (or two, with flash-decoding splits) per layer.
This module holds the public ``decode_attention``, its checks and the plain-PyTorch reference (the
``torch`` backend, fallback and test oracle: SDPA with a length mask). Registered op: ``decode_attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tinylm.kernels.registry import dispatch, register_backend


@register_backend("decode_attention", "torch")
def decode_attention_reference(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, scale: float
) -> torch.Tensor:
    """SDPA of ``q[:, :, None]`` over the first ``lengths[b]`` positions of each row."""
    n_rep = q.shape[1] // keys.shape[1]
    k = keys.repeat_interleave(n_rep, dim=1)  # (B, H, L, hd)
    v = values.repeat_interleave(n_rep, dim=1)
    j = torch.arange(keys.shape[2], device=q.device)
    mask = (j[None, :] < lengths.long()[:, None])[:, None, None, :]  # (B, 1, 1, L)
    out = F.scaled_dot_product_attention(q[:, :, None].to(k.dtype), k, v, attn_mask=mask, scale=scale)
    return out[:, :, 0].to(q.dtype)  # (B, H, hd)


def check_decode_attention_inputs(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor
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
    if lengths.shape != (b,) or lengths.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"decode_attention: lengths must be an int32/int64 (B={b},) tensor, got "
            f"{lengths.dtype} {tuple(lengths.shape)}"
        )


def decode_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    lengths: torch.Tensor,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Decode attention of ``q`` (B, H, hd) over a static cache's ``keys``/``values`` (B, Hkv, L, hd).

    ``lengths`` (B,): positions filled per row (each >= 1). ``scale`` defaults to ``1/sqrt(hd)``. Returns
    (B, H, hd) in ``q``'s dtype. Inference only (no autograd).
    """
    check_decode_attention_inputs(q, keys, values, lengths)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return dispatch("decode_attention", backend, q.device)(q, keys, values, lengths, scale)
