"""Rotary position embedding applied to queries and keys (RoPE; Su et al., 2021, arXiv 2104.09864).

Half-split ("rotate_half") layout of LLaMA and Hugging Face: with ``x = (x1, x2)`` the two halves of the
head dimension ``D``::

    rope(x) = x * cos + rotate_half(x) * sin,      rotate_half(x) = (-x2, x1)

Shapes: ``q (B, H, T, D)``, ``k (B, Hkv, T, D)`` (grouped-query attention: ``Hkv`` may differ from ``H``),
``cos`` and ``sin`` ``(B, 1, T, D)`` or ``(1, 1, T, D)``. The outputs keep the dtypes of ``q`` and ``k``.
This module holds the public ``apply_rope`` and the plain-PyTorch reference (the ``torch`` backend, the
fallback and the test oracle), which is exactly ``RoPE.rotate`` of tinylm-core. The Triton backend
(``rope_triton.py``) may overwrite ``q`` and ``k`` in place: always use the returned tensors.
"""

from __future__ import annotations

import torch

from tinylm.kernels.registry import dispatch, register_backend


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@register_backend("rope", "torch")
def apply_rope_reference(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch RoPE of ``q`` and ``k``; differentiable by autograd (``cos``/``sin`` included)."""
    q_out = (q * cos + rotate_half(q) * sin).to(q.dtype)
    k_out = (k * cos + rotate_half(k) * sin).to(k.dtype)
    return q_out, k_out


def _check_shapes(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(
            f"apply_rope: q and k must be 4-d (B, H, T, D); got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    b, _, t, d = q.shape
    if k.shape[0] != b or k.shape[2:] != (t, d):
        raise ValueError(
            f"apply_rope: k {tuple(k.shape)} must match q {tuple(q.shape)} in B, T and D (only heads differ)"
        )
    if d % 2:
        raise ValueError(f"apply_rope: head dimension D={d} must be even (half-split rotation)")
    for name, c in (("cos", cos), ("sin", sin)):
        if c.dim() != 4 or c.shape[0] not in (1, b) or c.shape[1:] != (1, t, d):
            raise ValueError(
                f"apply_rope: {name} has shape {tuple(c.shape)}; "
                f"allowed: ({b}, 1, {t}, {d}) or (1, 1, {t}, {d})"
            )


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q`` and ``k`` by the angles whose cosines and sines are ``cos``/``sin``; returns ``(q, k)``.

    The Triton backend writes into ``q`` and ``k`` when it safely can (not leaves that require grad), so
    treat the inputs as consumed and use the returned tensors.
    """
    _check_shapes(q, k, cos, sin)
    return dispatch("rope", backend, q.device)(q, k, cos, sin)
