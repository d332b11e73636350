"""The ``Cache`` protocol that attention layers write past keys/values into, and the standard cache.

A cache is handed to ``TinyLM.forward(..., cache=cache)``. Each attention layer calls
``update(layer_idx, k, v)`` with the new ``(B, Hkv, T, hd)`` keys/values and attends over what it returns
(past + new). After all layers ran, the model calls ``advance(T)``. tinylm-cache implements richer caches
(static, paged, quantized, sliding window) behind this same protocol and register their factories in
``CACHES`` (``standard`` is registered here), so a config string picks the cache in apps and benchmarks.
A cache whose returned keys are not simply "past + new in order" (a fixed-size buffer, a ring, gathered
blocks) also defines ``attention_mask(layer_idx, ctx) -> mask | None``; ``Attention`` then uses that mask
(bool ``(B|1, 1, T, S)`` over the returned keys) instead of the model's.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from tinylm.core.registry import CACHES


@runtime_checkable
class Cache(Protocol):
    """What the model needs from a key/value cache."""

    def get_seq_length(self) -> int:
        """Number of positions already stored."""
        ...

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values of ``layer_idx``; return all keys/values to attend over."""
        ...

    def advance(self, n: int) -> None:
        """Called once per forward after every layer stored ``n`` new positions."""
        ...


class StandardCache:
    """Grows by concatenation along the sequence dimension; one (k, v) pair per layer."""

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self._seq_len = 0

    def get_seq_length(self) -> int:
        return self._seq_len

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx in self.keys:
            k = torch.cat([self.keys[layer_idx], k], dim=2)  # (B, Hkv, S, hd)
            v = torch.cat([self.values[layer_idx], v], dim=2)
        self.keys[layer_idx], self.values[layer_idx] = k, v
        return k, v

    def advance(self, n: int) -> None:
        self._seq_len += n


@CACHES.register("standard")
def standard_cache(**context: Any) -> StandardCache:
    """Factory for ``CACHES``: a ``StandardCache`` needs none of the context (config, batch size, ...)."""
    return StandardCache()
