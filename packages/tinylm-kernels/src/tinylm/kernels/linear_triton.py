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

from tinylm.kernels.linear import decode_linear_reference, linear_reference
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
    Y, X, W, B, G, R, M, N, K, eps, stride_xm, stride_wn, stride_ym, stride_rm,
    HAS_BIAS: tl.constexpr, NORM: tl.constexpr, SWIGLU: tl.constexpr, RESIDUAL: tl.constexpr,
    GLU_OUT: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m, mask_n = offs_m < M, offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # GLU_OUT: W is [gate; up], N outputs of each
    squares = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x_ptrs = X + offs_m[:, None] * stride_xm + offs_k[None, :]
        x_mask = mask_m[:, None] & mask_k[None, :]
        x = tl.load(x_ptrs, mask=x_mask, other=0.0)
        if SWIGLU:  # x is [gate | up]: the input is silu(gate) * up, rounded as the plain op rounds it
            gate = x.to(tl.float32)
            up = tl.load(x_ptrs + K, mask=x_mask, other=0.0).to(tl.float32)
            x = (gate * tl.sigmoid(gate) * up).to(W.dtype.element_ty)
        if NORM:  # RMSNorm of x folded in: its 1/rms is one factor per row, applied after the sum
            xf = x.to(tl.float32)
            squares += tl.sum(xf * xf, axis=1)
            x = (xf * tl.load(G + offs_k, mask=mask_k, other=0.0).to(tl.float32)[None, :]).to(
                W.dtype.element_ty
            )
        w_ptrs = W + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
        w_mask = mask_n[:, None] & mask_k[None, :]
        w = tl.load(w_ptrs, mask=w_mask, other=0.0)
        if IEEE:
            acc = tl.dot(x, tl.trans(w), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w), acc)
        if GLU_OUT:
            w_up = tl.load(w_ptrs + N * stride_wn, mask=w_mask, other=0.0)
            if IEEE:
                acc_up = tl.dot(x, tl.trans(w_up), acc_up, input_precision="ieee")
            else:
                acc_up = tl.dot(x, tl.trans(w_up), acc_up)
    if NORM:  # eps may come in as float64 from a compiled graph: keep the factor float32
        acc = acc * tl.rsqrt((squares / K + eps).to(tl.float32))[:, None]
    if NORM and GLU_OUT:
        acc_up = acc_up * tl.rsqrt((squares / K + eps).to(tl.float32))[:, None]
    if HAS_BIAS:
        acc += tl.load(B + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if GLU_OUT:
            acc_up += tl.load(B + N + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if GLU_OUT:  # silu(gate) * up of the two products, each rounded as the plain op rounds it
        gate = acc.to(Y.dtype.element_ty).to(tl.float32)
        acc = gate * tl.sigmoid(gate) * acc_up.to(Y.dtype.element_ty).to(tl.float32)
    out_mask = mask_m[:, None] & mask_n[None, :]
    if RESIDUAL:
        acc += tl.load(R + offs_m[:, None] * stride_rm + offs_n[None, :], mask=out_mask, other=0.0).to(
            tl.float32
        )
    y_ptrs = Y + offs_m[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=out_mask)


def choose_tile(m: int, n: int, k: int, element_size: int = 2, weight_tiles: int = 1) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_K)`` for ``m`` rows of ``(n, k)``: the H100 winners of bench_linear.py
    (thin output tiles, a wide ``K`` step; wider output tiles for a vocabulary-sized head), with the ``K``
    step narrowed where one pipeline stage of the ``x`` and ``weight_tiles`` ``W`` tiles (2 with
    ``swiglu_out``) would pass ``STAGE_BYTES`` (float32 at 64 rows: three stages of 256-wide tiles need more
    shared memory than an SM has)."""
    block_m = max(16, next_power_of_2(m))
    block_n = 64 if n >= 16384 else 32 if m <= 16 and k <= 1024 else 16
    block_k = 64 if n >= 16384 else min(256, max(16, next_power_of_2(k)))
    while block_k > 16 and (block_m + weight_tiles * block_n) * block_k * element_size > STAGE_BYTES:
        block_k //= 2
    return block_m, block_n, block_k


_launch = launchable(_linear_kernel)


def few_row_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    tile: tuple[int, int, int] | None = None,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    swiglu: bool = False,
    residual: torch.Tensor | None = None,
    swiglu_out: bool = False,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Launch the kernel: ``x`` (..., K) with at most ``MAX_ROWS`` rows, ``weight`` (N, K) contiguous;
    ``norm_weight``, ``swiglu`` (``x`` is (..., 2K)), ``residual`` and ``swiglu_out`` (``weight`` is
    ``[gate; up]`` (2N, K), the output N wide) as in ``decode_linear``.

    ``tile``: ``(BLOCK_M, BLOCK_N, BLOCK_K)`` in place of ``choose_tile``'s; ``num_warps`` /
    ``num_stages`` in place of Triton's defaults (benchmarks sweep them)."""
    n, k = weight.shape
    n = n // 2 if swiglu_out else n
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    m = x2.shape[0]
    tiles = 2 if swiglu_out else 1
    block_m, block_n, block_k = tile or choose_tile(m, tiles * n, k, x.element_size(), tiles)
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    r = residual.reshape(m, n).contiguous() if residual is not None else y  # y: a placeholder pointer
    options = {key: v for key, v in (("num_warps", num_warps), ("num_stages", num_stages)) if v is not None}
    _launch[(triton.cdiv(n, block_n),)](
        y, x2, weight, bias if bias is not None else y, norm_weight if norm_weight is not None else y, r,
        m, n, k, eps, x2.stride(0), weight.stride(0), y.stride(0), r.stride(0),
        HAS_BIAS=bias is not None, NORM=norm_weight is not None, SWIGLU=swiglu, RESIDUAL=residual is not None,
        GLU_OUT=swiglu_out, IEEE=x.dtype == torch.float32,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, **options,
    )  # fmt: skip
    return y.reshape(*x.shape[:-1], n)


if HAS_TRITON and not INTERPRETED:
    from torch.library import triton_op

    @triton_op("tinylm::few_row_linear", mutates_args=())
    def _few_row_linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return few_row_linear(x, weight, bias)

    @triton_op("tinylm::few_row_decode_linear", mutates_args=())
    def _few_row_decode_linear_op(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        norm_weight: torch.Tensor | None,
        eps: float,
        swiglu: bool,
        residual: torch.Tensor | None,
        swiglu_out: bool,
    ) -> torch.Tensor:
        return few_row_linear(x, weight, bias, None, norm_weight, eps, swiglu, residual, swiglu_out)

    _run, _run_decode = _few_row_linear_op, _few_row_decode_linear_op
else:
    _run = few_row_linear

    def _run_decode(x, weight, bias, norm_weight, eps, swiglu, residual, swiglu_out):
        return few_row_linear(x, weight, bias, None, norm_weight, eps, swiglu, residual, swiglu_out)


def _kernel_takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Up to ``MAX_ROWS`` rows of float16/bfloat16/float32 on the device, ``x`` in ``weight``'s dtype,
    a row-major weight; else the reference (more rows, float64, off-device)."""
    rows = x.numel() // max(x.shape[-1], 1)
    takes = 0 < rows <= MAX_ROWS and x.dtype != torch.float64 and weight.stride(-1) == 1
    return takes and kernels_take("linear", x=x, weight=weight) and x.dtype == weight.dtype


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
    if not _kernel_takes(x, weight):
        return linear_reference(x, weight, bias)
    return _run(x, weight.contiguous(), bias.contiguous() if bias is not None else None)


@register_backend(
    "decode_linear",
    "triton",
    available=triton_available,
    why_unavailable=why_triton_unavailable,
    device_types=DEVICE_TYPES,
)
def decode_linear_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    norm_weight: torch.Tensor | None,
    eps: float,
    swiglu: bool,
    residual: torch.Tensor | None,
    swiglu_out: bool = False,
) -> torch.Tensor:
    """The kernel with the norm / SwiGLU / residual folded in, where ``linear_triton`` takes the inputs; the
    reference (the plain ops in sequence) otherwise."""
    if not _kernel_takes(x, weight):
        return decode_linear_reference(x, weight, bias, norm_weight, eps, swiglu, residual, swiglu_out)
    c = lambda t: t.contiguous() if t is not None else None  # noqa: E731
    return _run_decode(x, weight.contiguous(), c(bias), c(norm_weight), eps, swiglu, c(residual), swiglu_out)
