"""Triton backend of ``fused_linear_cross_entropy``: a kernel turns each chunk of logits into its gradient.

Per chunk (the loop is ``ChunkedLinearCrossEntropy`` in ``cross_entropy.py``): ``logits = x_c @ W.T``
with a torch matmul, then ``_cross_entropy_kernel`` takes one row ``z`` per program and, in two passes
over ``V`` in blocks (an online softmax, Milakov & Gimelshein 2018, arXiv 1805.02867)::

    pass 1   m = max(z), s = sum(exp(z - m)) (running, block by block)    lse = m + log(s)
             loss = lse - z[y]                                             (0 where y == ignore_index)
    pass 2   z <- exp(z - lse) - onehot(y)                                 (in place; 0 on ignored rows)

A row of at most ``MAX_BLOCK`` columns is one block: it stays in registers and is read once.

so the chunk's logits become d(sum of losses)/d(logits) without another buffer, ready for
``dx_c = g @ W`` and ``dW += g.T @ x_c``. Statistics are in float32 (float64 for float64 inputs).

Layers: ``_cross_entropy_kernel`` -> launcher ``logits_to_loss_and_grad_triton`` ->
``ChunkedLinearCrossEntropy`` (shared with the torch backend) -> backend
``fused_linear_cross_entropy_triton``. The oracle is ``fused_linear_cross_entropy_reference``.
References: Liger-Kernel ``ops/cross_entropy.py`` and ``ops/fused_linear_cross_entropy.py``.
"""

import torch

from tinylm.kernels.cross_entropy import ChunkedLinearCrossEntropy, fused_linear_cross_entropy_torch
from tinylm.kernels.registry import register_backend
from tinylm.kernels.triton_support import (
    DEVICE_TYPES,
    accumulator_dtype,
    kernels_take,
    next_power_of_2,
    tl,
    triton,
    triton_available,
    why_triton_unavailable,
)

MAX_BLOCK = 32768  # columns per block; larger vocabularies are walked in several blocks


@triton.jit
def _cross_entropy_kernel(
    LOGITS, LABELS, LOSS, stride, n_cols, ignore_index,
    COMPUTE_GRAD: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, SINGLE: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    z_row = LOGITS + row * stride
    label = tl.load(LABELS + row)
    cols = tl.arange(0, BLOCK)
    if label == ignore_index:
        tl.store(LOSS + row, 0.0)
        if COMPUTE_GRAD:
            for start in range(0, n_cols, BLOCK):
                zero = tl.zeros((BLOCK,), dtype=LOGITS.dtype.element_ty)
                tl.store(z_row + start + cols, zero, mask=start + cols < n_cols)
        return
    if SINGLE:  # the row fits one block: keep it in registers, read the logits once
        mask = cols < n_cols
        z = tl.load(z_row + cols, mask=mask, other=float("-inf")).to(ACC)
        m = tl.max(z, axis=0)
        e = tl.exp(z - m)
        s = tl.sum(e, axis=0)
        lse = m + tl.log(s)
        tl.store(LOSS + row, lse - tl.sum(tl.where(cols == label, z, 0.0), axis=0))
        if COMPUTE_GRAD:
            g = e / s
            g = tl.where(cols == label, g - 1.0, g)
            tl.store(z_row + cols, g.to(LOGITS.dtype.element_ty), mask=mask)
        return
    # pass 1: online max and sum of exponentials; the first block initialises them (typed as ACC)
    z = tl.load(z_row + cols, mask=cols < n_cols, other=float("-inf")).to(ACC)
    m = tl.max(z, axis=0)
    s = tl.sum(tl.exp(z - m), axis=0)
    for start in range(BLOCK, n_cols, BLOCK):
        z = tl.load(z_row + start + cols, mask=start + cols < n_cols, other=float("-inf")).to(ACC)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    z_label = tl.load(z_row + label).to(ACC)
    tl.store(LOSS + row, lse - z_label)
    if COMPUTE_GRAD:  # pass 2: softmax - onehot, written over the logits
        for start in range(0, n_cols, BLOCK):
            mask = start + cols < n_cols
            z = tl.load(z_row + start + cols, mask=mask, other=0.0).to(ACC)
            g = tl.exp(z - lse)
            g = tl.where(start + cols == label, g - 1.0, g)
            tl.store(z_row + start + cols, g.to(LOGITS.dtype.element_ty), mask=mask)


def logits_to_loss_and_grad_triton(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, compute_grad: bool
) -> torch.Tensor:
    """Launch the kernel on a chunk ``(C, V)``: per-row losses; with ``compute_grad``, logits <- grad."""
    n_rows, n_cols = logits.shape
    loss = torch.empty(n_rows, dtype=torch.promote_types(logits.dtype, torch.float32), device=logits.device)
    if n_rows == 0:
        return loss
    if logits.stride(1) != 1:
        raise ValueError("cross entropy (triton backend): logits rows must be contiguous")
    block = min(next_power_of_2(n_cols), MAX_BLOCK)
    num_warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    _cross_entropy_kernel[(n_rows,)](
        logits, labels.contiguous(), loss, logits.stride(0), n_cols, ignore_index,
        COMPUTE_GRAD=compute_grad, ACC=accumulator_dtype(logits.dtype), BLOCK=block, SINGLE=n_cols <= block,
        num_warps=num_warps,
    )  # fmt: skip
    return loss


@register_backend(
    "fused_linear_cross_entropy",
    "triton",
    available=triton_available,
    why_unavailable=why_triton_unavailable,
    device_types=DEVICE_TYPES,
)
def fused_linear_cross_entropy_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Chunked fused linear + cross-entropy with the Triton kernel; off CUDA, the torch backend."""
    op = "fused_linear_cross_entropy"
    if not kernels_take(op, x=x, weight=weight):
        return fused_linear_cross_entropy_torch(x, weight, labels, ignore_index, reduction, chunk_size)
    kernels_take(op, (torch.int64, torch.int32), labels=labels)
    return ChunkedLinearCrossEntropy.apply(
        x, weight, labels, ignore_index, reduction, chunk_size, logits_to_loss_and_grad_triton
    )
