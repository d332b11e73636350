"""Triton backend of ``int4_linear``: a GEMV over the packed int4 weight for decode (few rows).

Each program computes ``BLOCK_N`` outputs of one row of ``x``. Per step along ``K`` it loads a
``(BLOCK_N, BLOCK_K / 2)`` tile of packed bytes, splits each byte into its two nibbles (columns ``2j`` and
``2j + 1``), multiplies them by the even and odd columns of the ``x`` chunk, scales each pair by its
group's scale (both columns of a pair are in one group: the group size is even) and reduces along ``K``::

    y[m, n] = sum_k (q[n, k] - 8) * scale[n, k // G] * x[m, k]  (+ bias[n])

The weight is read once, as half a byte per value. For more than ``GEMV_MAX_ROWS`` rows the reference
(``F.linear`` on the dequantized weight) is used. Layers: ``_int4_gemv_kernel`` -> launcher ``int4_gemv``
-> backend ``int4_linear_triton``; oracle ``int4_linear_reference`` in ``int4_gemv.py``.
"""

import torch

from tinylm.kernels.int4_gemv import int4_linear_reference
from tinylm.kernels.registry import register_backend
from tinylm.kernels.triton_support import (
    DEVICE_TYPES,
    HAS_TRITON,
    INTERPRETED,
    kernels_take,
    tl,
    triton,
    triton_available,
    why_triton_unavailable,
)

GEMV_MAX_ROWS = 16
BLOCK_N, BLOCK_K = 16, 64  # the interpreter's (and the untuned) tile; BLOCK_K counts int4 values
# (BLOCK_N, BLOCK_K, warps) tried by the autotuner on a GPU: few rows per program and a wide K slice, as
# for the int8 GEMV (half the bytes per value, so twice the values per slice)
TUNE_CONFIGS = ((4, 1024, 4), (4, 2048, 4), (8, 1024, 4), (4, 4096, 8))


@triton.jit
def _int4_gemv_kernel(
    Y, X, P, S, B, N, K, stride_xm, stride_pn, stride_sn, stride_ym,
    GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    m = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    HALF: tl.constexpr = BLOCK_K // 2
    for k0 in range(0, K, BLOCK_K):
        offs_j = k0 // 2 + tl.arange(0, HALF)  # byte columns: value columns 2j and 2j + 1
        mask_j = offs_j < K // 2
        x_row = X + m * stride_xm
        x_even = tl.load(x_row + 2 * offs_j, mask=mask_j, other=0.0).to(tl.float32)
        x_odd = tl.load(x_row + 2 * offs_j + 1, mask=mask_j, other=0.0).to(tl.float32)
        mask = mask_n[:, None] & mask_j[None, :]
        p = tl.load(P + offs_n[:, None].to(tl.int64) * stride_pn + offs_j[None, :], mask=mask, other=0)
        p = p.to(tl.int32)
        lo = ((p & 15) - 8).to(tl.float32)
        hi = ((p >> 4) - 8).to(tl.float32)
        s_ptrs = S + offs_n[:, None].to(tl.int64) * stride_sn + (2 * offs_j[None, :]) // GROUP
        s = tl.load(s_ptrs, mask=mask, other=0.0).to(tl.float32)
        acc += tl.sum(s * (lo * x_even[None, :] + hi * x_odd[None, :]), axis=1)
    if HAS_BIAS:
        acc += tl.load(B + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(Y + m * stride_ym + offs_n, acc.to(Y.dtype.element_ty), mask=mask_n)


_tuned_kernel = None
if HAS_TRITON and not INTERPRETED:
    _tuned_kernel = triton.autotune(
        configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w) for n, k, w in TUNE_CONFIGS],
        key=["N", "K"],
    )(_int4_gemv_kernel)


def int4_gemv(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Launch the GEMV kernel: ``x`` (..., K) with few rows, ``packed`` uint8 (N, K / 2), ``scale``
    (N, K / G)."""
    n, k = packed.shape[0], 2 * packed.shape[1]
    x2 = x.reshape(-1, k).contiguous()
    packed, scale = packed.contiguous(), scale.contiguous()
    y = torch.empty((x2.shape[0], n), device=x.device, dtype=x.dtype)
    if x2.shape[0] > 0 and n > 0:
        args = (y, x2, packed, scale, bias if bias is not None else y, n, k, x2.stride(0), packed.stride(0),
                scale.stride(0), y.stride(0))  # fmt: skip
        flags = {"GROUP": k // scale.shape[1], "HAS_BIAS": bias is not None}
        rows = x2.shape[0]
        if _tuned_kernel is not None:
            _tuned_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), rows)](*args, **flags)
        else:
            grid = (triton.cdiv(n, BLOCK_N), rows)
            _int4_gemv_kernel[grid](*args, **flags, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    return y.reshape(*x.shape[:-1], n)


@register_backend(
    "int4_linear",
    "triton",
    available=triton_available,
    why_unavailable=why_triton_unavailable,
    device_types=DEVICE_TYPES,
)
def int4_linear_triton(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The packed int4 GEMV for up to ``GEMV_MAX_ROWS`` rows of ``x``; the reference for more rows or
    off-device."""
    rows = x.numel() // max(x.shape[-1], 1)
    if rows > GEMV_MAX_ROWS or not kernels_take("int4_linear", x=x, scale=scale):
        return int4_linear_reference(x, packed, scale, bias)
    return int4_gemv(x, packed, scale, bias)
