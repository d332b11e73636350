"""Linear layers written as a product and a sum for decode, so ``torch.compile`` generates and fuses them.

At batch 1 every matrix product of a decode step is a matrix-vector product whose cost is reading the
weight once. Inductor hands ``F.linear`` to cuBLAS: one launch per product, which nothing can fuse with.
Written as ``(x[..., None, :] * W).sum(-1)`` the same numbers are a reduction that Inductor generates
itself, tunes, and fuses with its neighbours (the residual add after it, the SwiGLU or an int8 weight's
dequantization before it). ``reduction_linears(model)`` switches a model's plain ``nn.Linear`` layers to
``ReductionLinear``, which does this only while being compiled and only for at most ``max_rows`` rows
(more rows would re-read the weight per row); eager calls and wide batches stay ``F.linear``. Products are
summed in float32 and rounded to the input dtype once. Parameters and ``state_dict`` are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def reduction_matvec(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x (..., K) @ weight (N, K).T`` as a float32 product and sum over ``K``; returns float32."""
    return (x.unsqueeze(-2).float() * weight.float()).sum(-1)


class ReductionLinear(nn.Linear):
    """An ``nn.Linear`` that compiles as a fusable reduction for at most ``max_rows`` input rows."""

    max_rows: int = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() and x.numel() // x.shape[-1] <= self.max_rows:
            y = reduction_matvec(x, self.weight)
            return (y + self.bias.float() if self.bias is not None else y).to(x.dtype)
        return super().forward(x)


def reduction_linears(model: nn.Module, max_rows: int = 8) -> int:
    """Switch every plain ``nn.Linear`` of ``model`` to ``ReductionLinear`` in place; returns how many.

    Call it after ``fuse_projections`` (which builds new plain linears). Other linear types (quantized,
    wrapped) are left alone.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    switched = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = ReductionLinear
            switched += 1
        if isinstance(module, ReductionLinear):
            module.max_rows = max_rows
    return switched
