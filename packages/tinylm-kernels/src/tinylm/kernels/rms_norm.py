"""RMSNorm: ``y = x / sqrt(mean(x^2, -1) + eps) * weight`` (Zhang & Sennrich, 2019, arXiv 1910.07467).

The statistics are computed in at least float32 whatever the input dtype, then the normalised
activations are cast back to the input dtype before the weight is applied (the LLaMA / Hugging Face
convention), so the reference matches ``LlamaRMSNorm`` exactly. This module holds the plain-PyTorch
reference, which is the ``torch`` backend, the fallback, and the test oracle for the CUDA and Triton
backends.
"""

from __future__ import annotations

import torch

from tinylm.kernels.registry import dispatch, register_backend


@register_backend("rms_norm", "torch")
def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """Plain-PyTorch RMSNorm over the last dimension; differentiable by autograd."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return y if weight is None else weight * y


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6, backend: str | None = None
) -> torch.Tensor:
    """RMSNorm over the last dimension of ``x`` on the best available backend (or ``backend``)."""
    if weight is not None and weight.shape != x.shape[-1:]:
        raise ValueError(
            f"rms_norm: weight has shape {tuple(weight.shape)}, expected ({x.shape[-1]},) "
            f"to match the last dimension of x {tuple(x.shape)}"
        )
    return dispatch("rms_norm", backend, x.device)(x, weight, eps)
