"""Int8 weight-only linear: ``y = (x @ W_q.T) * scale (+ bias)``, ``W_q`` int8 ``(N, K)``, a scale per row.

Weight-only int8 halves the bytes a batch-1 decode step reads (it is memory-bound: every weight is read
once per token), so it can beat bf16 only if the dequantization is fused into the matrix-vector product.
This module holds the public ``int8_linear`` and the plain-PyTorch reference (the ``torch`` backend, the
fallback and the test oracle: ``F.linear(x, W_q.to(x.dtype)) * scale``, gpt-fast's formulation). While
being compiled, for at most 8 rows, the ``torch`` backend writes the product as an elementwise product and
a sum over ``K`` instead, which Inductor generates as one reduction kernel that reads the weight as int8
(the dequantization fused into its loads) and fuses with its neighbours; ``int8_gemv_triton.py`` holds a
hand-written fused GEMV kernel for few rows.
``rms_norm_int8_linear`` is ``int8_linear(rms_norm(x, norm_weight, eps), ...)`` as one op, so the Triton
backend can fold the norm into the GEMV (one launch, the normalised activations never written out).
Registered ops: ``int8_linear``, ``rms_norm_int8_linear`` (import ``tinylm.kernels.int8_gemv_triton`` to add
the Triton backends).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from tinylm.kernels.registry import dispatch, register_backend
from tinylm.kernels.rms_norm import rms_norm_reference

REDUCTION_MAX_ROWS = 8  # compiled, up to this many rows the torch backend is a reduction (more: F.linear)


@contextlib.contextmanager
def compiled_reduction_rows(rows: int) -> Iterator[None]:
    """Within the block, the compiled ``torch`` backend writes up to ``rows`` rows as the reduction over int8
    loads and more rows as ``F.linear`` on the converted weight (gpt-fast's form, which Inductor lowers its
    own way); ``0``: always ``F.linear``. For comparing the two forms: wrap the calls that compile, as the
    value is read when a function is traced (``torch.compile`` guards on it)."""
    global REDUCTION_MAX_ROWS
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    saved, REDUCTION_MAX_ROWS = REDUCTION_MAX_ROWS, rows
    try:
        yield
    finally:
        REDUCTION_MAX_ROWS = saved


@register_backend("int8_linear", "torch")
def int8_linear_reference(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(x, weight.to(x.dtype)) * scale (+ bias)``; ``x`` (..., K), ``weight`` int8 (N, K)."""
    if torch.compiler.is_compiling() and x.numel() // x.shape[-1] <= REDUCTION_MAX_ROWS:
        acc = torch.promote_types(x.dtype, torch.float32)  # float32 at least
        y = (x.unsqueeze(-2).to(acc) * weight.to(acc)).sum(-1) * scale.to(acc)
        return (y + bias.to(acc) if bias is not None else y).to(x.dtype)
    y = F.linear(x, weight.to(x.dtype)) * scale.to(x.dtype)
    return y + bias if bias is not None else y


def check_int8_linear_inputs(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> None:
    """Raise a clear error on shapes or dtypes ``int8_linear`` cannot take."""
    if weight.dtype != torch.int8 or weight.dim() != 2:
        raise TypeError(
            f"int8_linear: weight must be a 2-D int8 tensor, got {weight.dtype} {tuple(weight.shape)}"
        )
    n, k = weight.shape
    if x.shape[-1] != k:
        raise ValueError(f"int8_linear: x has {x.shape[-1]} features, weight expects {k}")
    if scale.numel() != n:
        raise ValueError(f"int8_linear: scale has {scale.numel()} values, need one per output row ({n})")
    if bias is not None and bias.numel() != n:
        raise ValueError(f"int8_linear: bias has {bias.numel()} values, need {n}")


def int8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Int8 weight-only linear on the best available backend (or ``backend``); inference only."""
    check_int8_linear_inputs(x, weight, scale, bias)
    return dispatch("int8_linear", backend, x.device)(x, weight, scale.reshape(-1), bias)


@register_backend("rms_norm_int8_linear", "torch")
def rms_norm_int8_linear_reference(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``int8_linear_reference(rms_norm_reference(x, norm_weight, eps), weight, scale, bias)``."""
    return int8_linear_reference(rms_norm_reference(x, norm_weight, eps), weight, scale, bias)


def rms_norm_int8_linear(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """RMSNorm of ``x`` (weight ``norm_weight``) then the int8 weight-only linear, as one op (inference)."""
    check_int8_linear_inputs(x, weight, scale, bias)
    if norm_weight.shape != (x.shape[-1],):
        raise ValueError(
            f"rms_norm_int8_linear: norm_weight has shape {tuple(norm_weight.shape)}, need ({x.shape[-1]},)"
        )
    fn = dispatch("rms_norm_int8_linear", backend, x.device)
    return fn(x, norm_weight, eps, weight, scale.reshape(-1), bias)
