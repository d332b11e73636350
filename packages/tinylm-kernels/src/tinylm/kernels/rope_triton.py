"""Triton backend of ``rope``: rotates ``q`` and ``k`` in place, one program per (batch, position).

Forward, with ``x = (x1, x2)``, ``cos = (c1, c2)`` and ``sin = (s1, s2)`` split in halves of ``D``::

    y1 = x1 * c1 - x2 * s1          y2 = x2 * c2 + x1 * s2

Backward is the transposed map, i.e. the inverse rotation (``sin -> -sin``) for real RoPE tables where
both halves of ``cos``/``sin`` are equal; written out, it is exact for any ``cos``/``sin``::

    dx1 = dy1 * c1 + dy2 * s2       dx2 = dy2 * c2 - dy1 * s1

Each program loads its row of ``cos``/``sin`` once and rotates every head of that position as one
``(heads, D/2)`` block. The kernel reads and writes the same memory, so it works in place on any strided
``q``/``k`` (e.g. a transposed view of a projection): the forward overwrites ``q``/``k`` unless one is a
leaf that requires grad, has overlapping memory, or they are the same tensor; then it rotates a copy.
``cos``/``sin`` get no gradient here (RoPE tables are constants).

Layers: ``_rope_kernel`` -> launcher ``rope_rotate_`` -> ``RoPEFunction`` (one tensor) -> backend
``apply_rope_triton``.
The oracle is ``apply_rope_reference`` in ``rope.py``. References: Su et al. 2021 (arXiv 2104.09864);
Liger-Kernel ``ops/rope.py``.
"""

import torch

from tinylm.kernels.registry import register_backend
from tinylm.kernels.rope import apply_rope_reference
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


@triton.jit
def _rope_kernel(
    X, COS, SIN, stride_b, stride_h, stride_t, stride_d, cos_stride_b, sin_stride_b, seq_len, n_heads, half,
    INVERSE: tl.constexpr, ACC: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    b = pid // seq_len
    t = pid % seq_len
    d = tl.arange(0, BLOCK_D)
    d_mask = d < half
    cos_row = COS + b * cos_stride_b + t * (2 * half)  # tables are contiguous (B or 1, T, D)
    sin_row = SIN + b * sin_stride_b + t * (2 * half)
    c1 = tl.load(cos_row + d, mask=d_mask, other=0.0).to(ACC)
    c2 = tl.load(cos_row + half + d, mask=d_mask, other=0.0).to(ACC)
    s1 = tl.load(sin_row + d, mask=d_mask, other=0.0).to(ACC)
    s2 = tl.load(sin_row + half + d, mask=d_mask, other=0.0).to(ACC)
    h = tl.arange(0, BLOCK_H)
    mask = (h[:, None] < n_heads) & d_mask[None, :]
    p1 = X + b * stride_b + t * stride_t + h[:, None] * stride_h + d[None, :] * stride_d  # (BLOCK_H, BLOCK_D)
    p2 = p1 + half * stride_d
    x1 = tl.load(p1, mask=mask, other=0.0).to(ACC)
    x2 = tl.load(p2, mask=mask, other=0.0).to(ACC)
    if INVERSE:
        y1 = x1 * c1[None, :] + x2 * s2[None, :]
        y2 = x2 * c2[None, :] - x1 * s1[None, :]
    else:
        y1 = x1 * c1[None, :] - x2 * s1[None, :]
        y2 = x2 * c2[None, :] + x1 * s2[None, :]
    tl.store(p1, y1.to(X.dtype.element_ty), mask=mask)
    tl.store(p2, y2.to(X.dtype.element_ty), mask=mask)


def _table(c: torch.Tensor) -> torch.Tensor:
    """``cos``/``sin`` as a contiguous ``(1 or B, T, D)`` table (small, so the copy is cheap)."""
    return c.reshape(c.shape[0], c.shape[2], c.shape[3]).contiguous()


def _batch_stride(table: torch.Tensor) -> int:
    return table.stride(0) if table.shape[0] > 1 else 0  # a (1, T, D) table serves every batch row


def rope_rotate_(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False
) -> torch.Tensor:
    """Launch the kernel: rotate ``x (B, H, T, D)`` in place by tables from ``_table`` (inverse: undo it)."""
    b, n_heads, t, d = x.shape
    if x.numel() == 0:
        return x
    half = d // 2
    block_h, block_d = next_power_of_2(n_heads), next_power_of_2(half)
    num_warps = 4 if block_h * block_d <= 4096 else 8
    _rope_kernel[(b * t,)](
        x, cos, sin, *x.stride(), _batch_stride(cos), _batch_stride(sin), t, n_heads, half,
        INVERSE=inverse, ACC=accumulator_dtype(x.dtype), BLOCK_H=block_h, BLOCK_D=block_d,
        num_warps=num_warps,
    )  # fmt: skip
    return x


def _non_overlapping(t: torch.Tensor) -> bool:
    """True when no two elements of ``t`` share memory (so writing in place cannot race)."""
    expected = 1
    for stride, size in sorted((st, s) for s, st in zip(t.shape, t.stride(), strict=True) if s > 1):
        if stride < expected:
            return False
        expected = stride * size
    return True


def _autograd_lets_write(t: torch.Tensor) -> bool:
    """False for a tensor autograd forbids changing in place: a leaf that requires grad, or a view made
    inside a custom Function (torchao's float8 linear returns one) or by a multi-output op (``split``)."""
    if not t.requires_grad:
        return True
    if t.is_leaf:
        return False
    if torch.compiler.is_compiling() or not t._is_view():
        return True
    meta = torch._C._autograd._get_creation_meta(t)
    return meta == torch._C._autograd.CreationMeta.DEFAULT


def _writable(t: torch.Tensor) -> bool:
    return _autograd_lets_write(t) and _non_overlapping(t)


class RoPEFunction(torch.autograd.Function):
    """Autograd wrapper for one tensor: rotates in place where safe (``mark_dirty``); backward inverts.

    One tensor per call because autograd allows an in-place change of a view input only in a Function
    with a single output, and q/k are usually views of a projection.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos_t: torch.Tensor, sin_t: torch.Tensor) -> torch.Tensor:
        if _writable(x):
            ctx.mark_dirty(x)
            out = x
        else:
            out = x.clone()
        ctx.save_for_backward(cos_t, sin_t)
        return rope_rotate_(out, cos_t, sin_t)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        cos_t, sin_t = ctx.saved_tensors
        # rotate a copy: autograd may share grad_output buffers with other nodes
        return rope_rotate_(dy.clone(), cos_t, sin_t, inverse=True), None, None


@register_backend(
    "rope",
    "triton",
    available=triton_available,
    why_unavailable=why_triton_unavailable,
    device_types=DEVICE_TYPES,
)
def apply_rope_triton(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE of ``q`` and ``k`` with the Triton kernel, in place where safe; returns ``(q, k)``.

    Tensors off CUDA (when not interpreting) are served by the reference.
    """
    if not kernels_take("apply_rope", q=q, k=k, cos=cos, sin=sin):
        return apply_rope_reference(q, k, cos, sin)
    if torch.is_grad_enabled() and (cos.requires_grad or sin.requires_grad):
        raise ValueError(
            "apply_rope (triton backend): cos/sin require grad, but this backend treats them as "
            "constants; detach them or use backend='torch'"
        )
    if k is q or (not torch.compiler.is_compiling() and k.data_ptr() == q.data_ptr()):
        k = k.clone()  # rotating q in place must not rotate k too
    cos_t, sin_t = _table(cos), _table(sin)
    return RoPEFunction.apply(q, cos_t, sin_t), RoPEFunction.apply(k, cos_t, sin_t)
