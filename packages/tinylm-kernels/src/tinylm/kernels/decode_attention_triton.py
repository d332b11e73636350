"""Triton backend of ``decode_attention``: the paged decode kernel reading a static ``(B, Hkv, L, hd)`` cache.

The paged kernel finds position ``j`` of row ``b`` at ``(table[b, j // page] * page + j % page)`` slots
times the slot stride, plus the kv head times the head stride. A static cache is that with one "page" per
row spanning all its heads (``page = Hkv * L``, ``table[b] = b``), a slot stride of ``hd`` and a head
stride of ``L * hd``: no copy, no mask. Oracle: ``decode_attention_reference`` in ``decode_attention.py``.
"""

import torch

from tinylm.kernels.decode_attention import decode_attention_reference
from tinylm.kernels.paged_attention_triton import MAX_HEAD_DIM, launch_decode
from tinylm.kernels.registry import register_backend
from tinylm.kernels.triton_support import DEVICE_TYPES, kernels_take, triton_available, why_triton_unavailable


@register_backend(
    "decode_attention",
    "triton",
    available=triton_available,
    why_unavailable=why_triton_unavailable,
    device_types=DEVICE_TYPES,
)
def decode_attention_triton(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, scale: float
) -> torch.Tensor:
    """The kernel for head dims up to ``MAX_HEAD_DIM``; the reference for larger ones or off-device."""
    takes = kernels_take("decode_attention", q=q, keys=keys, values=values)
    takes = takes and q.dtype != torch.float64 and keys.is_contiguous() and values.is_contiguous()
    if not takes or q.shape[-1] > MAX_HEAD_DIM or keys.dtype != q.dtype or values.dtype != q.dtype:
        return decode_attention_reference(q, keys, values, lengths, scale)
    b, hkv, length, hd = keys.shape
    table = torch.arange(b, device=q.device, dtype=torch.int32)[:, None]
    return launch_decode(q, keys, values, table, lengths, hkv * length, hd, length * hd, length, scale)
