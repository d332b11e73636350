"""Triton backend of ``decode_attention``: flash-decoding over a static ``(B, Hkv, L, hd)`` cache.

One program per (row, query head, split of the slots). It reads ``position`` from the device, so one
compiled kernel serves every step, walks only the slots ``<= position`` of its split in tiles of
``BLOCK_N`` (SDPA reads all ``L``), and keeps the online-softmax state ``(m, l, acc)`` in float32, as the
paged kernel does. With one split it writes ``acc / l``; with several (few rows would leave most SMs idle)
each writes its partial state and the paged module's merge kernel combines them.

The launcher is a ``torch.library.triton_op`` whose kernels go through ``wrap_triton``: ``torch.compile``
then sees the Triton kernels themselves and emits them into the graph it generates, so a compiled decode
step stays one graph (one CUDA-graph replay) instead of breaking around an opaque call. Layers:
``_static_decode_kernel`` -> op ``tinylm::static_decode_attention`` -> backend
``decode_attention_triton``. Oracle: ``decode_attention_reference`` in ``decode_attention.py``.
"""

from __future__ import annotations

import torch

from tinylm.kernels.decode_attention import decode_attention_reference, rope_decode_attention_reference
from tinylm.kernels.paged_attention_triton import (
    MAX_HEAD_DIM,
    _merge_splits_kernel,
    choose_splits,
    online_softmax_tile,
    write_split,
)
from tinylm.kernels.registry import register_backend
from tinylm.kernels.triton_support import (
    DEVICE_TYPES,
    HAS_TRITON,
    INTERPRETED,
    kernels_take,
    launchable,
    next_power_of_2,
    tl,
    triton,
    triton_available,
    why_triton_unavailable,
)


@triton.jit
def _static_decode_kernel(
    O, M, L, Q, K, V, POS, VALID, KN, VN, COS, SIN, scale, split_len,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_kt, stride_valid, stride_ob, stride_oh, stride_os,
    stride_nb, stride_nh, stride_cb,
    HEAD_DIM, GROUP: tl.constexpr, HAS_VALID: tl.constexpr, ROTATE: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    split = tl.program_id(2).to(tl.int64)
    kvh = (h // GROUP).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    mask_d = d < HEAD_DIM
    q_ptr = Q + b * stride_qb + h * stride_qh
    q = tl.load(q_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    pos = tl.load(POS).to(tl.int64)
    start = split * split_len
    end = tl.minimum(start + split_len, pos + 1)
    base = b * stride_kb + kvh * stride_kh
    if ROTATE:  # q and the new k arrive unrotated: RoPE (half-split layout) here, the new k/v from registers
        half = HEAD_DIM // 2
        partner = tl.where(d < half, d + half, d - half)
        sign = tl.where(d < half, -1.0, 1.0)
        cos = tl.load(COS + b * stride_cb + d, mask=mask_d, other=0.0).to(tl.float32)
        sin = tl.load(SIN + b * stride_cb + d, mask=mask_d, other=0.0).to(tl.float32)
        q_partner = tl.load(q_ptr + partner, mask=mask_d, other=0.0).to(tl.float32)
        # rounded to the input dtype, as the unfused path stores them
        q = (q * cos + sign * q_partner * sin).to(Q.dtype.element_ty).to(tl.float32)
        n_ptr = KN + b * stride_nb + kvh * stride_nh
        k_new = tl.load(n_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
        k_partner = tl.load(n_ptr + partner, mask=mask_d, other=0.0).to(tl.float32)
        k_new = (k_new * cos + sign * k_partner * sin).to(K.dtype.element_ty).to(tl.float32)
        v_new = tl.load(VN + b * stride_nb + kvh * stride_nh + d, mask=mask_d, other=0.0)
        v_new = v_new.to(V.dtype.element_ty).to(tl.float32)
        end = tl.minimum(start + split_len, pos)  # the cached slots before the new token's
    q = (q * scale).to(tl.float32)  # Inductor passes a Python float as fp64: keep the scores fp32
    m_i = tl.max(tl.full((BLOCK_N,), float("-inf"), tl.float32), axis=0)
    l_i = tl.sum(tl.zeros((BLOCK_N,), tl.float32), axis=0)
    acc = tl.zeros((BLOCK_D,), tl.float32)
    for n0 in range(start, end, BLOCK_N):
        j = n0 + tl.arange(0, BLOCK_N)
        live = j < end
        if HAS_VALID:  # padding slots of a left-padded prompt are off; the query's own slot is on
            real = tl.load(VALID + b * stride_valid + j, mask=live, other=0) != 0
            live = live & (real | (j == pos))
        offs = base + j[:, None] * stride_kt + d[None, :]
        kv_mask = live[:, None] & mask_d[None, :]
        k = tl.load(K + offs, mask=kv_mask, other=0.0).to(tl.float32)  # (BLOCK_N, BLOCK_D)
        v = tl.load(V + offs, mask=kv_mask, other=0.0).to(tl.float32)
        m_i, l_i, acc = online_softmax_tile(q, k, v, live, m_i, l_i, acc)
    if ROTATE:  # the new token, in the split that holds its slot; one program per kv head stores it
        mine = (pos >= start) & (pos < start + split_len)
        s = tl.where(mine, tl.sum(q * k_new, axis=0), float("-inf"))
        m_new = tl.maximum(m_i, s)
        alpha = tl.where(m_new == float("-inf"), 1.0, tl.exp(m_i - m_new))
        p = tl.where(mine, tl.exp(s - m_new), 0.0)
        m_i, l_i, acc = m_new, l_i * alpha + p, acc * alpha + p * v_new
        store = tl.where(mine & (h % GROUP == 0), mask_d, False)  # (the interpreter rejects block & scalar)
        tl.store(K + base + pos * stride_kt + d, k_new.to(K.dtype.element_ty), mask=store)
        tl.store(V + base + pos * stride_kt + d, v_new.to(V.dtype.element_ty), mask=store)
    ml = (b * tl.num_programs(1) + h) * tl.num_programs(2) + split
    write_split(O + b * stride_ob + h * stride_oh + split * stride_os + d, M + ml, L + ml, acc, m_i, l_i,
                mask_d, SPLIT)  # fmt: skip


_decode_launch, _merge_launch = launchable(_static_decode_kernel), launchable(_merge_splits_kernel)


def static_decode(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    position: torch.Tensor,
    key_valid: torch.Tensor | None,
    scale: float,
    n_splits: int = 0,
    rope: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Launch the kernel(s) on contiguous inputs; ``n_splits`` 0 picks it from the grid and ``L``.

    ``rope`` = ``(k_new, v_new, cos, sin)``: ``q`` and ``k_new`` (B, Hkv, hd) are unrotated; the kernel
    rotates them by ``cos``/``sin`` (B, hd), writes the new key and ``v_new`` at slot ``position`` of
    ``keys``/``values`` and attends over it (``rope_decode_attention``)."""
    b, h, hd = q.shape
    length = keys.shape[2]
    splits = choose_splits(b, h, length) if n_splits <= 0 else n_splits
    split_len = -(-length // splits)
    out = torch.empty_like(q)
    block_d = next_power_of_2(hd)
    block_n = max(16, min(64, 8192 // block_d))
    valid = key_valid if key_valid is not None else position  # a placeholder pointer when unused
    k_new, v_new, cos, sin = rope if rope is not None else (q, q, q, q)  # placeholders when unused
    common = (q, keys, values, position, valid, k_new, v_new, cos, sin, scale, split_len, q.stride(0),
              q.stride(1), keys.stride(0), keys.stride(1), keys.stride(2),
              valid.stride(0) if key_valid is not None else 0)  # fmt: skip
    rope_strides = (k_new.stride(0), k_new.stride(1), cos.stride(0), hd)
    meta = dict(GROUP=h // keys.shape[1], HAS_VALID=key_valid is not None, ROTATE=rope is not None,
                BLOCK_D=block_d, BLOCK_N=block_n)  # fmt: skip
    if splits == 1:
        _decode_launch[(b, h, 1)](
            out, out, out, *common, out.stride(0), out.stride(1), 0, *rope_strides, **meta, SPLIT=False
        )
        return out
    part = torch.empty((b, h, splits, hd), device=q.device, dtype=torch.float32)
    m = torch.empty((b, h, splits), device=q.device, dtype=torch.float32)
    lsum = torch.empty_like(m)
    _decode_launch[(b, h, splits)](
        part, m, lsum, *common, part.stride(0), part.stride(1), part.stride(2), *rope_strides, **meta,
        SPLIT=True,
    )  # fmt: skip
    _merge_launch[(b, h)](
        out, part, m, lsum, hd, splits, out.stride(0), out.stride(1), part.stride(0), part.stride(1),
        part.stride(2), BLOCK_D=block_d, BLOCK_S=next_power_of_2(splits),
    )  # fmt: skip
    return out


if HAS_TRITON and not INTERPRETED:
    from torch.library import triton_op

    @triton_op("tinylm::static_decode_attention", mutates_args=())
    def _static_decode_op(
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        position: torch.Tensor,
        key_valid: torch.Tensor | None,
        scale: float,
    ) -> torch.Tensor:
        return static_decode(q, keys, values, position, key_valid, scale)

    @triton_op("tinylm::static_rope_decode_attention", mutates_args=("keys", "values"))
    def _static_rope_decode_op(
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
        return static_decode(q, keys, values, position, key_valid, scale, rope=(k_new, v_new, cos, sin))

    _run, _run_rope = _static_decode_op, _static_rope_decode_op
else:
    _run = static_decode

    def _run_rope(q, k_new, v_new, cos, sin, keys, values, position, key_valid, scale):
        return static_decode(q, keys, values, position, key_valid, scale, rope=(k_new, v_new, cos, sin))


def _kernel_takes(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> bool:
    """Whether the kernel runs these inputs (else the reference): not float64, one dtype, a contiguous
    head dim of at most ``MAX_HEAD_DIM`` and keys and values laid out alike."""
    takes = kernels_take("decode_attention", q=q, keys=keys, values=values)
    takes = takes and q.dtype != torch.float64 and keys.dtype == q.dtype and values.dtype == q.dtype
    takes = takes and keys.stride() == values.stride() and keys.stride(-1) == 1
    return takes and q.shape[-1] <= MAX_HEAD_DIM


@register_backend(
    "decode_attention",
    "triton",
    available=triton_available,
    why_unavailable=why_triton_unavailable,
    device_types=DEVICE_TYPES,
)
def decode_attention_triton(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    position: torch.Tensor,
    key_valid: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """The kernel for head dims up to ``MAX_HEAD_DIM``; the reference for float64, larger heads, mixed
    dtypes or a cache that is not contiguous."""
    if not _kernel_takes(q, keys, values):
        return decode_attention_reference(q, keys, values, position, key_valid, scale)
    valid = key_valid.contiguous() if key_valid is not None else None
    return _run(q.contiguous(), keys, values, position.reshape(1), valid, scale)


@register_backend(
    "rope_decode_attention",
    "triton",
    available=triton_available,
    why_unavailable=why_triton_unavailable,
    device_types=DEVICE_TYPES,
)
def rope_decode_attention_triton(
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
    """RoPE, the cache write and the attention in one kernel; the reference where the kernel does not take
    the inputs (as ``decode_attention_triton``)."""
    if not _kernel_takes(q, keys, values):
        args = (q, k_new, v_new, cos, sin, keys, values, position, key_valid, scale)
        return rope_decode_attention_reference(*args)
    valid = key_valid.contiguous() if key_valid is not None else None
    # views are taken as they are (q, k, v of a decode step are slices of one fused projection, cos/sin
    # one row broadcast over the batch): a copy would be one more kernel per layer
    q = q if q.stride(-1) == 1 else q.contiguous()
    k_new, v_new = _alike(k_new, v_new)
    cos, sin = _alike(cos, sin)
    return _run_rope(q, k_new, v_new, cos, sin, keys, values, position.reshape(1), valid, scale)


def _alike(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a``, ``b`` as they are when they share strides with a unit last one (the kernel reads both with
    one set of strides); contiguous copies otherwise."""
    if a.stride() == b.stride() and a.stride(-1) == 1:
        return a, b
    return a.contiguous(), b.contiguous()
