"""Packed int4 weight-only linear: ``y = x @ W.T (+ bias)``, ``W[n, k] = (q[n, k] - 8) * scale[n, k // G]``.

The weight is stored two values per byte, with no padding: ``packed`` uint8 ``(N, K / 2)`` holds column
``2j`` in its low nibble and ``2j + 1`` in its high nibble, each as ``q`` in ``0..15`` (the signed int4 value
plus 8); ``scale`` ``(N, K / G)`` holds one float per group of ``G`` columns of a row (symmetric: no zero
point). That is ``0.5 + 2 / G`` bytes per weight in bf16 scales: 0.31x of bf16 at ``G = 32``, 0.27x at 128.
torchao computes the int4 values and scales (its ``intx`` int4 config), this module only packs them;
torchao's own packed CUDA layout (tinygemm) pads ``K`` to a multiple of 1024, which makes the narrow layers
of a tiny model larger than bf16 (BENCHMARKS 5).

Ops: ``int4_linear`` (registered; ``int4_gemv_triton.py`` adds a Triton GEMV for few rows). The ``torch``
backend is the reference and the oracle's form: unpack, scale, ``F.linear``. While being compiled, for at
most ``REDUCTION_MAX_ROWS`` rows, it is written as products and sums over the packed bytes instead, which
Inductor generates as one reduction that reads the weight as packed bytes (as ``int8_linear`` does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinylm.kernels import int8_gemv
from tinylm.kernels.registry import dispatch, register_backend


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int4 values ``q`` (``(N, K)`` integers in ``-8..7``, ``K`` even) two per byte: ``(N, K / 2)``
    uint8."""
    if q.dim() != 2 or q.shape[1] % 2:
        raise ValueError(f"pack_int4: need a 2-D tensor with an even number of columns, got {tuple(q.shape)}")
    if q.numel() and (q.min() < -8 or q.max() > 7):
        raise ValueError(f"pack_int4: values must be in -8..7, got {q.min().item()}..{q.max().item()}")
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of ``pack_int4``: ``(N, K)`` int8 values in ``-8..7``."""
    lo = (packed & 15).to(torch.int8) - 8
    hi = (packed >> 4).to(torch.int8) - 8
    return torch.stack((lo, hi), dim=-1).reshape(packed.shape[0], -1)


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The float weight ``(N, K)`` in ``dtype`` of a packed int4 weight and its group scales."""
    q = unpack_int4(packed)
    group = q.shape[1] // scale.shape[1]
    return (q.to(dtype).reshape(q.shape[0], -1, group) * scale.to(dtype)[:, :, None]).reshape(q.shape)


@register_backend("int4_linear", "torch")
def int4_linear_reference(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(x, dequantize_int4(packed, scale)) (+ bias)``; a fused reduction when compiled for few
    rows."""
    rows = x.numel() // max(x.shape[-1], 1)
    if torch.compiler.is_compiling() and rows <= int8_gemv.REDUCTION_MAX_ROWS:
        acc = torch.promote_types(x.dtype, torch.float32)
        n, groups = scale.shape
        xs = x.to(acc).reshape(*x.shape[:-1], 1, groups, -1, 2)  # (..., 1, groups, G / 2, pair)
        lo = (packed & 15).to(acc) - 8
        hi = (packed >> 4).to(acc) - 8
        w = torch.stack((lo, hi), dim=-1).reshape(n, groups, -1, 2)
        y = ((xs * w).sum((-1, -2)) * scale.to(acc)).sum(-1)
        return (y + bias.to(acc) if bias is not None else y).to(x.dtype)
    y = F.linear(x, dequantize_int4(packed, scale, x.dtype))
    return y + bias if bias is not None else y


def check_int4_linear_inputs(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> None:
    """Raise a clear error on shapes or dtypes ``int4_linear`` cannot take."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise TypeError(
            f"int4_linear: packed must be a 2-D uint8 tensor (two int4 values per byte, pack_int4), "
            f"got {packed.dtype} {tuple(packed.shape)}"
        )
    n, k = packed.shape[0], 2 * packed.shape[1]
    if x.shape[-1] != k:
        raise ValueError(f"int4_linear: x has {x.shape[-1]} features, the packed weight holds {k}")
    if scale.dim() != 2 or scale.shape[0] != n or scale.shape[1] == 0 or k % scale.shape[1]:
        raise ValueError(
            f"int4_linear: scale must be (N, K / group) = ({n}, {k} / group), got {tuple(scale.shape)}"
        )
    if (k // scale.shape[1]) % 2:
        raise ValueError(f"int4_linear: the group size must be even, got {k // scale.shape[1]}")
    if bias is not None and bias.numel() != n:
        raise ValueError(f"int4_linear: bias has {bias.numel()} values, need {n}")


def int4_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Packed int4 weight-only linear on the best available backend (or ``backend``); inference only."""
    check_int4_linear_inputs(x, packed, scale, bias)
    return dispatch("int4_linear", backend, x.device)(x, packed, scale, bias)
