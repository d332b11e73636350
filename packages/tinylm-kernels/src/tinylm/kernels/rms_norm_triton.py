"""Triton backend of ``rms_norm``: one program per row forward, row-blocked programs backward.

Forward, per row ``x`` of length ``N`` (statistics in float32, float64 for float64 inputs)::

    rstd = 1 / sqrt(mean(x^2) + eps)        n = x * rstd        y = n.to(x.dtype) * w

Backward, with ``g = dy * w`` (``dy`` alone without a weight)::

    dx = rstd * (g - n * mean(g * n))       dw = sum over rows of dy * n.to(x.dtype)

``rstd`` is saved per row by the forward. ``dw`` is reduced in two steps: each backward program walks a
contiguous band of rows and writes its partial sum to a ``(programs, N)`` buffer, then one torch sum
finishes it (no atomics, so the result is deterministic).

Layers, top to bottom: ``_rms_norm_forward_kernel`` / ``_rms_norm_backward_kernel`` -> launchers
``rms_norm_forward`` / ``rms_norm_backward`` -> ``RMSNormFunction`` -> the registered backend
``rms_norm_triton``. The oracle is ``rms_norm_reference`` in ``rms_norm.py``. References: Zhang &
Sennrich 2019 (arXiv 1910.07467); the Triton layer-norm tutorial; Liger-Kernel ``ops/rms_norm.py``.
"""

import torch

from tinylm.kernels.registry import register_backend
from tinylm.kernels.rms_norm import rms_norm_reference
from tinylm.kernels.triton_support import (
    DEVICE_TYPES,
    INTERPRETED,
    accumulator_dtype,
    kernels_take,
    next_power_of_2,
    tl,
    triton,
    triton_available,
    why_triton_unavailable,
)

MAX_HIDDEN = 65536  # one row is held in registers: one block of next_power_of_2(N) elements


@triton.jit
def _rms_norm_forward_kernel(
    Y, X, W, RSTD, stride_y, stride_x, n_cols, eps,
    HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(ACC)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    tl.store(RSTD + row, rstd)
    y = (x * rstd).to(X.dtype.element_ty)  # cast back before the weight (LLaMA / HF convention)
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=mask, other=0.0)
        y = y.to(ACC) * w.to(ACC)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_backward_kernel(
    DX, DY, X, W, RSTD, DW_PARTIAL, stride_dx, stride_dy, stride_x, n_rows, n_cols, rows_per_program,
    HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=mask, other=0.0).to(ACC)
    dw = tl.zeros((BLOCK,), dtype=ACC)
    row_start = pid.to(tl.int64) * rows_per_program  # int64 bounds: the loop index (row) is int64 too
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    for row in range(row_start, row_end):
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(ACC)
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(ACC)
        rstd = tl.load(RSTD + row)
        n = x * rstd
        if HAS_WEIGHT:
            dw += dy * n.to(X.dtype.element_ty).to(ACC)
            g = dy * w
        else:
            g = dy
        dx = rstd * (g - n * (tl.sum(g * n, axis=0) / n_cols))
        tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
    if HAS_WEIGHT:
        tl.store(DW_PARTIAL + pid.to(tl.int64) * n_cols + cols, dw, mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a ``(rows, N)`` matrix whose rows are contiguous (a view when possible)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _launch_config(n_cols: int) -> tuple[int, int]:
    block = next_power_of_2(n_cols)
    if block > MAX_HIDDEN:
        raise ValueError(f"rms_norm (triton backend): hidden size {n_cols} > {MAX_HIDDEN}; use backend=torch")
    num_warps = 4 if block < 2048 else 8 if block < 8192 else 16 if block < 32768 else 32
    return block, num_warps


def rms_norm_forward(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel: ``(y, rstd)`` with ``y`` shaped like ``x`` and ``rstd`` one per row."""
    x2 = _rows(x)
    n_rows, n_cols = x2.shape
    out_dtype = x.dtype if weight is None else torch.promote_types(x.dtype, weight.dtype)
    y = torch.empty((n_rows, n_cols), dtype=out_dtype, device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
    if n_rows > 0:
        block, num_warps = _launch_config(n_cols)
        w = weight.contiguous() if weight is not None else x2  # any pointer: unused without a weight
        _rms_norm_forward_kernel[(n_rows,)](
            y, x2, w, rstd, y.stride(0), x2.stride(0), n_cols, eps,
            HAS_WEIGHT=weight is not None, ACC=accumulator_dtype(x.dtype), BLOCK=block, num_warps=num_warps,
        )  # fmt: skip
    return y.view(x.shape), rstd


def _backward_programs(n_rows: int, device: torch.device) -> int:
    if INTERPRETED or device.type != "cuda":
        return min(n_rows, 4)  # the interpreter runs programs one after another: few, long ones are faster
    return min(n_rows, torch.cuda.get_device_properties(device).multi_processor_count)


def rms_norm_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the backward kernel: ``(dx, dweight)`` (``dweight`` is None without a weight)."""
    x2, dy2 = _rows(x), _rows(dy)
    n_rows, n_cols = x2.shape
    dx = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    programs = max(1, _backward_programs(n_rows, x.device))
    dw_partial = None
    if weight is not None:
        dw_partial = torch.zeros((programs, n_cols), dtype=rstd.dtype, device=x.device)
    if n_rows > 0:
        block, num_warps = _launch_config(n_cols)
        rows_per_program = -(-n_rows // programs)
        w = weight.contiguous() if weight is not None else x2
        _rms_norm_backward_kernel[(programs,)](
            dx, dy2, x2, w, rstd, dw_partial if dw_partial is not None else rstd,
            dx.stride(0), dy2.stride(0), x2.stride(0), n_rows, n_cols, rows_per_program,
            HAS_WEIGHT=weight is not None, ACC=accumulator_dtype(x.dtype), BLOCK=block, num_warps=num_warps,
        )  # fmt: skip
    dw = None if dw_partial is None else dw_partial.sum(0).to(weight.dtype)
    return dx.view(x.shape), dw


class RMSNormFunction(torch.autograd.Function):
    """Autograd wrapper: the forward saves ``x``, the weight and ``rstd``; the backward recomputes ``n``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
        y, rstd = rms_norm_forward(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        dx, dw = rms_norm_backward(dy, x, weight, rstd)
        return dx, dw, None


@register_backend(
    "rms_norm",
    "triton",
    available=triton_available,
    why_unavailable=why_triton_unavailable,
    device_types=DEVICE_TYPES,
)
def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension with the Triton kernels; tensors off CUDA use the reference."""
    if not kernels_take("rms_norm", x=x, **({} if weight is None else {"weight": weight})):
        return rms_norm_reference(x, weight, eps)
    return RMSNormFunction.apply(x, weight, eps)
