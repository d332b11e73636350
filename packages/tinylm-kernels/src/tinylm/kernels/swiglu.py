"""SwiGLU gating: ``swiglu(gate, up) = silu(gate) * up`` with ``silu(g) = g * sigmoid(g)``.

The gated unit of the LLaMA MLP, ``down(swiglu(x @ W_gate, x @ W_up))`` (Shazeer, 2020, "GLU Variants
Improve Transformer", arXiv 2002.05202; SiLU: Elfwing et al., 2017, arXiv 1702.03118). This module holds
the public ``swiglu`` and the plain-PyTorch reference (the ``torch`` backend, the fallback and the test
oracle); ``swiglu_triton.py`` holds the fused kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinylm.kernels.registry import dispatch, register_backend


@register_backend("swiglu", "torch")
def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Plain-PyTorch ``silu(gate) * up``; differentiable by autograd."""
    return F.silu(gate) * up


def swiglu(gate: torch.Tensor, up: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """``silu(gate) * up`` elementwise on the best available backend (or ``backend``)."""
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} must have one shape")
    if gate.dtype != up.dtype:
        raise TypeError(f"swiglu: gate ({gate.dtype}) and up ({up.dtype}) must have the same dtype")
    return dispatch("swiglu", backend, gate.device)(gate, up)
