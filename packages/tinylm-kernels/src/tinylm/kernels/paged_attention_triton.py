"""Triton backend of ``paged_decode_attention``: online softmax straight over the block table, no gather.

One program per (batch row, query head, split of the row's positions). It walks its positions in tiles of
``BLOCK_N``: for each position it reads the block id from the row's table and loads the key/value from
its slot ``block * block_size + offset`` of the pool (kv head ``h // group``, so GQA costs no copy), and
keeps the running max ``m``, normaliser ``l`` and weighted sum ``acc`` in float32 (float64 inputs go to
the reference: the kernel takes fp16/bf16/fp32)::

    m' = max(m, max_j s_j)      l' = l e^(m - m') + sum_j e^(s_j - m')
    acc' = acc e^(m - m') + sum_j e^(s_j - m') v_j

With one split the program writes ``acc / l``. With several (flash-decoding: few rows would leave most of
the GPU idle) each writes its partial ``(m, l, acc)`` and a second small kernel merges them. Layers:
``_paged_decode_kernel`` / ``_merge_splits_kernel`` -> launcher ``paged_decode`` -> backend
``paged_decode_attention_triton``. Oracle: ``paged_decode_attention_reference`` in ``paged_attention.py``.
References: vLLM's paged_attention kernels; Dao et al. 2023, "Flash-Decoding for long-context inference".
"""

import torch

from tinylm.kernels.paged_attention import paged_decode_attention_reference
from tinylm.kernels.registry import register_backend
from tinylm.kernels.triton_support import (
    DEVICE_TYPES,
    kernels_take,
    next_power_of_2,
    tl,
    triton,
    triton_available,
    why_triton_unavailable,
)

MAX_HEAD_DIM = 256
TARGET_PROGRAMS = 264  # ~2 waves on an H100's 132 SMs: split rows' positions until the grid is this big
MIN_SPLIT_LEN = 64  # positions per split at least (a split's fixed cost must stay small against its work)


@triton.jit
def online_softmax_tile(q, k, v, live, m_i, l_i, acc):
    """One tile of keys ``k`` / values ``v`` (BLOCK_N, BLOCK_D) into the running ``(m, l, acc)`` of query
    ``q`` (already scaled); slots off in ``live`` count for nothing. A state that has seen no live slot
    keeps m = -inf (exp(-inf - -inf) would be nan, hence the guard)."""
    s = tl.where(live, tl.sum(k * q[None, :], axis=1), float("-inf"))  # (BLOCK_N,)
    m_new = tl.maximum(m_i, tl.max(s, axis=0))
    alpha = tl.where(m_new == float("-inf"), 1.0, tl.exp(m_i - m_new))
    p = tl.where(live, tl.exp(s - m_new), 0.0)
    return m_new, l_i * alpha + tl.sum(p, axis=0), acc * alpha + tl.sum(p[:, None] * v, axis=0)


@triton.jit
def write_split(o_ptr, m_ptr, l_ptr, acc, m_i, l_i, mask_d, SPLIT: tl.constexpr):
    """A single split writes the result ``acc / l``; one of several writes its state for the merge kernel
    (a split with no live slot leaves m = -inf, l = 0: it weighs nothing there)."""
    if not SPLIT:
        tl.store(o_ptr, (acc / l_i).to(o_ptr.dtype.element_ty), mask=mask_d)
    else:
        tl.store(o_ptr, acc, mask=mask_d)
        tl.store(m_ptr, m_i)
        tl.store(l_ptr, l_i)


@triton.jit
def _paged_decode_kernel(
    O, M, L, Q, K, V, T, LEN, scale, split_len,
    stride_qb, stride_qh, stride_kt, stride_kh, stride_tb, stride_ob, stride_oh, stride_os,
    HEAD_DIM, GROUP: tl.constexpr, PAGE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    split = tl.program_id(2).to(tl.int64)
    kvh = (h // GROUP).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    mask_d = d < HEAD_DIM
    # Inductor passes a Python float as fp64 where Triton passes fp32: keep the scores fp32 either way
    q = tl.load(Q + b * stride_qb + h * stride_qh + d, mask=mask_d, other=0.0).to(tl.float32)
    q = (q * scale).to(tl.float32)  # (a float in the interpreter: no .to on the scale itself)
    length = tl.load(LEN + b).to(tl.int64)
    start = split * split_len
    end = tl.minimum(start + split_len, length)
    m_i = tl.max(tl.full((BLOCK_N,), float("-inf"), tl.float32), axis=0)
    l_i = tl.sum(tl.zeros((BLOCK_N,), tl.float32), axis=0)
    acc = tl.zeros((BLOCK_D,), tl.float32)
    for n0 in range(start, end, BLOCK_N):
        j = n0 + tl.arange(0, BLOCK_N)
        valid = j < end
        block = tl.load(T + b * stride_tb + j // PAGE, mask=valid, other=0).to(tl.int64)
        offs = (block * PAGE + j % PAGE)[:, None] * stride_kt + kvh * stride_kh + d[None, :]
        kv_mask = valid[:, None] & mask_d[None, :]
        k = tl.load(K + offs, mask=kv_mask, other=0.0).to(tl.float32)  # (BLOCK_N, BLOCK_D)
        v = tl.load(V + offs, mask=kv_mask, other=0.0).to(tl.float32)
        m_i, l_i, acc = online_softmax_tile(q, k, v, valid, m_i, l_i, acc)
    ml = (b * tl.num_programs(1) + h) * tl.num_programs(2) + split
    write_split(O + b * stride_ob + h * stride_oh + split * stride_os + d, M + ml, L + ml, acc, m_i, l_i,
                mask_d, SPLIT)  # fmt: skip


@triton.jit
def _merge_splits_kernel(
    O, PART, M, L, HEAD_DIM, n_splits, stride_ob, stride_oh, stride_pb, stride_ph, stride_ps,
    BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    mask_s = s < n_splits
    ml = (b * tl.num_programs(1) + h) * n_splits + s
    m = tl.load(M + ml, mask=mask_s, other=float("-inf"))
    lv = tl.load(L + ml, mask=mask_s, other=0.0)
    m_all = tl.max(m, axis=0)
    w = tl.where(mask_s & (lv > 0), tl.exp(m - m_all), 0.0)  # (BLOCK_S,)
    offs = b * stride_pb + h * stride_ph + s[:, None] * stride_ps + d[None, :]
    part = tl.load(PART + offs, mask=mask_s[:, None] & (d[None, :] < HEAD_DIM), other=0.0)
    out = tl.sum(part * w[:, None], axis=0) / tl.sum(lv * w, axis=0)
    tl.store(O + b * stride_ob + h * stride_oh + d, out.to(O.dtype.element_ty), mask=d < HEAD_DIM)


def choose_splits(batch: int, heads: int, max_positions: int) -> int:
    """Splits of each row's positions: enough programs to fill the GPU, at least ``MIN_SPLIT_LEN`` each."""
    want = max(1, TARGET_PROGRAMS // max(batch * heads, 1))
    return max(1, min(want, max_positions // MIN_SPLIT_LEN, 64))


def paged_decode(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    lengths: torch.Tensor,
    block_size: int,
    scale: float,
    n_splits: int | None = None,
) -> torch.Tensor:
    """Launch the kernel(s); ``n_splits`` None picks it from the grid size and the table's width."""
    b, h, hd = q.shape
    hkv = k_pool.shape[1]
    max_positions = block_table.shape[1] * block_size
    splits = choose_splits(b, h, max_positions) if n_splits is None else max(1, int(n_splits))
    split_len = -(-max_positions // splits)
    q, k_pool, v_pool = q.contiguous(), k_pool.contiguous(), v_pool.contiguous()
    block_table, lengths = block_table.contiguous(), lengths.contiguous()
    out = torch.empty_like(q)
    block_d = next_power_of_2(hd)
    block_n = max(16, min(64, 8192 // block_d))
    common = (q, k_pool, v_pool, block_table, lengths, scale, split_len, q.stride(0), q.stride(1),
              k_pool.stride(0), k_pool.stride(1), block_table.stride(0))  # fmt: skip
    meta = dict(GROUP=h // hkv, PAGE=block_size, BLOCK_D=block_d, BLOCK_N=block_n)
    if b == 0:
        return out
    if splits == 1:
        _paged_decode_kernel[(b, h, 1)](
            out, out, out, *common, out.stride(0), out.stride(1), 0, hd, **meta, SPLIT=False
        )
        return out
    part = torch.empty((b, h, splits, hd), device=q.device, dtype=torch.float32)
    m = torch.empty((b, h, splits), device=q.device, dtype=torch.float32)
    lsum = torch.empty_like(m)
    _paged_decode_kernel[(b, h, splits)](
        part, m, lsum, *common, part.stride(0), part.stride(1), part.stride(2), hd, **meta, SPLIT=True
    )
    _merge_splits_kernel[(b, h)](
        out, part, m, lsum, hd, splits, out.stride(0), out.stride(1), part.stride(0), part.stride(1),
        part.stride(2), BLOCK_D=block_d, BLOCK_S=next_power_of_2(splits),
    )  # fmt: skip
    return out


@register_backend(
    "paged_decode_attention",
    "triton",
    available=triton_available,
    why_unavailable=why_triton_unavailable,
    device_types=DEVICE_TYPES,
)
def paged_decode_attention_triton(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    lengths: torch.Tensor,
    block_size: int,
    scale: float,
) -> torch.Tensor:
    """The kernel for head dims up to ``MAX_HEAD_DIM``; the reference for larger ones or off-device."""
    takes = kernels_take("paged_decode_attention", q=q, k_pool=k_pool, v_pool=v_pool)
    takes = takes and q.dtype != torch.float64  # the kernel accumulates in float32
    if not takes or q.shape[-1] > MAX_HEAD_DIM or k_pool.dtype != q.dtype or v_pool.dtype != q.dtype:
        return paged_decode_attention_reference(q, k_pool, v_pool, block_table, lengths, block_size, scale)
    return paged_decode(q, k_pool, v_pool, block_table, lengths, block_size, scale)
