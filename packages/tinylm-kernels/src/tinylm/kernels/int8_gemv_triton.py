"""Triton backend of ``int8_linear``: a fused int8 GEMV for decode (few rows), the reference otherwise.

Each program computes ``BLOCK_N`` outputs of one row of ``x``: it streams ``(BLOCK_N, BLOCK_K)`` int8
tiles of the weight, converts them to float32 in registers, multiplies by the ``x`` chunk and reduces
along K, then applies the per-row scale (and bias) once at the end::

    y[m, n] = scale[n] * sum_k W_q[n, k] * x[m, k]  (+ bias[n])

so the weight is read once, as int8: half the bytes of bf16, which is what a memory-bound batch-1 decode
step pays for. For more than ``GEMV_MAX_ROWS`` rows (prefill) a matrix multiply is the right tool and the
reference (``F.linear`` on the dequantized weight) is used. Layers: ``_int8_gemv_kernel`` -> launcher
``int8_gemv`` -> backend ``int8_linear_triton`` (no autograd: inference only). Oracle:
``int8_linear_reference`` in ``int8_gemv.py``. References: gpt-fast ``quantize.py`` (WeightOnlyInt8Linear);
the split-free GEMV layout of FasterTransformer's weight-only kernels.
"""

import torch

from tinylm.kernels.int8_gemv import int8_linear_reference
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
BLOCK_N, BLOCK_K = 16, 256  # the interpreter's (and the untuned) tile
# On a GPU the tile is autotuned per (N, K) among the tiles that won with the weights streamed from HBM
# (benchmarks/bench_int8_gemv_hbm.py on an H100, BENCHMARKS 5): a few rows per program and a wide K slice
# keep enough bytes in flight. The other tiles tried there were up to 6x slower, so they are not offered:
# whichever tile a tuner picks (Triton's, or Inductor's around a compiled graph) is one of these.
TUNE_CONFIGS = ((4, 512, 4), (4, 1024, 4), (4, 2048, 8))


@triton.jit
def _int8_gemv_kernel(
    Y, X, W, S, B, N, K, stride_xm, stride_wn, stride_ym,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    m = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(X + m * stride_xm + offs_k, mask=mask_k, other=0.0).to(tl.float32)  # (BLOCK_K,)
        w_ptrs = W + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
        w = tl.load(w_ptrs, mask=mask_n[:, None] & mask_k[None, :], other=0).to(
            tl.float32
        )  # (BLOCK_N, BLOCK_K)
        acc += tl.sum(w * x[None, :], axis=1)
    acc = acc * tl.load(S + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(B + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(Y + m * stride_ym + offs_n, acc.to(Y.dtype.element_ty), mask=mask_n)


_tuned_kernel = None
if HAS_TRITON and not INTERPRETED:
    _tuned_kernel = triton.autotune(
        configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w) for n, k, w in TUNE_CONFIGS],
        key=["N", "K"],
    )(_int8_gemv_kernel)


def int8_gemv(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Launch the GEMV kernel: ``x`` (..., K) with few rows, ``weight`` int8 (N, K), ``scale`` (N,)."""
    n, k = weight.shape
    x2 = x.reshape(-1, k).contiguous()
    weight, scale = weight.contiguous(), scale.contiguous()
    y = torch.empty((x2.shape[0], n), device=x.device, dtype=x.dtype)
    if x2.shape[0] > 0 and n > 0:
        args = (y, x2, weight, scale, bias if bias is not None else scale, n, k, x2.stride(0),
                weight.stride(0), y.stride(0))  # fmt: skip
        rows = x2.shape[0]
        if _tuned_kernel is not None:
            _tuned_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), rows)](
                *args, HAS_BIAS=bias is not None
            )
        else:
            grid = (triton.cdiv(n, BLOCK_N), rows)
            _int8_gemv_kernel[grid](*args, HAS_BIAS=bias is not None, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    return y.reshape(*x.shape[:-1], n)


@register_backend(
    "int8_linear",
    "triton",
    available=triton_available,
    why_unavailable=why_triton_unavailable,
    device_types=DEVICE_TYPES,
)
def int8_linear_triton(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Fused GEMV for up to ``GEMV_MAX_ROWS`` rows of ``x``; the reference for more rows or off-device."""
    rows = x.numel() // max(x.shape[-1], 1)
    if rows > GEMV_MAX_ROWS or not kernels_take("int8_linear", x=x, scale=scale):
        return int8_linear_reference(x, weight, scale, bias)
    return int8_gemv(x, weight, scale, bias)
