"""Triton backend of ``swiglu``: one elementwise kernel forward, one backward that recomputes ``silu``.

With ``s = sigmoid(g)`` (computed in float32, float64 for float64 inputs)::

    forward     y  = g * s * u
    backward    dg = dy * u * s * (1 + g * (1 - s))        du = dy * g * s

Only ``gate`` and ``up`` are saved; the backward recomputes ``s`` instead of storing ``silu(gate)``,
which saves one activation-sized tensor per MLP. Both kernels treat the inputs as flat arrays.

Layers: ``_swiglu_forward_kernel`` / ``_swiglu_backward_kernel`` -> launchers ``swiglu_forward`` /
``swiglu_backward`` -> ``SwiGLUFunction`` -> backend ``swiglu_triton``. The oracle is
``swiglu_reference`` in ``swiglu.py``. References: Shazeer 2020 (arXiv 2002.05202); Liger-Kernel
``ops/swiglu.py``.
"""

import torch

from tinylm.kernels.registry import register_backend
from tinylm.kernels.swiglu import swiglu_reference
from tinylm.kernels.triton_support import (
    DEVICE_TYPES,
    INTERPRETED,
    accumulator_dtype,
    kernels_take,
    tl,
    triton,
    triton_available,
    why_triton_unavailable,
)

# The interpreter runs programs one after another, so it prefers few large blocks.
BLOCK = 65536 if INTERPRETED else 1024


@triton.jit
def _swiglu_forward_kernel(Y, GATE, UP, n, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(GATE + offs, mask=mask, other=0.0).to(ACC)
    u = tl.load(UP + offs, mask=mask, other=0.0).to(ACC)
    s = 1.0 / (1.0 + tl.exp(-g))
    tl.store(Y + offs, (g * s * u).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_backward_kernel(DGATE, DUP, DY, GATE, UP, n, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(ACC)
    g = tl.load(GATE + offs, mask=mask, other=0.0).to(ACC)
    u = tl.load(UP + offs, mask=mask, other=0.0).to(ACC)
    s = 1.0 / (1.0 + tl.exp(-g))
    tl.store(DGATE + offs, (dy * u * s * (1.0 + g * (1.0 - s))).to(DGATE.dtype.element_ty), mask=mask)
    tl.store(DUP + offs, (dy * g * s).to(DUP.dtype.element_ty), mask=mask)


def _grid(n: int) -> tuple[int]:
    return (-(-n // BLOCK),)


def swiglu_forward(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Launch the forward kernel on contiguous ``gate``/``up``; returns ``silu(gate) * up``."""
    y = torch.empty_like(gate, memory_format=torch.contiguous_format)
    if gate.numel() > 0:
        _swiglu_forward_kernel[_grid(gate.numel())](
            y, gate, up, gate.numel(), ACC=accumulator_dtype(gate.dtype), BLOCK=BLOCK
        )
    return y


def swiglu_backward(
    dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward kernel on contiguous tensors; returns ``(dgate, dup)``."""
    dy = dy.contiguous()
    dgate, dup = torch.empty_like(gate), torch.empty_like(up)
    if gate.numel() > 0:
        _swiglu_backward_kernel[_grid(gate.numel())](
            dgate, dup, dy, gate, up, gate.numel(), ACC=accumulator_dtype(gate.dtype), BLOCK=BLOCK
        )
    return dgate, dup


class SwiGLUFunction(torch.autograd.Function):
    """Autograd wrapper: saves ``gate`` and ``up``; the backward recomputes the sigmoid."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        gate, up = gate.contiguous(), up.contiguous()
        ctx.save_for_backward(gate, up)
        return swiglu_forward(gate, up)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        gate, up = ctx.saved_tensors
        return swiglu_backward(dy, gate, up)


@register_backend(
    "swiglu",
    "triton",
    available=triton_available,
    why_unavailable=why_triton_unavailable,
    device_types=DEVICE_TYPES,
)
def swiglu_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` with the fused Triton kernels; tensors off CUDA use the reference."""
    if not kernels_take("swiglu", gate=gate, up=up):
        return swiglu_reference(gate, up)
    return SwiGLUFunction.apply(gate, up)
