"""Few-row linear ``y = x @ W.T (+ bias)``: the projections of a batched decode step (a few to 64 rows).

At decode time a projection multiplies a handful of rows by a weight read once from HBM: at 32 rows the
~110M model's 48 projections per step each take 4.5-5 us in cuBLAS on an H100 (BENCHMARKS 7e), about three
times what their bytes need. The Triton backend (``linear_triton.py``) is a thin-tile kernel for that case,
a plug-in for trying such kernels inside a compiled decode step; measured, it matches cuBLAS rather than
beating it (BENCHMARKS 7f), so nothing uses it by default. This module holds
the public ``linear``, the reference (``F.linear``: the ``torch`` backend, fallback and test oracle) and
``KernelLinear``, an ``nn.Linear`` whose forward dispatches the op, with ``use_kernel_linears(model)`` to swap
a model's plain linears for it (inference: the op has no backward).
``decode_linear`` is the same product with the small ops around a decode step's projections folded in:
an RMSNorm of the input (``norm_weight``: the pre-norm before q/k/v and gate/up), SwiGLU of a fused
gate/up input (``swiglu``: the input of the down projection) and a residual added to the output
(``residual``: after the o and down projections), or SwiGLU of a fused gate/up product's two halves
(``swiglu_out``: in the epilogue). Measured at 32 rows (BENCHMARKS 7h), the epilogue folds cost 0.2-0.7 us
and save a kernel; the prologue folds are repeated by every program over all rows and cost more than the
kernel they save. Its torch backend is the composition of the plain ops (what Inductor fuses on its own),
the Triton one does it in the few-row kernel.
Registered ops: ``linear``, ``decode_linear`` (import ``tinylm.kernels.linear_triton`` for the kernel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tinylm.kernels.registry import dispatch, register_backend
from tinylm.kernels.rms_norm import rms_norm_reference
from tinylm.kernels.swiglu import swiglu_reference


@register_backend("linear", "torch")
def linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``."""
    return F.linear(x, weight, bias)


@register_backend("decode_linear", "torch")
def decode_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    norm_weight: torch.Tensor | None,
    eps: float,
    swiglu: bool,
    residual: torch.Tensor | None,
    swiglu_out: bool = False,
) -> torch.Tensor:
    """``[residual +] F.linear(rms_norm(x) | silu(gate) * up | x, weight, bias)`` in plain PyTorch, with
    ``swiglu_out`` SwiGLU of the product's two halves (``weight`` is ``[gate; up]``)."""
    if swiglu:
        x = swiglu_reference(*x.chunk(2, dim=-1))
    if norm_weight is not None:
        x = rms_norm_reference(x, norm_weight, eps)
    y = F.linear(x, weight, bias)
    if swiglu_out:
        y = swiglu_reference(*y.chunk(2, dim=-1))
    return y + residual if residual is not None else y


def check_linear_inputs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Raise a clear error on shapes or dtypes ``linear`` cannot take."""
    if weight.dim() != 2:
        raise ValueError(f"linear: weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: x has {x.shape[-1]} features, weight expects {weight.shape[1]}")
    if x.dtype != weight.dtype:
        raise TypeError(f"linear: x is {x.dtype} but weight is {weight.dtype}; cast one to the other")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"linear: bias has shape {tuple(bias.shape)}, need ({weight.shape[0]},)")


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, backend: str | None = None
) -> torch.Tensor:
    """``x @ weight.T (+ bias)`` on the best available backend (or ``backend``); inference only."""
    check_linear_inputs(x, weight, bias)
    return dispatch("linear", backend, x.device)(x, weight, bias)


def decode_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    swiglu: bool = False,
    residual: torch.Tensor | None = None,
    swiglu_out: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """``x @ weight.T (+ bias)`` with, optionally, ``x`` first RMS-normalised (``norm_weight``, ``eps``) or
    taken as SwiGLU of its two halves (``swiglu``: ``x`` is ``[gate | up]``, twice ``weight``'s width),
    ``residual`` (..., out) added to the result, or (``swiglu_out``) the output taken as SwiGLU of the
    product's two halves: ``weight`` is ``[gate; up]`` and the output half its height (a fused gate/up
    product and its activation in one). Inference only."""
    if norm_weight is not None and swiglu:
        raise ValueError("decode_linear: norm_weight and swiglu together are not supported; pick one")
    if swiglu_out and (swiglu or residual is not None):
        raise ValueError("decode_linear: swiglu_out goes with norm_weight only, not swiglu or residual")
    if swiglu_out and weight.shape[0] % 2:
        raise ValueError(f"decode_linear: swiglu_out needs [gate; up] of even height, got {weight.shape[0]}")
    width = x.shape[-1] // 2 if swiglu else x.shape[-1]
    if swiglu and x.shape[-1] % 2:
        raise ValueError(f"decode_linear: swiglu needs [gate | up] of even width, got {x.shape[-1]}")
    check_linear_inputs(x[..., :width], weight, bias)
    if norm_weight is not None and norm_weight.shape != (width,):
        raise ValueError(f"decode_linear: norm_weight has shape {tuple(norm_weight.shape)}, need ({width},)")
    if residual is not None and residual.shape != (*x.shape[:-1], weight.shape[0]):
        raise ValueError(
            f"decode_linear: residual has shape {tuple(residual.shape)}, need "
            f"{(*x.shape[:-1], weight.shape[0])}"
        )
    fn = dispatch("decode_linear", backend, x.device)
    return fn(x, weight, bias, norm_weight, float(eps), swiglu, residual, swiglu_out)


class KernelLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters, same ``state_dict``) whose forward is the ``linear`` op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # chosen per call (env var, ``preferring``, best available): compiled code guards on the choice
        return dispatch("linear", None, x.device)(x, self.weight, self.bias)


def use_kernel_linears(model: nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Turn every plain ``nn.Linear`` of ``model`` (names not in ``skip``) into a ``KernelLinear`` in place.

    The parameters are kept (no copy), so tied weights stay tied. Returns how many layers were changed.
    """
    changed = 0
    for name, module in model.named_modules():
        if type(module) is nn.Linear and name not in skip:
            module.__class__ = KernelLinear
            changed += 1
    return changed
