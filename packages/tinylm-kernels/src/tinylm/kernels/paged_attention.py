"""Paged decode attention: one new query token per sequence attending over keys/values stored in blocks.

The KV pool of a paged cache (PagedAttention, Kwon et al., 2023, arXiv 2309.06180) is, per layer, one
``(num_blocks * block_size, Hkv, hd)`` tensor; position ``j`` of batch row ``b`` lives in slot
``block_table[b, j // block_size] * block_size + j % block_size``. Row ``b`` has ``lengths[b]`` positions
(ragged across rows, at least 1), the new token's own key/value included. For ``q`` ``(B, H, hd)``, with
``H`` a multiple of ``Hkv`` (GQA: query head ``h`` reads kv head ``h // (H // Hkv)``)::

    out[b, h] = softmax(q[b, h] . K[b, kv(h), :lengths[b]] * scale) @ V[b, kv(h), :lengths[b]]

This module holds the public ``paged_decode_attention``, its input checks, and the plain-PyTorch reference
(the ``torch`` backend, the fallback and the test oracle: gather the rows' slots, then SDPA with a length
mask). ``paged_attention_triton.py`` holds the Triton kernel (online softmax over the block table, no
gather). Registered op: ``paged_decode_attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tinylm.kernels.registry import dispatch, register_backend


@register_backend("paged_decode_attention", "torch")
def paged_decode_attention_reference(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    lengths: torch.Tensor,
    block_size: int,
    scale: float,
) -> torch.Tensor:
    """Gather every row's slots through its block table, then SDPA masked to the row's length."""
    h = q.shape[1]
    n_rep = h // k_pool.shape[1]
    j = torch.arange(block_table.shape[1] * block_size, device=q.device)  # (S,) positions
    slots = block_table.long()[:, j // block_size] * block_size + j % block_size  # (B, S)
    k = k_pool[slots].transpose(1, 2).repeat_interleave(n_rep, dim=1)  # (B, H, S, hd)
    v = v_pool[slots].transpose(1, 2).repeat_interleave(n_rep, dim=1)
    mask = (j[None, :] < lengths.long()[:, None])[:, None, None, :]  # (B, 1, 1, S)
    out = F.scaled_dot_product_attention(q[:, :, None].to(k.dtype), k, v, attn_mask=mask, scale=scale)
    return out[:, :, 0].to(q.dtype)  # (B, H, hd)


def check_paged_decode_inputs(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    lengths: torch.Tensor,
    block_size: int,
) -> None:
    """Raise a clear error on shapes or dtypes ``paged_decode_attention`` cannot take."""
    if q.dim() != 3:
        raise ValueError(f"paged_decode_attention: q must be (B, H, head_dim), got {tuple(q.shape)}")
    if k_pool.dim() != 3 or k_pool.shape != v_pool.shape:
        raise ValueError(
            "paged_decode_attention: k_pool and v_pool must both be (num_blocks * block_size, Hkv, "
            "head_dim), "
            f"got {tuple(k_pool.shape)} and {tuple(v_pool.shape)}"
        )
    b, h, hd = q.shape
    if k_pool.shape[2] != hd:
        raise ValueError(f"paged_decode_attention: q has head_dim {hd}, the pool {k_pool.shape[2]}")
    if h % k_pool.shape[1]:
        raise ValueError(
            f"paged_decode_attention: {h} query heads is not a multiple of the pool's "
            f"{k_pool.shape[1]} kv heads"
        )
    if block_size < 1 or k_pool.shape[0] % block_size:
        raise ValueError(
            f"paged_decode_attention: block_size {block_size} must be >= 1 and divide the pool's "
            f"{k_pool.shape[0]} slots"
        )
    ints = (torch.int32, torch.int64)
    if block_table.dim() != 2 or block_table.shape[0] != b or block_table.dtype not in ints:
        raise ValueError(
            f"paged_decode_attention: block_table must be an int32/int64 (B={b}, max_blocks) tensor, got "
            f"{block_table.dtype} {tuple(block_table.shape)}"
        )
    if lengths.shape != (b,) or lengths.dtype not in ints:
        raise ValueError(
            f"paged_decode_attention: lengths must be an int32/int64 (B={b},) tensor, got "
            f"{lengths.dtype} {tuple(lengths.shape)}"
        )


def paged_decode_attention(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    lengths: torch.Tensor,
    block_size: int,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Decode attention of ``q`` (B, H, hd) over a paged KV pool on the best backend (or ``backend``).

    ``block_table`` (B, max_blocks) and ``lengths`` (B,) say where each row's positions live and how many
    there are (each >= 1; the table's entries past a row's length are ignored). ``scale`` defaults to
    ``1/sqrt(hd)``. Returns (B, H, hd) in ``q``'s dtype. Inference only (no autograd).
    """
    check_paged_decode_inputs(q, k_pool, v_pool, block_table, lengths, block_size)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    fn = dispatch("paged_decode_attention", backend, q.device)
    return fn(q, k_pool, v_pool, block_table, lengths, block_size, scale)
