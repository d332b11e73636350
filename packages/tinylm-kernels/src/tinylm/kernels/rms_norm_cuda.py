"""CUDA backend of ``rms_norm``: hand-written kernels in ``csrc/rms_norm.cu``, built on first use.

Four layers (after Liger-Kernel's ``ops/rms_norm.py``): the kernels; their launchers in the extension
(``build.build()``); the torch custom ops ``tinylm::rms_norm_fwd`` / ``tinylm::rms_norm_bwd`` with fake
implementations and an autograd formula (``torch.library.register_autograd``), so the op runs under
``torch.compile`` and passes ``torch.library.opcheck``; and ``rms_norm_cuda``, registered as the ``cuda``
backend of ``rms_norm``.

Math (fp32 accumulation whatever the dtype, as in ``rms_norm_reference``):
    rstd = 1 / sqrt(mean(x^2) + eps);  n = (x * rstd).to(x.dtype);  y = w * n
    dx = rstd * (dy * w - x * rstd * mean(dy * w * x * rstd));  dw = sum over rows of dy * n

Inputs the kernels do not take (CPU tensors, float64, a weight of another dtype than x, empty tensors) go to
the reference. If the build fails, the failure is logged once, the backend turns unavailable and the
reference serves.
"""

from __future__ import annotations

import logging
from functools import cache
from types import ModuleType

import torch

from tinylm.kernels import build as _build
from tinylm.kernels.registry import register_backend
from tinylm.kernels.rms_norm import rms_norm_reference

log = logging.getLogger("tinylm.kernels")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_build_error: list[str] = []  # the message of a failed build, if any


@cache
def _environment_reason() -> str:
    return _build.unavailable_reason()


def why_unavailable() -> str:
    """Why the CUDA backend cannot run here ("" if it can)."""
    return _build_error[0] if _build_error else _environment_reason()


def is_available() -> bool:
    """True where a CUDA device is visible and the extension is built or buildable (nvcc and ninja)."""
    return not why_unavailable()


_extension: list[ModuleType] = []


def extension() -> ModuleType:
    """The compiled extension (built on first call, then kept: this is on every call's path)."""
    if not _extension:
        _extension.append(_build.build())
    return _extension[0]


@torch.library.custom_op("tinylm::rms_norm_fwd", mutates_args=(), device_types="cuda")
def rms_norm_fwd(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim of ``x``: ``(y, rstd)``, y contiguous, rstd float32 of shape x.shape[:-1]."""
    y, rstd = extension().rms_norm_fwd(x, weight, eps)
    return y, rstd


@rms_norm_fwd.register_fake
def _rms_norm_fwd_fake(
    x: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    torch._check(weight.shape == x.shape[-1:], lambda: "rms_norm_fwd: weight must match x's last dim")
    return x.new_empty(x.shape), x.new_empty(x.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("tinylm::rms_norm_bwd", mutates_args=(), device_types="cuda")
def rms_norm_bwd(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``(dx, dweight)`` of ``rms_norm_fwd`` in one fused pass plus a small dweight reduction."""
    dx, dw = extension().rms_norm_bwd(dy, x, weight, rstd)
    return dx, dw


@rms_norm_bwd.register_fake
def _rms_norm_bwd_fake(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: tuple) -> None:
    x, weight, _eps = inputs
    _y, rstd = output
    ctx.mark_non_differentiable(rstd)
    ctx.save_for_backward(x, weight, rstd)


def _backward(
    ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor, _drstd: torch.Tensor | None
) -> tuple:
    x, weight, rstd = ctx.saved_tensors
    dx, dw = rms_norm_bwd(dy, x, weight, rstd)
    return (dx if ctx.needs_input_grad[0] else None), (dw if ctx.needs_input_grad[1] else None), None


torch.library.register_autograd("tinylm::rms_norm_fwd", _backward, setup_context=_setup_context)


def supports(x: torch.Tensor, weight: torch.Tensor | None) -> bool:
    """Whether the CUDA kernels take these inputs (else ``rms_norm_cuda`` uses the reference)."""
    return (
        x.is_cuda
        and x.dtype in DTYPES
        and x.numel() > 0
        and (weight is None or (weight.dtype == x.dtype and weight.device == x.device))
    )


def _ensure_built() -> bool:
    """Build or load the extension; on failure log once, mark the backend unavailable, return False."""
    if _build_error:
        return False
    try:
        extension()
    except RuntimeError as e:
        _build_error.append(f"the CUDA extension failed to build: {e}")
        log.error("tinylm.kernels: rms_norm falls back to torch: %s", _build_error[0])
        return False
    return True


@register_backend(
    "rms_norm", "cuda", available=is_available, why_unavailable=why_unavailable, device_types=("cuda",)
)
def rms_norm_cuda(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension with the CUDA kernels (see the module docstring for the fallbacks)."""
    if not supports(x, weight):
        return rms_norm_reference(x, weight, eps)
    if not torch.compiler.is_compiling() and not _ensure_built():
        return rms_norm_reference(x, weight, eps)
    if weight is None:
        weight = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
    y, _rstd = rms_norm_fwd(x, weight, eps)
    return y
