"""Triton backend of ``linear``: a thin-tile matrix multiply for few rows (decode), the reference otherwise.

Each program computes a ``(BLOCK_M, BLOCK_N)`` tile of ``y``: every row of ``x`` (``BLOCK_M`` covers all
of them) against ``BLOCK_N`` rows of ``W`` over all of ``K``, with ``tl.dot`` on the tensor cores, so the
weight is read exactly once. ``choose_tile`` holds the tiles that won per shape on an H100 with the weights
streamed from HBM (``benchmarks/bench_linear.py``, BENCHMARKS 7f). There it beat cuBLAS by 4-13% on the
square o-projection and the 32000-row head and lost by up to 6% on the others: both sit at the same
few-microsecond floor per launch. Splitting ``K`` over more programs lost, the partial sums' extra kernel
costing more than the idle SMs. The launcher is a ``torch.library.triton_op`` (kernel through
``wrap_triton``), so a compiled decode step keeps the kernel inside its one graph. Layers:
``_linear_kernel`` -> ``few_row_linear`` -> op ``tinylm::few_row_linear`` -> backend ``linear_triton``.
Oracle: ``linear_reference`` in ``linear.py``.
"""

from __future__ import annotations

import torch

from tinylm.kernels.linear import linear_reference
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

MAX_ROWS = 64  # more rows: a matrix multiply proper (the reference: cuBLAS)
STAGE_BYTES = 48 * 1024  # x and W tiles of one pipeline stage (Triton keeps 3 stages in shared memory)


@triton.jit
def _linear_kernel(
    Y, X, W, B, M, N, K, stride_xm, stride_wn, stride_ym,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m, mask_n = offs_m < M, offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(X + offs_m[:, None] * stride_xm + offs_k[None, :], mask=mask_m[:, None] & mask_k[None, :],
                    other=0.0)  # fmt: skip
        w = tl.load(W + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :],
                    mask=mask_n[:, None] & mask_k[None, :], other=0.0)  # fmt: skip
        if IEEE:
            acc = tl.dot(x, tl.trans(w), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w), acc)
    if HAS_BIAS:
        acc += tl.load(B + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y_ptrs = Y + offs_m[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def choose_tile(m: int, n: int, k: int, element_size: int = 2) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_K)`` for ``m`` rows of ``(n, k)``: the H100 winners of bench_linear.py
    (thin output tiles, a wide ``K`` step; wider output tiles for a vocabulary-sized head), with the ``K``
    step narrowed where one pipeline stage of the ``x`` and ``W`` tiles would pass ``STAGE_BYTES`` (float32
    at 64 rows: three stages of 256-wide tiles need more shared memory than an SM has)."""
    block_m = max(16, next_power_of_2(m))
    block_n = 64 if n >= 16384 else 32 if m <= 16 and k <= 1024 else 16
    block_k = 64 if n >= 16384 else min(256, max(16, next_power_of_2(k)))
    while block_k > 16 and (block_m + block_n) * block_k * element_size > STAGE_BYTES:
        block_k //= 2
    return block_m, block_n, block_k


_launch = launchable(_linear_kernel)


def few_row_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    tile: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Launch the kernel: ``x`` (..., K) with at most ``MAX_ROWS`` rows, ``weight`` (N, K) contiguous.

    ``tile``: ``(BLOCK_M, BLOCK_N, BLOCK_K)`` in place of ``choose_tile``'s (benchmarks)."""
    n, k = weight.shape
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    block_m, block_n, block_k = tile or choose_tile(m, n, k, x.element_size())
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    _launch[(triton.cdiv(n, block_n),)](
        y, x2, weight, bias if bias is not None else y, m, n, k, x2.stride(0), weight.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_K=block_k,
    )  # fmt: skip
    return y.reshape(*x.shape[:-1], n)


if HAS_TRITON and not INTERPRETED:
    from torch.library import triton_op

    @triton_op("tinylm::few_row_linear", mutates_args=())
    def _few_row_linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return few_row_linear(x, weight, bias)

    _run = _few_row_linear_op
else:
    _run = few_row_linear


@register_backend(
    "linear",
    "triton",
    available=triton_available,
    why_unavailable=why_triton_unavailable,
    device_types=DEVICE_TYPES,
)
def linear_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel for up to ``MAX_ROWS`` rows of float16/bfloat16/float32; the reference otherwise (more
    rows, float64, off-device, a weight that is not row-major)."""
    rows = x.numel() // max(x.shape[-1], 1)
    takes = 0 < rows <= MAX_ROWS and x.dtype != torch.float64 and weight.stride(-1) == 1
    takes = takes and kernels_take("linear", x=x, weight=weight) and x.dtype == weight.dtype
    if not takes:
        return linear_reference(x, weight, bias)
    return _run(x, weight.contiguous(), bias.contiguous() if bias is not None else None)
