"""``quantized``: keys/values stored as int8 or int4 with one scale per token and head.

Each new key/value vector ``x`` (one token, one kv head, ``head_dim`` numbers) is stored as
``round(x / s)`` with ``s = max|x| / qmax`` (symmetric; ``qmax`` = 127 for int8, 7 for int4, two int4
values packed per byte). Attention reads the dequantized history, so the model code is unchanged; what
is saved is the memory the cache holds between steps: ``memory_bytes`` vs ``full_precision_bytes``.
Per-token scales follow KVQuant/KIVI-style fine-grained KV quantization (Hooper et al., 2024,
arXiv 2401.18079; Liu et al., 2024, arXiv 2402.02750) in its simplest form.
"""

from __future__ import annotations

from typing import Any

import torch

from tinylm.core.registry import CACHES

QMAX = {8: 127, 4: 7}


def quantize(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, H, T, hd)`` -> codes (int8, or uint8 with two int4 per byte) and scales ``(B, H, T, 1)``."""
    qmax = QMAX[bits]
    scale = (x.detach().abs().amax(dim=-1, keepdim=True).float() / qmax).clamp(min=1e-12)
    q = torch.round(x.float() / scale).clamp(-qmax, qmax).to(torch.int8)
    if bits == 4:
        if q.shape[-1] % 2:
            raise ValueError(f"int4 KV packing needs an even head_dim, got {q.shape[-1]}")
        u = (q + 8).to(torch.uint8)  # 1..15
        q = u[..., 0::2] | (u[..., 1::2] << 4)  # (B, H, T, hd/2)
    return q, scale.to(torch.float16)


def dequantize(q: torch.Tensor, scale: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of ``quantize`` (up to rounding), in ``dtype``."""
    if bits == 4:
        lo = (q & 0x0F).to(torch.int8) - 8
        hi = (q >> 4).to(torch.int8) - 8
        q = torch.stack([lo, hi], dim=-1).flatten(-2)  # interleave back to (B, H, T, hd)
    return (q.float() * scale.float()).to(dtype)


class QuantizedCache:
    """Grows like the standard cache, but each layer's keys/values are kept as int8/int4 codes + scales."""

    def __init__(self, bits: int = 8) -> None:
        if bits not in QMAX:
            raise ValueError(f"quantized cache supports bits in {sorted(QMAX)}, got {bits}")
        self.bits = bits
        self.codes: dict[int, list[torch.Tensor]] = {}  # layer -> [k codes, k scales, v codes, v scales]
        self._dtype: torch.dtype = torch.float32
        self._len = 0

    def get_seq_length(self) -> int:
        return self._len

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._dtype = k.dtype
        kq, ks = quantize(k, self.bits)
        vq, vs = quantize(v, self.bits)
        if layer_idx in self.codes:
            old = self.codes[layer_idx]
            kq, ks, vq, vs = (torch.cat([o, n], dim=2) for o, n in zip(old, (kq, ks, vq, vs), strict=True))
        self.codes[layer_idx] = [kq, ks, vq, vs]
        return dequantize(kq, ks, self.bits, k.dtype), dequantize(vq, vs, self.bits, v.dtype)

    def advance(self, n: int) -> None:
        self._len += n

    def memory_bytes(self) -> int:
        """Bytes held between steps: codes + scales of every layer."""
        return sum(t.numel() * t.element_size() for ts in self.codes.values() for t in ts)

    def full_precision_bytes(self) -> int:
        """Bytes the same keys/values take unquantized in the model's dtype (the standard cache)."""
        elem = torch.empty((), dtype=self._dtype).element_size()
        per_code = 2 if self.bits == 4 else 1
        return sum(2 * ts[0].numel() * per_code * elem for ts in self.codes.values())


@CACHES.register("quantized")
def quantized_cache(bits: int = 8, **_: Any) -> QuantizedCache:
    """Factory for ``CACHES``: int8 by default, ``bits=4`` for packed int4."""
    return QuantizedCache(bits=bits)


@CACHES.register("quantized_int4")
def quantized_int4_cache(**_: Any) -> QuantizedCache:
    """Factory for ``CACHES``: packed int4 keys/values with per-token, per-head scales."""
    return QuantizedCache(bits=4)
